"""Where pydantic found a problem, written as a user writes the field: ``inputs[0].dims``.

One helper for every validated document (model.yaml, the routing admin body, OpenAI requests),
so an error names a field the same way wherever it comes from.
"""

from __future__ import annotations

from typing import Any

# The tags pydantic puts in a location for the member of a union it tried (``int | str``).
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict"}


def field_path(loc: tuple[Any, ...], *, drop_union_tags: bool = False) -> str:
    """``loc`` (pydantic's ``err["loc"]``) as a dotted path with ``[i]`` for list items; "" when empty.

    ``drop_union_tags`` leaves out the union-member tags pydantic adds (``str``, ``int``, a model
    class name, ``function-after[...]``). Only for documents whose field names are lower-case
    identifiers (OpenAI requests): in model.yaml a tensor name such as ``INPUT0`` is a real key.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not drop_union_tags or (part.isidentifier() and part not in _TYPE_TAGS and not part[0].isupper()):
            path += ("." if path else "") + str(part)
    return path
