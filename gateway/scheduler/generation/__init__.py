"""Continuous batching for token generation: a synchronous batcher (``batcher``), numpy
sampling (``sampling``) and the thin asyncio engine that drives one model version
(``engine``)."""
