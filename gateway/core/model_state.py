"""The states a model or a model version is in, as Triton's repository index names them."""

from __future__ import annotations

from enum import StrEnum


class ModelState(StrEnum):
    # A StrEnum, so ``state == "READY"`` and JSON output see the plain Triton string.
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
