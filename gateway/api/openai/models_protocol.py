"""The wire shapes of ``GET /v1/models`` and ``GET /v1/models/{model}`` (OpenAI's models API)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    created: int  # unix seconds
    owned_by: str

    def document(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


def list_document(cards: list[ModelCard]) -> dict:
    return {"object": "list", "data": [c.document() for c in cards]}
