"""Serving logic of the completions family: a parsed request goes to the facade's
``generate``; its event stream becomes OpenAI's ``text_completion`` /
``chat.completion`` objects, or the chunks of a stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.api.openai.completions_tools import TOOLS_NONE, ToolCallReader
from gateway.core.generation import GenerationEvent, GenerationRequest, GenerationStream, TokenLogprob
from gateway.service import InferenceService

CHAT = "chat"
TEXT = "text"


def _usage(stream: GenerationStream) -> dict:
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }


def _chat_logprobs(items: list[TokenLogprob]) -> dict:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token_bytes),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(b)} for t, b, v in lp.top],
            }
            for lp in items
        ]
    }


def _text_logprobs(items: list[TokenLogprob], offset: int) -> dict:
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t: v for t, _, v in lp.top} for lp in items],
        "text_offset": offsets,
    }


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    text_len: int = 0  # characters sent so far (text_offset of streamed completion logprobs)
    tools: ToolCallReader | None = None  # chat with tools: reads tool calls out of the text


class CompletionServing:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def start(self, request: GenerationRequest) -> GenerationStream:
        """Admission: raises the typed errors (400, 404, 429) before any byte is sent."""
        return await self.service.generate(request)

    async def complete(
        self, kind: str, model: str, stream: GenerationStream, want_logprobs: bool,
        tool_mode: str = TOOLS_NONE, tool_names: frozenset[str] = frozenset(),
    ) -> dict:
        """Wait for every choice; the whole response object."""
        choices = [_Choice() for _ in range(stream.choices)]
        try:
            async for event in stream:
                c = choices[event.index]
                c.text.append(event.text)
                c.logprobs.extend(event.logprobs)
                if event.finish_reason is not None:
                    c.finish_reason = event.finish_reason
        finally:
            stream.close()
        created = int(time.time())
        if kind == CHAT:
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": i,
                        **_chat_answer(c, tool_mode, tool_names),
                        "logprobs": _chat_logprobs(c.logprobs) if want_logprobs else None,
                    }
                    for i, c in enumerate(choices)
                ],
                "usage": _usage(stream),
            }
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "text": "".join(c.text),
                    "logprobs": _text_logprobs(c.logprobs, 0) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(stream),
        }

    async def chunks(
        self, kind: str, model: str, stream: GenerationStream, want_logprobs: bool, include_usage: bool,
        tool_mode: str = TOOLS_NONE, tool_names: frozenset[str] = frozenset(),
    ) -> AsyncIterator[dict]:
        """The stream's chunk objects in order; the caller closes ``stream`` when it stops reading."""
        created = int(time.time())
        if kind == CHAT:
            base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": None}
        else:
            base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
                    "model": model, "system_fingerprint": None}
        extra = {"usage": None} if include_usage else {}
        choices = [_Choice() for _ in range(stream.choices)]
        if kind == CHAT and tool_mode != TOOLS_NONE:
            for c in choices:
                c.tools = ToolCallReader(tool_mode, tool_names)
        if kind == CHAT:
            # OpenAI opens each choice with the assistant role and empty content.
            for i in range(stream.choices):
                yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}], **extra}
        async for event in stream:
            chunk = self._chunk(kind, event, choices[event.index], want_logprobs)
            if chunk is not None:
                yield {**base, "choices": [chunk], **extra}
        if include_usage:
            yield {**base, "choices": [], "usage": _usage(stream)}

    @staticmethod
    def _chunk(kind: str, event: GenerationEvent, choice: _Choice, want_logprobs: bool) -> dict | None:
        if choice.tools is not None:
            return _tool_chunk(event, choice.tools, want_logprobs)
        if not event.text and event.finish_reason is None and not (want_logprobs and event.logprobs):
            return None  # bytes of a character or a possible stop string held back
        if kind == CHAT:
            delta = {"content": event.text} if event.text or event.finish_reason is None else {}
            logprobs = _chat_logprobs(list(event.logprobs)) if want_logprobs else None
            return {"index": event.index, "delta": delta, "logprobs": logprobs, "finish_reason": event.finish_reason}
        logprobs = _text_logprobs(list(event.logprobs), choice.text_len) if want_logprobs else None
        choice.text_len += len(event.text)
        return {"index": event.index, "text": event.text, "logprobs": logprobs, "finish_reason": event.finish_reason}


def _chat_answer(c: _Choice, tool_mode: str, tool_names: frozenset[str]) -> dict:
    """The message and finish_reason of a finished chat choice; tool calls read out of its text."""
    text = "".join(c.text)
    reason = c.finish_reason
    if tool_mode == TOOLS_NONE or reason is None:
        return {"message": {"role": "assistant", "content": text, "refusal": None}, "finish_reason": reason}
    reader = ToolCallReader(tool_mode, tool_names)
    content, _ = reader.feed(text)
    tail, _, reason = reader.finish(reason)
    content += tail
    message: dict = {"role": "assistant", "content": content or (None if reader.calls else ""), "refusal": None}
    if reader.calls:
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in reader.calls]
    return {"message": message, "finish_reason": reason}


def _tool_chunk(event: GenerationEvent, reader: ToolCallReader, want_logprobs: bool) -> dict | None:
    content, calls = reader.feed(event.text)
    reason = event.finish_reason
    if reason is not None:
        tail, more, reason = reader.finish(reason)
        content += tail
        calls += more
    if not content and not calls and reason is None and not (want_logprobs and event.logprobs):
        return None
    delta: dict = {}
    if content:
        delta["content"] = content
    if calls:
        delta["tool_calls"] = calls
    logprobs = _chat_logprobs(list(event.logprobs)) if want_logprobs else None
    return {"index": event.index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
