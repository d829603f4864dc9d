"""The wire shapes of ``GET /v1/models`` and ``GET /v1/models/{model}`` (OpenAI's models API).

OpenAI's fields (``id``, ``object``, ``created``, ``owned_by``), vLLM's (``root``, ``parent``,
``max_model_len``), and ``capabilities``: the /v1 endpoints the model answers, so that a client
can pick a chat model from a list that also holds embedding models.
"""

from __future__ import annotations

from dataclasses import dataclass

# Values of ``capabilities``, named after the endpoints.
CHAT = "chat.completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    created: int  # unix seconds
    owned_by: str
    capabilities: tuple[str, ...]
    max_model_len: int | None  # tokens of context (generation) or of one input (embeddings)

    def document(self) -> dict:
        return {
            "id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by,
            "root": self.id, "parent": None, "max_model_len": self.max_model_len,
            "capabilities": list(self.capabilities),
        }


def list_document(cards: list[ModelCard]) -> dict:
    return {"object": "list", "data": [c.document() for c in cards]}
