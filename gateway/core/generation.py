"""Text generation as the api layer sees it: the request, its sampling settings, the
events a stream yields, and the one engine interface the facade routes to.

The api layer builds a ``GenerationRequest`` from an OpenAI body; an engine admits it
(raising typed errors before anything streams) and hands back a ``GenerationStream``
of per-choice ``GenerationEvent``s. Nothing here knows of tokens on the wire, HTTP or
the scheduler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.errors import InvalidInputError
from gateway.core.stats import Histogram

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_TOOL_CALLS = "tool_calls"  # set by the api layer when it parsed tool calls from the output


class ContextLengthError(InvalidInputError):
    """Prompt plus requested completion does not fit the model's limits (never retryable)."""

    openai_code = "context_length_exceeded"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None  # None: the model's default_max_tokens, capped by the context left
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None  # None = off; k = alternatives per token besides the chosen one
    min_p: float = 0.0  # 0 = off; else drop tokens less likely than min_p x the most likely one
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a token already generated
    repetition_penalty: float = 1.0  # 1 = off; divides (multiplies) positive (negative) logits of seen tokens
    # (token id, bias) pairs added to the logits, sorted by id: a tuple keeps SamplingParams hashable.
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """Decoding restricted to the documents a JSON schema accepts (structured output, forced
    tool calls): every finished ("stop") output parses and validates; ``max_tokens`` may still
    cut one short ("length")."""

    schema: str  # the JSON Schema, as JSON text (property order kept: it is the output's order)
    param: str  # the request field it came from, named in a 400 when the schema cannot be used


