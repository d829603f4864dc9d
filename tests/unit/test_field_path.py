"""One way to name the field of a pydantic error, for model.yaml, the routing body and /v1 requests."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from gateway.core.field_path import field_path


class _Spec(BaseModel):
    dims: list[int]


class _Doc(BaseModel):
    inputs: dict[str, list[_Spec]]
    content: str | list[str]


def _loc(doc: dict) -> tuple:
    with pytest.raises(ValidationError) as info:
        _Doc.model_validate(doc)
    return tuple(info.value.errors()[0]["loc"])


def test_keys_and_list_items_are_written_as_a_user_writes_them():
    loc = _loc({"inputs": {"INPUT0": [{"dims": [1]}, {"dims": ["x"]}]}, "content": "ok"})
    assert field_path(loc) == "inputs.INPUT0[1].dims[0]"
    assert field_path(()) == ""


def test_union_tags_are_dropped_only_when_asked():
    loc = _loc({"inputs": {}, "content": 3})
    assert loc[0] == "content" and len(loc) == 2  # pydantic names the union member it tried
    assert field_path(loc, drop_union_tags=True) == "content"
    assert field_path(loc) == f"content.{loc[1]}"
