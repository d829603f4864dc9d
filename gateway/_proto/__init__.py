"""Generated gRPC stubs (built from protos/ at install time; never edited)."""
