"""Chat templates from ``tokenizer_config.json``, rendered the way the ecosystem renders
them: Jinja2 in an immutable sandbox, blocks trimmed, ``raise_exception`` and a
``tojson`` that keeps non-ASCII as is. A template is untrusted input from a model
directory, hence the sandbox.

Tools follow transformers' ``apply_chat_template(messages, tools=...)``: the list of
OpenAI-style function tools is the template's ``tools`` variable, assistant messages
carry ``tool_calls`` (``arguments`` as an object) and tool results are ``role: "tool"``
messages. A template that never reads ``tools`` (many small models' templates) gets the
tool list written into its system turn instead, in the Hermes/Qwen convention the gateway
parses calls in (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``); one that
never reads ``tool_calls`` sees earlier calls written into the assistant's content the same way."""

from __future__ import annotations

import json

from jinja2 import TemplateError, meta
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
        self.reads_tools = "tools" in meta.find_undeclared_variables(env.parse(source))
        self.reads_tool_calls = "tool_calls" in source
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
        extra = {}
        if not self.reads_tool_calls:
            messages = [_calls_into_content(m) if m.get("tool_calls") else m for m in messages]
        if tools:
            if self.reads_tools:
                extra["tools"] = tools
            else:
                messages = _tools_into_system(messages, tools)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                **extra,
            )
        except TemplateError as exc:
            raise ChatTemplateError(str(exc)) from None


TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def render_tool_call(name: str, arguments) -> str:
    """One call as the model is asked to write it (and as the gateway parses it back)."""
    return f"{TOOL_CALL_OPEN}\n{_tojson({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def default_tools_prompt(tools: list[dict]) -> str:
    """The tool list for a template that has no place for it (Hermes/Qwen2.5 wording)."""
    listing = "\n".join(_tojson(t) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listing}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def _tools_into_system(messages: list[dict], tools: list[dict]) -> list[dict]:
    prompt = default_tools_prompt(tools)
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        content = first.get("content") or ""
        return [{**first, "content": f"{content}\n\n{prompt}" if content else prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _calls_into_content(message: dict) -> dict:
    calls = []
    for call in message["tool_calls"]:
        fn = call.get("function", call)
        calls.append(render_tool_call(fn.get("name", ""), fn.get("arguments", {})))
    content = message.get("content") or ""
    return {**message, "content": "\n".join(([content] if content else []) + calls)}