@dataclass(slots=True)
class GenerationTrace:
    """Monotonic-clock stamps (ns) of a traced generation request, turned into spans when it ends
    (as ``TraceRecord`` is for tensor requests). The engine fills it: tokenizing and admission at
    submit, then per step on the event loop (prefill, decode); ``detokenize_ns`` is the summed
    worker time spent turning its tokens into text. Only traced requests carry one."""

    tokenize_start_ns: int = 0
    tokenize_end_ns: int = 0
    queued_ns: int = 0
    prefill_start_ns: int = 0
    prefill_end_ns: int = 0
    decode_start_ns: int = 0
    decode_end_ns: int = 0
    decode_steps: int = 0
    prompt_tokens: int = 0
    detokenize_ns: int = 0
    detokenized_tokens: int = 0
    last_step: int = 0  # the engine's step number last counted (choices share steps)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    sampling: SamplingParams
    prompt: str | None = None  # completions
    prompt_token_ids: tuple[int, ...] | None = None  # completions given token ids
    messages: tuple[dict, ...] | None = None  # chat: rendered with the model's chat template
    echo: bool = False  # completions: the stream carries the prompt's text (``GenerationStream.prompt_text``)
    user: str = ""
    cache: bool = True  # False: the request opted out of the semantic cache
    route_key: str = ""  # the X-Route-Key header: the canary's sticky key before `user`
    # Chat only: function tools offered to the model (OpenAI's "tools" entries), given to the chat template.
    tools: tuple[dict, ...] | None = None
    constraint: OutputConstraint | None = None
    # Set only when this request is traced; the engine stamps its hops into it.
    trace: GenerationTrace | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """What one choice produced in one step. ``text`` may be empty while bytes of a
    character or a possible stop string are held back; ``finish_reason`` ends the choice."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None


_END = object()


class GenerationStream:
    """The events of one admitted request, in order; closing it frees its sequences at the next step."""

    def __init__(self, model: str, version: str, prompt_tokens: int, choices: int, cancel: Callable[[], None]) -> None:
        self.model = model
        self.version = version
        self.prompt_tokens = prompt_tokens
        self.choices = choices
        self.completion_tokens = 0
        self._cancel = cancel
        self._queue: asyncio.Queue = asyncio.Queue()
        self._held: object | None = None  # the first item, taken by wait_started and not yet read
        self._open = choices
        self._error: BaseException | None = None
        # See every event as it is pushed (the semantic cache keeps the answer, shadows compare it).
        self._observers: list[Callable[[GenerationEvent], None]] = []
        # Called once when the last choice finishes (None) or the stream fails (the error).
        self._done_callbacks: list[Callable[[BaseException | None], None]] = []
        self._ended_with: tuple[BaseException | None] | None = None
        # Set when the answer came from the semantic cache: the similarity of the matched prompt.
        self.cache_similarity: float | None = None
        # The prompt as text, when the request asked for echo and gave token ids (the engine decodes them).
        self.prompt_text: str | None = None

    # -- producer side (the engine, on the event loop) ---------------------------------

    def observe(self, observer: Callable[[GenerationEvent], None]) -> None:
        self._observers.append(observer)

    def add_done_callback(self, callback: Callable[[BaseException | None], None]) -> None:
        """``callback(None)`` when every choice has finished, ``callback(error)`` when the stream
        failed; at once when that has already happened."""
        if self._ended_with is not None:
            callback(self._ended_with[0])
        else:
            self._done_callbacks.append(callback)

    def push(self, event: GenerationEvent) -> None:
        self.completion_tokens += len(event.token_ids)
        for observer in self._observers:
            observer(event)
        self._queue.put_nowait(event)
        if event.finish_reason is not None:
            self._open -= 1
            if self._open == 0:
                self._queue.put_nowait(_END)
                self._ended(None)

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._queue.put_nowait(_END)
        self._ended(exc)

    def _ended(self, error: BaseException | None) -> None:
        if self._ended_with is not None:
            return
        self._ended_with = (error,)
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(error)

    # -- consumer side ---------------------------------------------------------------------

    def __aiter__(self) -> GenerationStream:
        return self

    async def wait_started(self) -> None:
        """Wait for the first event (kept for the reader) or the end; raises the failure when the
        stream failed before its first event (routing falls back on that)."""
        if self._held is None:
            self._held = await self._queue.get()
        if self._held is _END and self._error is not None:
            raise self._error

    async def __anext__(self) -> GenerationEvent:
        item: Any  # a GenerationEvent or _END
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # further reads end too
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    @property
    def ready(self) -> bool:
        """An event (or the end) can be read without waiting: a writer batches what is ready."""
        return self._held is not None or not self._queue.empty()

    @property
    def finished(self) -> bool:
        return self._open == 0

    def close(self) -> None:
        """The client is gone (or done): unfinished sequences leave at the next step."""
        if self._open > 0:
            self._cancel()


class TextGenerator(Protocol):
    """The engine behind ``InferenceService.generate``: one per model version."""

    def prepare(self, request: GenerationRequest) -> None:
        """Blocking work ``submit`` would otherwise do on the event loop (compiling a schema)."""
        ...

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Tokenize, check limits and admit; raises ContextLengthError, QueueFullError, InvalidInputError."""
        ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length in tokens, as ``submit`` would feed it (chat template applied)."""
        ...


# Sequences per decode step: 1, 2, 4, ... 4096.
STEP_SIZE_BOUNDS: tuple[int, ...] = tuple(2**i for i in range(13))


@dataclass(slots=True)
class GenerationStats:
    """Counters of one model version's generation loop (event loop only, no locks)."""

    # Decode steps, by how many sequences each ran in its one batched call.
    step_sequences: Histogram = field(default_factory=lambda: Histogram(bounds=STEP_SIZE_BOUNDS))
    steps_multi: int = 0  # decode steps with more than one sequence
    prefill_runs: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: Histogram = field(default_factory=Histogram)  # ns, admission to first token
    step_ns: int = 0  # worker time in steps (prefill, decode, sampling)
    repad_ns: int = 0  # of which: KV-cache re-padding as sequences join and leave
    active: int = 0  # sequences in the decode batch now
    waiting: int = 0  # admitted, not yet joined
    rejected: int = 0  # refused with 429
    cancelled: int = 0  # freed because the client went away
    finished: dict[str, int] = field(default_factory=dict)  # by finish_reason

    @property
    def decode_steps(self) -> int:
        return sum(self.step_sequences.counts)
