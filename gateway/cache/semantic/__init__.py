"""Semantic prompt cache: embeddings (all-MiniLM-L6-v2 on onnxruntime), an
exact-scope cosine index, a lexical guard, optional sharing through Redis."""

from gateway.cache.semantic.cache import SemanticCache, SemanticResult
from gateway.cache.semantic.scope import PromptQuery, prompt_query

__all__ = ["PromptQuery", "SemanticCache", "SemanticResult", "prompt_query"]
