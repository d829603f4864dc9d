"""Chat templates from ``tokenizer_config.json``, rendered the way the ecosystem renders
them: Jinja2 in an immutable sandbox, blocks trimmed, ``raise_exception`` and a
``tojson`` that keeps non-ASCII as is. A template is untrusted input from a model
directory, hence the sandbox."""

from __future__ import annotations

import json

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template failed on these messages (e.g. its own ``raise_exception``)."""


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        env.globals["raise_exception"] = _raise_exception
        env.filters["tojson"] = _tojson
        self.source = source
        self._template = env.from_string(source)  # a syntax error surfaces at load
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as exc:
            raise ChatTemplateError(str(exc)) from None
