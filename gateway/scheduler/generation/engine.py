"""The generation engine of one model version: thin asyncio glue around the continuous
batcher and the KV-cache decoder.

One loop task per engine. Each turn it asks the batcher for a step plan and hands the
whole step to the engine's one worker thread: release the rows that left, one batched
decode call for every running sequence, one prefill call per distinct prompt length
for those joining, then sampling, detokenisation and stop checks for all of them. The
worker then runs further decode steps of the same batch (a thread hand-off costs about a
small model's step; after a join, once the new rows' first tokens are handed over) until
the loop asks for the batch back (an arrival, a cancel); a sequence that finishes leaves
in the worker and the others go on. The results come back when the step ends and are
pushed to each request's stream; a run that lasts longer than ``stream_interval_ms`` hands
the tokens made so far to the loop every interval and goes on. With a sequence waiting for
a place, a run ends at the interval or at a finish instead. Tokenising
and admission happen on the event loop at submit, so limits are answered (400, 429)
before a stream starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count

import numpy as np

from gateway.core.errors import DeadlineExceededError, ExecutorError, InvalidInputError, ModelNotReadyError, QueueFullError
from gateway.core.generation import (
    FINISH_LENGTH,
    FINISH_STOP,
    ContextLengthError,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    GenerationStream,
    GenerationTrace,
    SamplingParams,
    TokenLogprob,
)
from gateway.core.model_config import GenerationConfig
from gateway.executors.decoder import KvCacheDecoder
from gateway.scheduler.generation.batcher import ContinuousBatcher, StepPlan, Ticket
from gateway.scheduler.generation.constraints import Constraint, ConstraintError, ConstraintFactory, mask_rows
from gateway.scheduler.generation.penalties import SequencePenalties, apply_penalties, penalties_for
from gateway.scheduler.generation.sampling import is_greedy, log_softmax, sample_token, sequence_rng, top_logprobs
from gateway.text.chat_template import ChatTemplateError
from gateway.text.detokenizer import IncrementalDetokenizer
from gateway.text.stop import StopMatcher
from gateway.text.tokenizer import TextTokenizer

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sequence:
    seq_id: int
    index: int  # choice index within its request
    stream: GenerationStream
    prompt_ids: np.ndarray
    max_tokens: int
    params: SamplingParams
    rng: np.random.Generator | None  # None when greedy: nothing is drawn
    detokenizer: IncrementalDetokenizer
    stop: StopMatcher
    admitted_ns: int
    trace: GenerationTrace | None = None
    constraint: Constraint | None = None  # structured output: the grammar the output must match
    penalties: SequencePenalties | None = None  # None: no logit_bias nor penalty (its row is never touched)
    generated: int = 0
    last_token: int = -1
    first_token_ns: int = 0
    done: bool = False


@dataclass(slots=True)
class _StepResult:
    events: list[tuple[Sequence, GenerationEvent]] = field(default_factory=list)
    prefill_runs: int = 0
    decode_steps: int = 0  # decode calls run for the plan: more than one when the batch ran ahead
    joined_steps: int = 0  # of those, the ones after the join: the joining rows took part in them
    step_rows: list[int] = field(default_factory=list)  # rows of each decode call (some may leave during a run)
    prefill_end_ns: int = 0  # engine clock; set when the batch ran ahead after a join
    step_ns: int = 0
    repad_ns: int = 0


class GenerationEngine:
    def __init__(
        self,
        name: str,
        version: str,
        config: GenerationConfig,
        decoder: KvCacheDecoder,
        tokenizer: TextTokenizer,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.stats = GenerationStats()
        self.batcher = ContinuousBatcher(config.max_sequences, config.max_waiting_sequences, config.max_kv_tokens)
        self._clock_ns = clock_ns
        self._stop_ids = tokenizer.eos_token_ids | frozenset(config.stop_token_ids)
        self._constraints = ConstraintFactory(tokenizer, self._stop_ids)
        self._seqs: dict[int, Sequence] = {}
        self._ids = count(1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gen-{name}-{version}")
        self._mask_pool: ThreadPoolExecutor | None = None  # started with the first constrained sequence
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._steps = 0  # steps run, numbering them for traces
        # Set on the loop when the batch must change (a request arrived, a client left, unloading):
        # the worker reads it between steps and hands back instead of running ahead.
        self._interrupt = False
        self._interval_ns = int(config.stream_interval_ms * 1e6)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop _run runs on: where tokens are delivered

    # -- admission (event loop) ---------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> None:
        """Blocking (a worker thread): compile the request's schema and build the grammar tokenizer,
        so ``submit`` on the event loop finds both ready (a complex schema or a large vocabulary
        takes from milliseconds to a second). Raises what ``submit`` would for a bad schema."""
        if request.constraint is not None:
            try:
                self._constraints.warm(request.constraint)
            except ConstraintError as exc:
                raise InvalidInputError(f"the schema cannot be used for constrained decoding: {exc}", param=request.constraint.param) from None

    def submit(self, request: GenerationRequest) -> GenerationStream:
        if self._closing:
            raise ModelNotReadyError(f"model '{self.name}' version {self.version} is being unloaded")
        trace = request.trace
        if trace is not None:
            trace.tokenize_start_ns = self._clock_ns()
        prompt_ids = self._prompt_ids(request)
        if trace is not None:
            trace.tokenize_end_ns = self._clock_ns()
            trace.prompt_tokens = len(prompt_ids)
        sampling = request.sampling
        max_tokens = self._max_tokens(len(prompt_ids), sampling.max_tokens, "messages" if request.messages is not None else "prompt")
        if sampling.logprobs is not None and sampling.logprobs > self.tokenizer.vocab_size:
            raise InvalidInputError(f"at most {self.tokenizer.vocab_size} alternatives per token", param="logprobs")
        constraints: list[Constraint | None] = [None] * sampling.n
        if request.constraint is not None:
            try:
                constraints = list(self._constraints.create(request.constraint, sampling.n))
            except ConstraintError as exc:
                raise InvalidInputError(f"the schema cannot be used for constrained decoding: {exc}", param=request.constraint.param) from None
        vocab = self.tokenizer.vocab_size
        bad = [t for t, _ in sampling.logit_bias if not 0 <= t < vocab]
        if bad:
            raise InvalidInputError(f"token ids {bad[:5]} are outside the vocabulary 0..{vocab - 1}", param="logit_bias")
        now = self._clock_ns()
        deadline = now + int(self.config.queue_timeout_s * 1e9) if self.config.queue_timeout_s else 0
        ids = [next(self._ids) for _ in range(sampling.n)]
        tickets = [Ticket(i, len(prompt_ids) + max_tokens, now, deadline) for i in ids]
        try:
            self.batcher.admit(tickets)
        except QueueFullError:
            self.stats.rejected += 1
            raise
        if trace is not None:
            trace.queued_ns = now
        stream = GenerationStream(self.name, self.version, len(prompt_ids), sampling.n, lambda: self._cancel(ids))
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        for index, seq_id in enumerate(ids):
            self._seqs[seq_id] = Sequence(
                seq_id, index, stream, prompt, max_tokens, sampling,
                # An unseeded generator reads the OS's entropy (~30 us a request): only for those that draw.
                None if is_greedy(sampling) else sequence_rng(sampling.seed, index),
                IncrementalDetokenizer(self.tokenizer), StopMatcher(sampling.stop), now, trace, constraints[index],
                penalties_for(sampling, prompt, vocab),
            )
        if request.echo and request.prompt is None:
            stream.prompt_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        self.stats.prompt_tokens += len(prompt_ids) * sampling.n
        self._refresh_gauges()
        self._ensure_running()
        self._interrupt = True
        self._wake.set()
        return stream

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompt_ids(request))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            template = self.tokenizer.chat_template
            if template is None:
                raise InvalidInputError(f"model '{self.name}' has no chat_template in its tokenizer_config.json; use /v1/completions", param="messages")
            try:
                text = template.render(list(request.messages), tools=list(request.tools) if request.tools else None)
            except ChatTemplateError as exc:
                raise InvalidInputError(f"the model's chat template rejected the messages: {exc}", param="messages") from None
            # The template writes the special tokens itself (as transformers' apply_chat_template does).
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        elif request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            bad = [t for t in ids if not 0 <= t < self.tokenizer.vocab_size]
            if bad:
                raise InvalidInputError(f"token ids {bad[:5]} are outside the vocabulary 0..{self.tokenizer.vocab_size - 1}", param="prompt")
        else:
            ids = self.tokenizer.encode(request.prompt or "")
        if not ids:
            raise InvalidInputError("the prompt is empty: it needs at least one token", param="prompt")
        return ids

    def _max_tokens(self, prompt_len: int, asked: int | None, param: str) -> int:
        ctx = self.config.context_length
        limit = min(ctx, self.config.max_kv_tokens)
        if prompt_len >= limit:
            raise ContextLengthError(f"This model's maximum context length is {ctx} tokens (max_kv_tokens {self.config.max_kv_tokens}). "
                f"Your prompt has {prompt_len} tokens, leaving no room for a completion.", param=param)
        if asked is None:
            return min(self.config.default_max_tokens, limit - prompt_len)
        if prompt_len + asked > limit:
            raise ContextLengthError(f"This model's maximum context length is {ctx} tokens (max_kv_tokens {self.config.max_kv_tokens}). "
                f"However, you requested {prompt_len + asked} tokens ({prompt_len} in the prompt, {asked} for the "
                "completion). Please reduce the prompt or max_tokens.", param="max_tokens")
        return asked

    def _cancel(self, ids: list[int]) -> None:
        for seq_id in ids:
            seq = self._seqs.get(seq_id)
            if seq is None or seq.done:
                continue
            seq.done = True
            self.stats.cancelled += 1
            if self.batcher.cancel(seq_id):
                self._seqs.pop(seq_id, None)  # never joined: nothing to release
        self._refresh_gauges()
        self._interrupt = True
        self._wake.set()

    def _refresh_gauges(self) -> None:
        self.stats.active = self.batcher.active
        self.stats.waiting = self.batcher.waiting

    # -- the loop -----------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"generate-{self.name}-{self.version}")

    async def _run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        while True:
            now = self._clock_ns()
            for seq_id in self.batcher.expire(now):
                seq = self._seqs.pop(seq_id, None)
                if seq is not None:
                    seq.done = True
                    seq.stream.fail(DeadlineExceededError(
                        f"the sequence waited more than queue_timeout_s={self.config.queue_timeout_s} to start"
                    ))
            plan = self.batcher.next_step(now)
            self._refresh_gauges()
            if not plan:
                if self._closing and self.batcher.idle:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self._interrupt = False
            # A run of decode steps may go on past the interval, its tokens delivered while it runs,
            # only while nothing waits for a place: a waiting sequence's queue timeout is checked here.
            keep_running = not self.batcher.waiting and not self._closing
            try:
                result = await loop.run_in_executor(self._pool, self._step, plan, keep_running)
            except Exception as exc:  # noqa: BLE001 - a runtime failure fails these sequences, not the daemon
                _log.exception("generation step failed on %s:%s", self.name, self.version)
                self._fail_running(ExecutorError(f"the model failed during generation: {type(exc).__name__}: {exc}"))
                continue
            self._steps += max(1, result.decode_steps)
            self._stamp_traces(plan, now, result)
            self._deliver(plan, result)

    def _stamp_traces(self, plan: StepPlan, start_ns: int, result: _StepResult) -> None:
        """Traced requests in this hand-off: its time is their prefill (joining) or their decode steps
        (joining ones too when the batch ran ahead after the join)."""
        end_ns = self._clock_ns()
        prefill_end_ns = result.prefill_end_ns or end_ns
        for seq_id in plan.joining:
            seq = self._seqs.get(seq_id)
            t = seq.trace if seq is not None else None
            if t is not None and t.prefill_start_ns == 0:
                t.prefill_start_ns, t.prefill_end_ns = start_ns, prefill_end_ns
                if result.joined_steps:
                    self._stamp_decode(t, prefill_end_ns, end_ns, result.joined_steps)
        for seq_id in plan.decoding:
            seq = self._seqs.get(seq_id)
            t = seq.trace if seq is not None else None
            if t is not None:
                self._stamp_decode(t, start_ns, end_ns, result.decode_steps)

    def _stamp_decode(self, t: GenerationTrace, start_ns: int, end_ns: int, steps: int) -> None:
        if t.last_step != self._steps:
            t.last_step = self._steps
            t.decode_start_ns = t.decode_start_ns or start_ns
            t.decode_end_ns = end_ns
            t.decode_steps += steps

    def _deliver(self, plan: StepPlan, result: _StepResult) -> None:
        stats = self.stats
        self._deliver_events(result.events)
        for seq_id in plan.leaving:
            self._seqs.pop(seq_id, None)
        for rows in result.step_rows:
            stats.step_sequences.observe(rows)
            stats.steps_multi += rows > 1
        stats.prefill_runs += result.prefill_runs
        stats.step_ns += result.step_ns
        stats.repad_ns += result.repad_ns
        self._refresh_gauges()

    def _deliver_events(self, events: list[tuple[Sequence, GenerationEvent]]) -> None:
        """Tokens to their streams (on the loop), at a step's end or handed over during a run; the
        sequences that finished leave the batcher (their rows leave the decoder at the next step,
        or left it already in the worker: ``_leave_in_run``)."""
        stats = self.stats
        now = self._clock_ns()
        finished = []
        for seq, event in events:
            if seq.first_token_ns == 0:
                seq.first_token_ns = now
                stats.time_to_first_token.observe(now - seq.admitted_ns)
            stats.generated_tokens += len(event.token_ids)
            if event.finish_reason is not None:
                finished.append(seq.seq_id)
                stats.finished[event.finish_reason] = stats.finished.get(event.finish_reason, 0) + 1
            if not seq.done or event.finish_reason is not None:
                seq.stream.push(event)
            if event.finish_reason is not None:
                seq.done = True
        if finished:
            self.batcher.complete(finished)
            self._refresh_gauges()

    def _publish(self, result: _StepResult) -> None:
        """Worker thread: hands the tokens made so far to the loop and goes on decoding."""
        events, result.events = result.events, []
        assert self._loop is not None  # set by _run, which started this step
        try:
            self._loop.call_soon_threadsafe(self._deliver_events, events)
        except RuntimeError:  # the loop closed under a step still running at shutdown: nobody reads them
            self._interrupt = True

    def _fail_running(self, exc: BaseException) -> None:
        for seq_id in self.batcher.fail_all():
            seq = self._seqs.pop(seq_id, None)
            if seq is not None and not seq.done:
                seq.done = True
                seq.stream.fail(exc)
        try:
            self.decoder.reset()
        except Exception:  # noqa: BLE001
            _log.exception("could not reset the decoder of %s:%s", self.name, self.version)
        self._refresh_gauges()

    # -- one step (worker thread) -------------------------------------------------------------

    def _step(self, plan: StepPlan, keep_running: bool = False) -> _StepResult:
        start = time.perf_counter_ns()
        result = _StepResult()
        decoder = self.decoder
        if plan.leaving:
            decoder.release(plan.leaving)
        repad = time.perf_counter_ns() - start
        if plan.decoding:
            seqs = [self._seqs[s] for s in plan.decoding]
            self._decode(seqs, result)
            if not plan.joining:
                self._run_ahead(seqs, start, result, keep_running)
        if plan.joining:
            by_length: dict[int, list[Sequence]] = {}
            for seq_id in plan.joining:
                seq = self._seqs[seq_id]
                by_length.setdefault(len(seq.prompt_ids), []).append(seq)
            for seqs in by_length.values():
                rows = decoder.rows  # measured: joining re-pads the batch
                t0 = time.perf_counter_ns()
                logits = decoder.prefill([s.seq_id for s in seqs], np.stack([s.prompt_ids for s in seqs]))
                if rows:
                    # The join's copy is part of the prefill call's time; attribute a share by size.
                    repad += (time.perf_counter_ns() - t0) * rows // (rows + len(seqs))
                result.prefill_runs += 1
                self._sample(seqs, logits, None, result)
            self._run_after_join(plan, result, keep_running)
        result.step_ns = time.perf_counter_ns() - start
        result.repad_ns += repad
        return result

    def _decode(self, seqs: list[Sequence], result: _StepResult) -> None:
        """One decode step of the whole batch: every running sequence gets its next token."""
        masks = self._masks_beside_the_model(seqs)
        logits = self.decoder.decode({s.seq_id: s.last_token for s in seqs})
        self._sample(seqs, logits, masks, result)
        result.decode_steps += 1
        result.step_rows.append(len(seqs))

    def _run_ahead(self, seqs: list[Sequence], start_ns: int, result: _StepResult, keep_running: bool) -> None:
        """More decode steps of the same batch while the loop has not asked for it back. Each step's
        tokens still become their own events, and they reach the loop at least once per stream
        interval (judged by the last step's time): at the end of the run, or, with ``keep_running``,
        handed over while the run goes on (the worker would otherwise idle through a round trip to
        the loop every interval). A sequence that finishes ends the run, unless ``keep_running``
        and others remain: then it leaves in the worker and the rest decode on."""
        interval = self._interval_ns
        if interval <= 0:
            return
        last_end = time.perf_counter_ns()
        step_ns = last_end - start_ns
        since = start_ns  # the oldest token not yet handed to the loop was made after this
        while not self._interrupt:
            finishing = [seq for seq, event in result.events[-len(seqs):] if event.finish_reason is not None]
            if finishing:
                if not keep_running or len(finishing) == len(seqs) or any(s.trace is not None for s in finishing):
                    return  # traced ones end the run: their spans are stamped on the loop before the finish
                seqs = self._leave_in_run(seqs, finishing, result)
                since = last_end
            if last_end + step_ns - since > interval:
                if not keep_running:
                    return
                self._publish(result)
                since = last_end
            self._decode(seqs, result)
            now = time.perf_counter_ns()
            step_ns, last_end = now - last_end, now

    def _leave_in_run(self, seqs: list[Sequence], finishing: list[Sequence], result: _StepResult) -> list[Sequence]:
        """Finished sequences leave the decoder now and their last events (all made so far) go to
        the loop, where they leave the batcher; the next plan's release of them finds nothing."""
        start = time.perf_counter_ns()
        self.decoder.release([s.seq_id for s in finishing])
        result.repad_ns += time.perf_counter_ns() - start
        self._publish(result)
        gone = {s.seq_id for s in finishing}
        return [s for s in seqs if s.seq_id not in gone]

    def _run_after_join(self, plan: StepPlan, result: _StepResult, keep_running: bool) -> None:
        """After a join, the whole batch runs ahead when it may go on past the interval: the new
        rows' first tokens (and the step's others) are handed to the loop at once, while the
        worker decodes on. Handing the step back instead would cost two thread hand-offs per
        request, the first token's and the next run's. A finish in this step hands back, as an
        arrival does."""
        if (not keep_running or self._interval_ns <= 0 or self._interrupt
                or any(event.finish_reason is not None for _, event in result.events)):
            return
        result.prefill_end_ns = self._clock_ns()
        self._publish(result)
        before = result.decode_steps
        seqs = [self._seqs[s] for s in (*plan.decoding, *plan.joining)]
        start = time.perf_counter_ns()
        self._decode(seqs, result)
        self._run_ahead(seqs, start, result, keep_running)
        result.joined_steps = result.decode_steps - before

    def _masks_beside_the_model(self, seqs: list[Sequence]) -> Future | None:
        """The constrained sequences' next masks, computed in a thread while the model's step runs
        (both release the GIL); None when none of ``seqs`` is constrained."""
        if all(s.constraint is None for s in seqs):
            return None
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mask-{self.name}-{self.version}")
        return self._mask_pool.submit(self._constraints.fill_pending)

    def _sample(self, seqs: list[Sequence], logits: dict[int, np.ndarray], masks: Future | None,
                result: _StepResult) -> None:
        """One token for each of ``seqs``: logit_bias and penalties on their rows together, then the
        constrained ones' rows masked together."""
        _penalize(seqs, logits)
        if masks is not None:
            masks.result()
        ids, constraints = [], []
        for s in seqs:
            if s.constraint is not None:
                ids.append(s.seq_id)
                constraints.append(s.constraint)
        masked = dict(zip(ids, mask_rows(constraints, [logits[i] for i in ids])))
        for seq in seqs:
            result.events.append((seq, self._next(seq, logits[seq.seq_id], masked.get(seq.seq_id))))
            if seq.penalties is not None:
                seq.penalties.add(seq.last_token)

    def _next(self, seq: Sequence, row: np.ndarray, masked: np.ndarray | None = None) -> GenerationEvent:
        """Sample one token for ``seq`` (from ``masked``, its row with the grammar's forbidden tokens
        out, when it is constrained) and turn it into its text delta and finish state."""
        constraint = seq.constraint
        if constraint is None:
            token = sample_token(row, seq.params, seq.rng)
        else:
            # Only tokens that keep the output a prefix of a valid document (EOS only once it is complete).
            token = sample_token(masked if masked is not None else constraint.mask(row), seq.params, seq.rng)
            if token not in self._stop_ids:
                constraint.advance(token)
        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.params.logprobs is not None:
            lp = log_softmax(row)
            tok = self.tokenizer
            top = tuple((tok.token_text(i), tok.token_bytes(i), v) for i, v in top_logprobs(lp, seq.params.logprobs))
            logprobs = (TokenLogprob(tok.token_text(token), tok.token_bytes(token), float(lp[token]), top),)
        seq.generated += 1
        seq.last_token = token
        if seq.trace is None:
            return self._text_event(seq, token, logprobs)
        start = time.monotonic_ns()
        event = self._text_event(seq, token, logprobs)
        seq.trace.detokenize_ns += time.monotonic_ns() - start  # this worker is the only writer
        seq.trace.detokenized_tokens += 1
        return event

    def _text_event(self, seq: Sequence, token: int, logprobs: tuple[TokenLogprob, ...]) -> GenerationEvent:
        """The token's text delta (held back while it may be part of a stop string) and finish state."""
        if token in self._stop_ids:
            text = seq.stop.feed(seq.detokenizer.flush())[0] + seq.stop.flush()
            # Counted in usage (it was generated) but, as OpenAI does, not listed in logprobs.
            return GenerationEvent(seq.index, text, (token,), (), FINISH_STOP)
        text, stopped = seq.stop.feed(seq.detokenizer.add(token))
        if stopped:
            return GenerationEvent(seq.index, text, (token,), logprobs, FINISH_STOP)
        if seq.constraint is not None and seq.constraint.done:
            # The document is complete: nothing but EOS could follow, so the choice ends here.
            text += seq.stop.feed(seq.detokenizer.flush())[0] + seq.stop.flush()
            return GenerationEvent(seq.index, text, (token,), logprobs, FINISH_STOP)
        if seq.generated >= seq.max_tokens:
            tail, stopped = seq.stop.feed(seq.detokenizer.flush())
            text += tail
            if not stopped:
                text += seq.stop.flush()
            return GenerationEvent(seq.index, text, (token,), logprobs, FINISH_STOP if stopped else FINISH_LENGTH)
        return GenerationEvent(seq.index, text, (token,), logprobs, None)

    # -- lifecycle ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests, let admitted ones finish (bounded), then stop."""
        self._closing = True
        self._interrupt = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except asyncio.TimeoutError:
                task.cancel()
        for seq in list(self._seqs.values()):
            if not seq.done:
                seq.done = True
                seq.stream.fail(ModelNotReadyError(f"model '{self.name}' version {self.version} was unloaded"))
        self._seqs.clear()
        self._pool.shutdown(wait=False)
        if self._mask_pool is not None:
            self._mask_pool.shutdown(wait=False)


def _penalize(seqs: list[Sequence], logits: dict[int, np.ndarray]) -> None:
    """logit_bias and the penalties, on the step's rows at once; rows of sequences using none
    are neither copied nor touched (the common path costs one scan of the list)."""
    penalized = [s for s in seqs if s.penalties is not None]
    if not penalized:
        return
    rows = apply_penalties(np.stack([logits[s.seq_id] for s in penalized]), [s.penalties for s in penalized])  # type: ignore[misc]
    for seq, row in zip(penalized, rows):
        logits[seq.seq_id] = row
