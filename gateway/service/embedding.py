"""Loads an embedding model version's tokenizer from its files (worker thread, at load), as
generation loads its own: a missing or broken tokenizer fails the load, not the first request."""

from __future__ import annotations

import os

TOKENIZER_FILE = "tokenizer.json"


class EmbeddingLoadError(Exception):
    pass


def load_embedding_tokenizer(model_file: str):
    """The ``tokenizers.Tokenizer`` beside the model file, with padding and truncation off."""
    from tokenizers import Tokenizer

    path = os.path.join(os.path.dirname(model_file), TOKENIZER_FILE)
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - a missing or broken file is the model's problem, said plainly
        raise EmbeddingLoadError(f"{path}: embedding: cannot load the tokenizer: {exc}") from None
    # Many shipped tokenizer.json files pad every input to a fixed length (all-MiniLM-L6-v2:
    # 128) and truncate silently: padding is ours to choose, and too long is a 400.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
