"""OpenAI-compatible ``/v1`` routes.

Each API family is three files, as vLLM's OpenAI layer is split: routes (wire in and
out), protocol models (pydantic, at the edge only) and serving logic that talks to the
service facade. Errors leave in OpenAI's shape through :mod:`gateway.api.openai.errors`.
"""
