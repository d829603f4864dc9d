"""Tokenizer files, incremental detokenisation, stop strings, chat template, sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core.generation import SamplingParams
from gateway.scheduler.generation.sampling import log_softmax, sample_token, sequence_rng, top_logprobs
from gateway.text.chat_template import ChatTemplate, ChatTemplateError
from gateway.text.detokenizer import IncrementalDetokenizer
from gateway.text.stop import StopMatcher
from gateway.text.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_model) -> TextTokenizer:
    return TextTokenizer.from_dir(str(tiny_llm_model / "1"))


def test_eos_ids_come_from_tokenizer_and_generation_config(tokenizer):
    ids = {tokenizer.tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")}
    assert tokenizer.eos_token_ids == ids


def test_incremental_detokenizer_never_splits_a_character(tokenizer):
    text = "Hello café 東京 😀 Straße!"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) + detok.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    # multi-byte characters span several byte-level tokens here, so some steps emit nothing
    assert "" in deltas
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode()


def test_flush_shows_an_unfinished_character_as_replacement(tokenizer):
    ids = tokenizer.encode("😀")
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    flushed = detok.flush()
    assert flushed and set(flushed) == {"\ufffd"}


@pytest.mark.parametrize(
    "deltas, stops, want_text, stopped",
    [
        (["Hel", "lo wo", "rld"], ("o w",), "Hell", True),
        (["ab", "c", "d"], ("cd",), "ab", True),
        (["a", "b", "x"], ("bc",), "abx", False),
        (["xx<", "/s", ">yy"], ("</s>",), "xx", True),
        (["one", " two"], ("two", "ne"), "o", True),
    ],
)
def test_stop_strings_match_across_deltas(deltas, stops, want_text, stopped):
    m = StopMatcher(stops)
    out, hit = "", False
    for d in deltas:
        text, hit = m.feed(d)
        out += text
        if hit:
            break
    if not hit:
        out += m.flush()
    assert (out, hit) == (want_text, stopped)


def test_held_back_text_is_a_possible_stop_prefix_only():
    m = StopMatcher(("END",))
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("x") == ("Ex", False)


def test_chat_template_renders_in_a_sandbox():
    t = ChatTemplate("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert t.render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    unsafe = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception):
        unsafe.render([])
    raising = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="alternate"):
        raising.render([])


def test_greedy_and_seeded_sampling():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(100).astype(np.float32)
    assert sample_token(row, SamplingParams(temperature=0.0), sequence_rng(None, 0)) == int(np.argmax(row))
    # Greedy draws nothing: the engine gives such sequences no generator at all.
    assert sample_token(row, SamplingParams(temperature=0.0), None) == int(np.argmax(row))
    assert sample_token(row, SamplingParams(temperature=1.0, top_k=1), None) == int(np.argmax(row))
    with pytest.raises(ValueError, match="random generator"):
        sample_token(row, SamplingParams(temperature=1.0), None)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=7)
    a = [sample_token(row, params, r) for r in [sequence_rng(7, 0)] for _ in range(20)]
    r2 = sequence_rng(7, 0)
    b = [sample_token(row, params, r2) for _ in range(20)]
    assert a == b
    allowed = set(np.argsort(-row)[:20].tolist())
    assert set(a) <= allowed and len(set(a)) > 1


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    row = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.75)
    rng = sequence_rng(1, 0)
    seen = {sample_token(row, params, rng) for _ in range(300)}
    assert seen == {0, 1}


def test_logprobs_are_of_the_model_distribution():
    row = np.array([2.0, 1.0, 0.0], np.float32)
    lp = log_softmax(row)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert [i for i, _ in top_logprobs(lp, 2)] == [0, 1]


class _WindowOnly(TextTokenizer):
    """The same tokenizer without the byte table: the detokenizer's general (window) path."""

    byte_table = None


@pytest.fixture(scope="module")
def window_tokenizer(tiny_llm_model) -> TextTokenizer:
    return _WindowOnly.from_dir(str(tiny_llm_model / "1"))


def test_tiny_gpt_decodes_through_the_byte_table(tokenizer, window_tokenizer):
    assert tokenizer.vocab_size == 512  # the random ids below cover it
    assert tokenizer.byte_table is not None and len(tokenizer.byte_table) == tokenizer.vocab_size
    assert window_tokenizer.byte_table is None
    assert all(tokenizer.byte_table[i] == b"" for i in (0, 1, 2))  # the special tokens decoding skips


@given(ids=st.lists(st.integers(0, 511), max_size=40))
@example(ids=[503, 97])  # a token ending in the first byte of "á", then its second byte
@settings(max_examples=300, deadline=None)
def test_the_byte_table_path_gives_the_window_paths_text(tokenizer, window_tokenizer, ids):
    """Random ids (invalid UTF-8 and special tokens included): the same text as decoding all the ids,
    by either path; on valid UTF-8, after every step, the byte table has emitted at least what the
    window has (it holds back only a character's unfinished bytes, where the window holds back the
    whole token that ends in one: b"tra\\xc3" gives "tra" at once, and "traá" from the window only
    once the next token finishes the character)."""
    fast, window = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(window_tokenizer)
    fast_deltas, window_deltas = [fast.add(i) for i in ids], [window.add(i) for i in ids]
    whole = tokenizer.decode(ids)
    assert "".join(fast_deltas) + fast.flush() == "".join(window_deltas) + window.flush() == whole
    if "\ufffd" not in whole:
        for k in range(len(ids) + 1):
            assert "".join(fast_deltas[:k]).startswith("".join(window_deltas[:k]))
