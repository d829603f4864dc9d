"""Wire protocols: gRPC servicer, HTTP app (KServe v2 REST, health, metrics), OpenAI routes."""
