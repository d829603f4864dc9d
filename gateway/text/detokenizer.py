"""Incremental detokenisation: turn a growing list of token ids into text deltas that
never split a character.

Byte-level BPE tokens may each hold part of a UTF-8 character, and some decoders
change a token's text by what precedes it (leading-space rules). So a delta is the
difference between decoding a short window of recent tokens with and without the new
ones, and is held back while the window's text ends in U+FFFD (an incomplete
character). Cost: two decodes of a few tokens per step.
"""

from __future__ import annotations

from gateway.text.tokenizer import TextTokenizer

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    __slots__ = ("_tokenizer", "_ids", "_prefix", "_read")

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens before this have been emitted as text

    def add(self, token_id: int) -> str:
        """The new complete text after ``token_id`` ("" while a character is unfinished)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self._prefix = self._read
            self._read = len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back, at the end of the sequence (an unfinished character shows as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]
