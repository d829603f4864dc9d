"""Per model-version request queues and the dynamic batcher."""
