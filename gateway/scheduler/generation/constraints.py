"""Constrained decoding with llguidance: a sequence whose output must match a grammar
(a JSON schema: ``response_format``, forced tool calls) sees, at every step, only the
tokens that keep its output a prefix of a valid document.

One ``LLTokenizer`` per engine, built lazily from the model's ``tokenizer.json`` (no
transformers); one ``LLMatcher`` per sequence. A JSON schema compiles once per distinct
schema (cached by its JSON text). The model's end-of-sequence tokens are the matcher's
EOS: allowed only while the output is already a complete document. When the grammar
admits nothing more (the closing brace of the object), the constraint is ``done`` and the
choice finishes with "stop".
"""

from __future__ import annotations

import threading
from functools import lru_cache

import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from gateway.core.generation import OutputConstraint
from gateway.text.tokenizer import TextTokenizer

# Compact JSON: no whitespace between tokens, so a document is as short as it can be and a
# model cannot spend its max_tokens on spaces and newlines.
_JSON_OPTIONS = {"whitespace_flexible": False}


class ConstraintError(ValueError):
    """The schema (or grammar) cannot be compiled; the message is llguidance's."""


class ConstraintViolation(RuntimeError):
    """The matcher refused a token it had allowed, or allows none: never expected, fails the step."""


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

    __slots__ = ("_matcher", "_bitmask", "_vocab")

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self._matcher = matcher
        self._vocab = vocab
        self._bitmask = allocate_token_bitmask(1, vocab)

    def allowed(self) -> np.ndarray:
        """A boolean row over the tokenizer's vocabulary: the tokens the grammar allows next."""
        fill_next_token_bitmask(self._matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
        return bits[: self._vocab].view(bool)

    def mask(self, row: np.ndarray) -> np.ndarray:
        """A copy of ``row`` (the model's logits stay as they are, for logprobs) with forbidden tokens at -inf."""
        allowed = self.allowed()
        if not allowed.any():
            raise ConstraintViolation(f"the grammar allows no next token: {self._matcher.get_error() or 'no reason given'}")
        out = np.full(row.shape, -np.inf, dtype=row.dtype)
        n = min(row.shape[0], self._vocab)  # logits rows may be padded past the tokenizer's vocabulary
        np.copyto(out[:n], row[:n], where=allowed[:n])
        return out

    def advance(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise ConstraintViolation(f"the grammar refused token {token}: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar admits no more tokens: the document is complete."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()


class ConstraintFactory:
    """The engine's one llguidance tokenizer (built at first use) and the matchers made from it."""

    def __init__(self, tokenizer: TextTokenizer, eos_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._eos_ids = sorted(i for i in eos_ids if 0 <= i < tokenizer.vocab_size)
        self._lltok: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._lltok is None:
                self._lltok = llguidance.LLTokenizer(
                    self._tokenizer.tokenizer.to_str(), n_vocab=self._tokenizer.vocab_size,
                    eos_token=self._eos_ids or None,
                )
            return self._lltok

    def check(self, spec: OutputConstraint) -> str:
        """The compiled grammar; raises ConstraintError for a schema llguidance cannot use."""
        return compile_json_schema(spec.schema)

    def create(self, spec: OutputConstraint, count: int = 1) -> list[Constraint]:
        grammar = self.check(spec)
        lltok = self._ll_tokenizer()
        constraints = []
        for _ in range(count):
            matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
            if matcher.is_error():
                raise ConstraintError(matcher.get_error())
            constraints.append(Constraint(matcher, self._tokenizer.vocab_size))
        return constraints

