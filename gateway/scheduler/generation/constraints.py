"""Constrained decoding with llguidance: a sequence whose output must match a grammar
(a JSON schema: ``response_format``, forced tool calls) sees, at every step, only the
tokens that keep its output a prefix of a valid document.

One ``LLTokenizer`` per engine, built lazily from the model's ``tokenizer.json`` (no
transformers); one ``LLMatcher`` per sequence. A JSON schema compiles once per distinct
schema (cached by its JSON text). The model's end-of-sequence tokens are the matcher's
EOS: allowed only while the output is already a complete document. When the grammar
admits nothing more (the closing brace of the object), the constraint is ``done`` and the
choice finishes with "stop".

Masks are computed per step in one batch: a constraint that consumed a token (or is
new) waits in its engine's pending list, and the engine computes all of them in a thread
of its own while the model's step runs (llguidance and onnxruntime both release the GIL),
then applies them to the step's rows together (``mask_rows``). One matcher after another
in that one thread measured better than llguidance's own thread pool (``LLExecutor``),
whose threads compete with the model's for the cores (0.72-0.75x against 0.60-0.63x of
unconstrained tokens/s on tiny-gpt, 2 cores).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING

import llguidance
import numpy as np
from llguidance.numpy import get_bitmask_shape

from gateway.core.generation import OutputConstraint
from gateway.text.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON: no whitespace between tokens, so a document is as short as it can be and a
# model cannot spend its max_tokens on spaces and newlines.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


class ConstraintError(ValueError):
    """The schema (or grammar) cannot be compiled; the message is llguidance's."""


class ConstraintViolation(RuntimeError):
    """The matcher refused a token it had allowed (or allowed none): never expected, fails the step."""


@lru_cache(maxsize=256)
def compile_json_schema(schema_json: str) -> str:
    """The llguidance grammar of a JSON schema (its JSON text); raises ConstraintError."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=_JSON_OPTIONS)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConstraintError(str(exc)) from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ConstraintError(error)
    return grammar


class Constraint:
    """One sequence's grammar state. ``mask(row)`` gives the logits with every token the
    grammar forbids at -inf; ``advance(token)`` records the sampled token."""

    __slots__ = ("matcher", "bitmask", "stale", "_vocab", "_batch")

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int, batch: _MaskBatch) -> None:
        self.matcher = matcher
        self._vocab = vocab
        self._batch = batch
        self.bitmask: np.ndarray | None = None  # int32 words, one bit per token
        self.stale = True  # the bitmask is not yet the one for the next token
        batch.add(self)

    def allowed(self) -> np.ndarray:
        """A boolean row over the tokenizer's vocabulary: the tokens the grammar allows next."""
        if self.stale:
            self._batch.fill()
        assert self.bitmask is not None  # filled above
        return np.unpackbits(self.bitmask.view(np.uint8), count=self._vocab, bitorder="little").view(bool)

    def mask(self, row: np.ndarray) -> np.ndarray:
        """A copy of ``row`` (the model's logits stay as they are, for logprobs) with forbidden tokens at -inf.
        Should the grammar allow nothing (never expected), all is -inf and ``advance`` refuses the pick."""
        allowed = self.allowed()
        if row.shape[0] == self._vocab:
            return np.where(allowed, row, np.float32(-np.inf)).astype(row.dtype, copy=False)
        out = np.full(row.shape, -np.inf, dtype=row.dtype)
        n = min(row.shape[0], self._vocab)  # logits rows may be padded past the tokenizer's vocabulary
        np.copyto(out[:n], row[:n], where=allowed[:n])
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConstraintViolation(f"the grammar refused token {token}: {self.matcher.get_error() or 'not allowed'}")
        if not self.matcher.is_stopped():
            self.stale = True
            self._batch.add(self)

    @property
    def done(self) -> bool:
        """The grammar admits no more tokens: the document is complete."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()


def mask_rows(constraints: list[Constraint], rows: list[np.ndarray]) -> list[np.ndarray]:
    """``Constraint.mask`` for many sequences at once (one step's), in a few numpy calls rather
    than a few per sequence: masked copies of ``rows``, forbidden tokens at -inf."""
    if not constraints:
        return []
    for c in constraints:
        if c.stale:
            c._batch.fill()  # noqa: SLF001 - one call fills every mask still due
            break
    vocab = constraints[0]._vocab  # noqa: SLF001 - one engine, one vocabulary
    bitmasks: list[np.ndarray] = []
    for c in constraints:
        assert c.bitmask is not None  # filled above
        bitmasks.append(c.bitmask)
    bits = np.stack(bitmasks)
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, count=vocab, bitorder="little").view(bool)
    block = np.stack(rows)
    n = min(block.shape[1], vocab)  # logits rows may be padded past the tokenizer's vocabulary
    out = np.full(block.shape, -np.inf, dtype=block.dtype)
    np.copyto(out[:, :n], block[:, :n], where=allowed[:, :n])
    return list(out)


class _MaskBatch:
    """The constraints whose next mask is due, computed together by llguidance's thread pool."""

    def __init__(self, vocab: int) -> None:
        self._words = get_bitmask_shape(1, vocab)[1]
        self._pending: list[Constraint] = []
        self._lock = threading.Lock()  # constraints are added at submit (event loop) and in steps (worker)

    def add(self, constraint: Constraint) -> None:
        with self._lock:
            self._pending.append(constraint)

    def fill(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        batch = [c for c in batch if c.stale]  # a sequence that left may still be listed once
        if not batch:
            return
        masks = np.empty((len(batch), self._words), dtype=np.int32)
        for i, c in enumerate(batch):
            c.matcher.unsafe_compute_mask_ptr(masks[i].ctypes.data, self._words * 4)
        for i, c in enumerate(batch):
            c.bitmask = masks[i]
            c.stale = False


class ConstraintFactory:
    """The engine's one llguidance tokenizer (built at first use) and the matchers made from it."""

    def __init__(self, tokenizer: TextTokenizer, eos_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._eos_ids = sorted(i for i in eos_ids if 0 <= i < tokenizer.vocab_size)
        self._lltok: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._batch = _MaskBatch(tokenizer.vocab_size)

    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._lltok is None:
                self._lltok = llguidance.LLTokenizer(
                    self._tokenizer.tokenizer.to_str(), n_vocab=self._tokenizer.vocab_size,
                    eos_token=self._eos_ids or None,
                )
            return self._lltok

    def warm(self, spec: OutputConstraint) -> None:
        """Compile ``spec`` (cached) and build the tokenizer: what ``create`` needs, done ahead."""
        self.check(spec)
        self._ll_tokenizer()

    def fill_pending(self) -> None:
        """Compute every mask now due (call it beside the model's step: llguidance runs without the GIL)."""
        self._batch.fill()

    def check(self, spec: OutputConstraint) -> str:
        """The compiled grammar; raises ConstraintError for a schema llguidance cannot use."""
        return compile_json_schema(spec.schema)

    def create(self, spec: OutputConstraint, count: int = 1) -> list[Constraint]:
        grammar = self.check(spec)
        lltok = self._ll_tokenizer()
        matchers = []
        for _ in range(count):
            matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
            if matcher.is_error():
                raise ConstraintError(matcher.get_error())
            matchers.append(matcher)
        return [Constraint(m, self._tokenizer.vocab_size, self._batch) for m in matchers]
