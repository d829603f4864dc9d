"""Tool calls read back out of a chat completion's text, whole or as it streams.

Two ways an output holds calls:

- forced (``tool_choice`` "required" or a named function): the engine decoded the
  output under the schema ``{"name": <a tool's name>, "arguments": <its parameters>}``
  (compact JSON, name first), so the whole text is exactly one call;
- auto: the model may write text or calls in the Hermes/Qwen convention the chat
  template asked for, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; the
  text before the first block is the message's content, a block that does not parse (or
  names no offered tool) stays text.

Streaming follows OpenAI: a call's first delta carries its ``index``, ``id``, ``type`` and
name with empty arguments, later deltas carry fragments of the arguments' JSON text.
Forced calls stream their arguments as they are generated; auto calls are sent whole
when the choice ends (text that may open a ``<tool_call>`` is held back meanwhile).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from gateway.core.generation import FINISH_STOP, FINISH_TOOL_CALLS

TOOLS_NONE = "none"
TOOLS_AUTO = "auto"
TOOLS_FORCED = "forced"

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_FORCED_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.S)


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _call_delta(index: int, cid: str, name: str, arguments: str) -> dict:
    return {"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_call(text: str, names: frozenset[str]) -> tuple[str, str] | None:
    """(name, arguments JSON text) of one call object, or None if it is not a call of an offered tool."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("name") not in names:
        return None
    arguments = doc.get("arguments", doc.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments' JSON text
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return doc["name"], json.dumps(arguments, ensure_ascii=False)


@dataclass(slots=True)
class ToolCallReader:
    """One choice's text in, (content delta, tool_calls deltas) out; ``finish`` gives the last of both
    and the finish_reason ("tool_calls" when calls were read)."""

    mode: str
    names: frozenset[str]
    calls: list[dict] = field(default_factory=list)  # the whole calls, for a non-streamed answer
    _text: str = ""  # forced: all of it; auto: from the first OPEN on
    _held: str = ""  # auto: text that may be the start of OPEN
    _in_call: bool = False
    _sent_args: int = 0  # forced: characters of the arguments already sent
    _args_start: int = -1

    def feed(self, text: str) -> tuple[str, list[dict]]:
        if self.mode == TOOLS_FORCED:
            return "", self._feed_forced(text)
        if self._in_call:
            self._text += text
            return "", []
        text = self._held + text
        at = text.find(OPEN)
        if at >= 0:
            self._in_call = True
            self._held = ""
            self._text = text[at:]
            return text[:at], []
        hold = next((k for k in range(min(len(text), len(OPEN) - 1), 0, -1) if OPEN.startswith(text[-k:])), 0)
        self._held = text[len(text) - hold:]
        return text[: len(text) - hold], []

    def _feed_forced(self, text: str) -> list[dict]:
        self._text += text
        deltas = []
        if self._args_start < 0:
            head = _FORCED_HEAD.match(self._text)
            if head is None:
                return []
            self._args_start = head.end()
            cid = call_id()
            name = json.loads(head.group(1))
            self.calls.append(_call_delta(0, cid, name, ""))
            deltas.append(_call_delta(0, cid, name, ""))
        # Everything but the last character: the closing brace of the call object is not the arguments'.
        args = self._text[self._args_start: len(self._text) - 1]
        if len(args) > self._sent_args:
            fragment = args[self._sent_args:]
            self._sent_args = len(args)
            self.calls[0]["function"]["arguments"] += fragment
            deltas.append({"index": 0, "function": {"arguments": fragment}})
        return deltas

    def finish(self, finish_reason: str) -> tuple[str, list[dict], str]:
        if self.mode == TOOLS_FORCED:
            if not self.calls:
                # Cut short before the name was complete: the text is all there is.
                return self._text, [], finish_reason
            if finish_reason == FINISH_STOP:
                return "", [], FINISH_TOOL_CALLS
            # Cut by max_tokens: the arguments so far, as OpenAI sends a truncated call.
            tail = self._text[self._args_start + self._sent_args:]
            self.calls[0]["function"]["arguments"] += tail
            return "", ([{"index": 0, "function": {"arguments": tail}}] if tail else []), finish_reason
        if not self._in_call:
            held, self._held = self._held, ""
            return held, [], finish_reason
        content = ""
        deltas = []
        pos = 0
        for block in _BLOCK.finditer(self._text):
            content += self._text[pos: block.start()]
            pos = block.end()
            parsed = _parse_call(block.group(1).strip(), self.names)
            if parsed is None:
                content += block.group(0)
                continue
            call = _call_delta(len(self.calls), call_id(), *parsed)
            self.calls.append(call)
            deltas.append(call)
        content += self._text[pos:]
        if not self.calls:
            return self._text, [], finish_reason
        return content.strip(), deltas, FINISH_TOOL_CALLS
