"""A generative model's tokenizer as the ecosystem ships it: ``tokenizer.json`` (the
``tokenizers`` library) plus ``tokenizer_config.json`` (special tokens, chat template)."""

from __future__ import annotations

import json
import os
from functools import lru_cache

from tokenizers import Tokenizer

from gateway.text.chat_template import ChatTemplate

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Hugging Face's generation defaults; its eos_token_id (an id or a list) ends sequences too.
GENERATION_CONFIG_FILE = "generation_config.json"


class TokenizerLoadError(Exception):
    pass


def _special(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # {"content": "...", "lstrip": ...} as older configs write it
        value = value.get("content")
    return value if isinstance(value, str) else None


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte -> printable character map, inverted (char -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TokenizerLoadError(f"{path}: expected a JSON object")
    return doc


class TextTokenizer:
    def __init__(
        self, tokenizer: Tokenizer, config: dict, *, source: str = "", extra_eos_ids: tuple[int, ...] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        self.eos_token = _special(config, "eos_token")
        self.bos_token = _special(config, "bos_token")
        eos_id = tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self.eos_token_ids: frozenset[int] = frozenset(([eos_id] if eos_id is not None else []) + list(extra_eos_ids))
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        self.chat_template = (
            ChatTemplate(template, bos_token=self.bos_token or "", eos_token=self.eos_token or "")
            if isinstance(template, str) and template
            else None
        )
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._special_ids = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        self._byte_table: tuple[bytes, ...] | None = None

    @property
    def byte_table(self) -> tuple[bytes, ...] | None:
        """Per token id, the bytes it adds to decoded text, when the decoder is GPT-2's byte-level one
        alone: decoding is then the lossy UTF-8 of the tokens' bytes joined, special tokens (skipped
        by ``decode``) adding none. None for any other decoder. Built on first use (a few µs a token:
        the generation engine asks at load, off the event loop)."""
        if self._byte_level and self._byte_table is None:
            self._byte_table = tuple(b"" if i in self._special_ids else self.token_bytes(i) for i in range(self.vocab_size))
        return self._byte_table

    @classmethod
    def from_dir(cls, directory: str) -> TextTokenizer:
        path = os.path.join(directory, TOKENIZER_FILE)
        if not os.path.exists(path):
            raise TokenizerLoadError(f"{path}: missing (a generation model needs its tokenizer beside the model file)")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - the library raises plain Exception on bad files
            raise TokenizerLoadError(f"{path}: not a valid tokenizer: {exc}") from None
        config = _read_json(os.path.join(directory, TOKENIZER_CONFIG_FILE))
        eos = _read_json(os.path.join(directory, GENERATION_CONFIG_FILE)).get("eos_token_id")
        eos_ids = tuple(i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int) and not isinstance(i, bool))
        return cls(tokenizer, config, source=directory, extra_eos_ids=eos_ids)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (a byte-level token may hold part of a character)."""
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level and token_id not in self._special_ids:
            alphabet = _byte_level_alphabet()
            if all(ch in alphabet for ch in piece):
                return bytes(alphabet[ch] for ch in piece)
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")
