"""Which models the ``/v1`` routes serve: those whose model.yaml has an ``embedding:`` or a
``generation:`` section (the latter read with getattr: it belongs to the generation engine)."""

from __future__ import annotations

from gateway.api.openai.models_protocol import CHAT, COMPLETIONS, EMBEDDINGS, ModelCard
from gateway.core.errors import ModelNotFoundError
from gateway.service import InferenceService

OWNED_BY = "gateway"


def serves_openai(config) -> bool:
    return config.embedding is not None or getattr(config, "generation", None) is not None


def capabilities(config) -> tuple[tuple[str, ...], int | None]:
    """The /v1 endpoints a model answers, and its token limit."""
    generation = getattr(config, "generation", None)
    if generation is not None:
        return (CHAT, COMPLETIONS), generation.context_length
    if config.embedding is not None:
        return (EMBEDDINGS,), config.embedding.max_tokens
    return (), None


class ModelsServing:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def cards(self) -> list[ModelCard]:
        cards = []
        for name in self.service.served_names():
            card = self._card(name)
            if card is not None:
                cards.append(card)
        return cards

    def card(self, name: str) -> ModelCard:
        card = self._card(name)
        if card is None:
            raise ModelNotFoundError(f"The model '{name}' does not exist or is not served on the OpenAI routes")
        return card

    def _card(self, name: str) -> ModelCard | None:
        latest = self.service.latest_served(name)
        if latest is None or not serves_openai(latest.config):
            return None
        can, limit = capabilities(latest.config)
        # The model file's mtime: the same in every worker process and across restarts.
        return ModelCard(name, latest.fingerprint[1] // 1_000_000_000, OWNED_BY, can, limit)
