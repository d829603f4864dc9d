"""Serving logic of the completions family: a parsed request goes to the facade's
``generate``; its event stream becomes OpenAI's ``text_completion`` /
``chat.completion`` objects, or the chunks of a stream. Several prompts in one
completions request are admitted together (so the engine batches them) and read as one
stream whose choice ``p * n + i`` is choice i of prompt p, as OpenAI numbers them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gateway.api.openai.completions_tools import TOOLS_NONE, ToolCallReader
from gateway.core.generation import GenerationEvent, GenerationRequest, GenerationStream, TokenLogprob
from gateway.service import InferenceService

CHAT = "chat"
TEXT = "text"


class PromptStreams:
    """The streams of a request's several prompts read as one, each event with its request-wide
    choice index. Made on the event loop: its readers start at once, so the events queue in the
    order the engine made them (interleaved across prompts) however late the reader comes."""

    def __init__(self, streams: Sequence[GenerationStream]) -> None:
        self.streams = list(streams)
        first = self.streams[0]
        self.model, self.version = first.model, first.version
        self.choices = sum(s.choices for s in self.streams)
        self.prompt_tokens = sum(s.prompt_tokens for s in self.streams)
        self.cache_similarity: float | None = None  # a hit is reported for a single prompt only
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._pumps: list[asyncio.Task] = []
        offset = 0
        for stream in self.streams:
            self._pumps.append(loop.create_task(self._pump(offset, stream)))
            offset += stream.choices

    async def _pump(self, offset: int, stream: GenerationStream) -> None:
        try:
            async for event in stream:
                self._queue.put_nowait(dataclasses.replace(event, index=offset + event.index))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._queue.put_nowait(exc)
            return
        self._queue.put_nowait(None)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.streams)

    @property
    def ready(self) -> bool:
        return not self._queue.empty()

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        open_streams = len(self.streams)
        while open_streams:
            item = await self._queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, Exception):
                self.close()
                raise item
            else:
                yield item

    def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        for stream in self.streams:
            stream.close()


AnyStream = GenerationStream | PromptStreams


def _usage(stream: AnyStream) -> dict:
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
    echo: str = ""  # the prompt, not yet sent (completions with echo)


class CompletionServing:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def start(self, requests: Sequence[GenerationRequest]) -> AnyStream:
        """Admission of every prompt, back to back (no step runs between them when nothing awaits,
        so they share the first prefill step); raises the typed errors (400, 404, 429) before any
        byte is sent, after closing the prompts already admitted."""
        streams: list[GenerationStream] = []
        try:
            for request in requests:
                streams.append(await self.service.generate(request))
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        return streams[0] if len(streams) == 1 else PromptStreams(streams)

    @staticmethod
    def echoes(requests: Sequence[GenerationRequest], stream: AnyStream) -> list[str] | None:
        """Per choice, the prompt text echo puts before it; None without echo."""
        if not requests[0].echo:
            return None
        streams = stream.streams if isinstance(stream, PromptStreams) else [stream]
        out: list[str] = []
        for request, s in zip(requests, streams):
            text = request.prompt if request.prompt is not None else (s.prompt_text or "")
            out += [text] * s.choices
        return out

    @staticmethod
    def _choices(stream: AnyStream, echo: list[str] | None) -> list[_Choice]:
        choices = [_Choice() for _ in range(stream.choices)]
        if echo is not None:
            for c, text in zip(choices, echo):
                c.echo = text
        return choices

    async def complete(
        self, kind: str, model: str, stream: AnyStream, want_logprobs: bool,
        tool_mode: str = TOOLS_NONE, tool_names: frozenset[str] = frozenset(), echo: list[str] | None = None,
    ) -> dict:
        """Wait for every choice; the whole response object."""
        choices = self._choices(stream, echo)
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
                    "text": c.echo + "".join(c.text),
                    "logprobs": _text_logprobs(c.logprobs, 0) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(stream),
        }

    async def chunks(
        self, kind: str, model: str, stream: AnyStream, want_logprobs: bool, include_usage: bool,
        tool_mode: str = TOOLS_NONE, tool_names: frozenset[str] = frozenset(), echo: list[str] | None = None,
    ) -> AsyncIterator[list[dict]]:
        """The stream's chunk objects in order, in batches: the chunks of the events that could be
        read without waiting go together (a writer sends each batch at once). The caller closes
        ``stream`` when it stops reading."""
        created = int(time.time())
        if kind == CHAT:
            base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": None}
        else:
            base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
                    "model": model, "system_fingerprint": None}
        extra = {"usage": None} if include_usage else {}
        choices = self._choices(stream, echo)
        if kind == CHAT and tool_mode != TOOLS_NONE:
            for c in choices:
                c.tools = ToolCallReader(tool_mode, tool_names)
        batch: list[dict] = []
        if kind == CHAT:
            # OpenAI opens each choice with the assistant role and empty content.
            batch = [{**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}], **extra}
                     for i in range(stream.choices)]
            if not stream.ready:
                yield batch
                batch = []
        try:
            async for event in stream:
                chunk = self._chunk(kind, event, choices[event.index], want_logprobs)
                if chunk is not None:
                    batch.append({**base, "choices": [chunk], **extra})
                if batch and not stream.ready:
                    yield batch
                    batch = []
        except Exception:
            if batch:  # the tokens made before the failure still go out, then the error
                yield batch
            raise
        if include_usage:
            batch.append({**base, "choices": [], "usage": _usage(stream)})
        if batch:
            yield batch

    @staticmethod
    def _chunk(kind: str, event: GenerationEvent, choice: _Choice, want_logprobs: bool) -> dict | None:
        if choice.tools is not None:
            return _tool_chunk(event, choice.tools, want_logprobs)
        if choice.echo:
            # The choice's first chunk carries the prompt (echo), whatever its event holds.
            event = dataclasses.replace(event, text=choice.echo + event.text)
            choice.echo = ""
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
