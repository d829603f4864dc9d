"""Traffic routing: canary split (sticky by key), shadows and their comparison, fallback, rollback guard.

Pure and synchronous: the clock and the random source are passed in, so every
decision can be stepped by hand in tests. The asyncio glue is in gateway/service.
"""
