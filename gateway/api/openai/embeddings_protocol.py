"""The wire shapes of ``POST /v1/embeddings`` (OpenAI's embeddings API).

Unknown fields are ignored, as OpenAI's clients expect; a known field of the wrong type is a
400 naming it (no coercion: ``"3"`` is not a number, ``true`` is not a token id).
"""

from __future__ import annotations

import base64
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.api.openai.errors import check_unicode
from gateway.api.openai.wire import without_nulls
from gateway.core.errors import InvalidInputError

# OpenAI accepts at most this many inputs in one request.
MAX_INPUTS = 2048

_FIELD_HELP = {
    "input": "'input' must be a non-empty string, an array of strings, an array of token ids "
             "(integers) or an array of arrays of token ids",
    "encoding_format": "'encoding_format' must be 'float' or 'base64'",
    "dimensions": "'dimensions' must be a positive integer",
    "model": "'model' must be a string naming a served model",
}


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    _nulls_are_defaults = model_validator(mode="before")(without_nulls)

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def parse_request(doc: Any) -> EmbeddingRequest:
    """Validates a decoded JSON body; the first problem becomes an InvalidInputError naming its param."""
    if not isinstance(doc, dict):
        raise InvalidInputError("the request body must be a JSON object", param="")
    try:
        req = EmbeddingRequest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "missing":
            raise InvalidInputError(f"'{param}' is required", param=param) from None
        raise InvalidInputError(_FIELD_HELP.get(param, f"'{param}': {err['msg']}"), param=param) from None
    check_unicode(req.input, "input")
    check_unicode(req.user, "user")
    items = req.input
    if isinstance(items, str):
        items = [items]
    if not items:
        raise InvalidInputError("'input' must not be empty", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidInputError(f"'input' has {len(items)} items; at most {MAX_INPUTS} are allowed per request", param="input")
    for i, item in enumerate(items):
        if isinstance(item, (str, list)) and len(item) == 0:
            raise InvalidInputError(f"input[{i}] is empty: each input needs at least one character or token", param="input")
    return req


def as_items(req: EmbeddingRequest) -> list[str] | list[list[int]]:
    """The inputs as a list of texts or a list of token-id lists."""
    items = req.input
    if isinstance(items, str):
        return [items]
    if items and isinstance(items[0], int):
        return [items]  # one input given as token ids
    return cast("list[str] | list[list[int]]", items)


def response_document(model: str, vectors: np.ndarray, encoding_format: str, prompt_tokens: int) -> dict:
    """OpenAI's response: ``{object: list, data: [{object: embedding, index, embedding}], model, usage}``.

    base64 is the float32 little-endian bytes of each vector, as OpenAI's clients decode it. Floats
    are float64 rows (numpy: ``wire.json_bytes`` writes them without a list of Python floats), so
    each value prints as the exact decimal of the float32 the model gave.
    """
    encoded: list
    if encoding_format == "base64":
        rows = vectors.astype("<f4", copy=False)
        encoded = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        encoded = list(vectors.astype(np.float64))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
