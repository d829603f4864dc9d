"""Incremental detokenisation: turn a growing list of token ids into text deltas that
never split a character.

Byte-level BPE tokens may each hold part of a UTF-8 character, and some decoders
change a token's text by what precedes it (leading-space rules). So a delta is the
difference between decoding a short window of recent tokens with and without the new
ones, and is held back while the window's text ends in U+FFFD (an incomplete
character). Cost: two decodes of a few tokens per step (~5 µs).

With GPT-2's byte-level decoder alone (``TextTokenizer.byte_table``), decoding is the
lossy UTF-8 of the tokens' bytes, so an incremental UTF-8 decoder gives the same deltas
from a table lookup per token (~0.3 µs; tested against the window on random ids).
"""

from __future__ import annotations

import codecs

from gateway.text.tokenizer import TextTokenizer

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    __slots__ = ("_tokenizer", "_ids", "_prefix", "_read", "_table", "_utf8")

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens before this have been emitted as text
        self._table = tokenizer.byte_table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if self._table is not None else None

    def add(self, token_id: int) -> str:
        """The new complete text after ``token_id`` ("" while a character is unfinished)."""
        table = self._table
        if table is not None and self._utf8 is not None:
            return self._utf8.decode(table[token_id] if 0 <= token_id < len(table) else b"")
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
        if self._utf8 is not None:
            return self._utf8.decode(b"", final=True)
        if self._read == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]
