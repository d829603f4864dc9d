"""logit_bias, presence/frequency/repetition penalties (penalties.py) and min-p (sampling.py),
by hand on small arrays: each changes exactly the tokens it should, by the amount it should."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.core.generation import SamplingParams
from gateway.scheduler.generation.penalties import apply_penalties, penalties_for
from gateway.scheduler.generation.sampling import sample_token

VOCAB = 8
BASE = np.array([2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 0.0, 4.0], dtype=np.float32)


def _state(prompt=(0,), output=(), **params):
    state = penalties_for(SamplingParams(**params), np.asarray(prompt), VOCAB)
    assert state is not None
    for t in output:
        state.add(t)
    return state


def _changed(before: np.ndarray, after: np.ndarray) -> dict[int, float]:
    return {int(i): float(after[i] - before[i]) for i in np.flatnonzero(~np.isclose(before, after))}


def test_no_penalty_settings_means_no_state():
    assert penalties_for(SamplingParams(), np.asarray([1, 2]), VOCAB) is None
    assert penalties_for(SamplingParams(temperature=0.5, top_k=3, min_p=0.1), np.asarray([1]), VOCAB) is None


def test_logit_bias_adds_exactly_to_its_tokens():
    state = _state(logit_bias=((3, -100.0), (6, 5.5)))
    assert state.counts is None  # the bias alone keeps no history
    out = apply_penalties(BASE[None].copy(), [state])[0]
    assert _changed(BASE, out) == {3: pytest.approx(-100.0), 6: pytest.approx(5.5)}


def test_presence_penalty_subtracts_once_per_generated_token():
    state = _state(prompt=(1, 2), output=(5, 5, 5, 7), presence_penalty=1.5)
    out = apply_penalties(BASE[None].copy(), [state])[0]
    assert _changed(BASE, out) == {5: pytest.approx(-1.5), 7: pytest.approx(-1.5)}  # prompt tokens untouched


def test_frequency_penalty_subtracts_per_occurrence():
    state = _state(prompt=(1, 2), output=(5, 5, 5, 7), frequency_penalty=0.5)
    out = apply_penalties(BASE[None].copy(), [state])[0]
    assert _changed(BASE, out) == {5: pytest.approx(-1.5), 7: pytest.approx(-0.5)}


def test_negative_penalties_encourage():
    state = _state(output=(4, 4), presence_penalty=-1.0, frequency_penalty=-0.25)
    out = apply_penalties(BASE[None].copy(), [state])[0]
    assert _changed(BASE, out) == {4: pytest.approx(1.5)}


def test_repetition_penalty_divides_positive_and_multiplies_negative_over_prompt_and_output():
    state = _state(prompt=(0, 1), output=(7, 6), repetition_penalty=2.0)
    out = apply_penalties(BASE[None].copy(), [state])[0]
    # 0: 2.0 -> 1.0; 1: -1.0 -> -2.0; 7: 4.0 -> 2.0; 6: 0.0 stays 0.0; never-seen tokens untouched.
    assert _changed(BASE, out) == {0: pytest.approx(-1.0), 1: pytest.approx(-1.0), 7: pytest.approx(-2.0)}


def test_rows_without_penalties_are_untouched_in_a_mixed_batch():
    a = _state(output=(3,), frequency_penalty=1.0)
    b = _state(logit_bias=((0, 10.0),))
    batch = np.stack([BASE, BASE]).copy()
    out = apply_penalties(batch, [a, b])
    assert _changed(BASE, out[0]) == {3: pytest.approx(-1.0)}
    assert _changed(BASE, out[1]) == {0: pytest.approx(10.0)}
    assert apply_penalties(BASE[None].copy(), [])[0].tolist() == BASE.tolist()


def test_counts_update_incrementally():
    state = _state(frequency_penalty=1.0)
    assert state.counts.sum() == 0
    for t in (2, 2, 5):
        state.add(t)
    assert state.counts.tolist() == [0, 0, 2, 0, 0, 1, 0, 0]
    assert state.generated_ids == [2, 5]  # distinct, first-seen order: what a step touches
    state.add(VOCAB + 3)  # a padded-logits token beyond the vocabulary is ignored, not an IndexError
    assert state.counts.sum() == 3


def test_wider_logits_than_the_vocabulary_and_half_precision():
    state = _state(output=(1,), frequency_penalty=1.0)
    wide = np.concatenate([BASE, [9.0, 9.0]]).astype(np.float16)[None]
    out = apply_penalties(wide, [state])[0]
    assert out.dtype == np.float32
    assert _changed(wide[0].astype(np.float32), out) == {1: pytest.approx(-1.0)}


def test_engine_path_without_penalties_is_free():
    """The engine's _penalize on a step where no sequence uses penalties leaves the logits dict as it was."""
    from gateway.scheduler.generation.engine import _penalize

    class Seq:
        def __init__(self, seq_id):
            self.seq_id, self.penalties = seq_id, None

    rows = {1: BASE.copy(), 2: BASE.copy()}
    ids = {k: id(v) for k, v in rows.items()}
    _penalize([Seq(1), Seq(2)], rows)
    assert {k: id(v) for k, v in rows.items()} == ids


# ------------------------------------------------------------------------------ min_p


def test_min_p_drops_tokens_below_the_fraction_of_the_top_probability():
    # probabilities 0.5, 0.3, 0.15, 0.05: min_p 0.5 keeps tokens with p >= 0.25 (the first two).
    row = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(7)
    drawn = {sample_token(row, SamplingParams(min_p=0.5), rng) for _ in range(400)}
    assert drawn == {0, 1}
    drawn = {sample_token(row, SamplingParams(), rng) for _ in range(400)}
    assert drawn == {0, 1, 2, 3}
    # min_p 1.0 keeps only the top token(s); min_p 0 is off.
    assert {sample_token(row, SamplingParams(min_p=1.0), rng) for _ in range(50)} == {0}


def test_min_p_is_relative_to_the_tempered_distribution():
    row = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(1)
    # temperature 2 flattens the distribution so min_p 0.5 now keeps three tokens: p ∝ p0^(1/2).
    tempered = np.array([0.5, 0.3, 0.15, 0.05]) ** 0.5
    keep = set(np.flatnonzero(tempered >= 0.5 * tempered.max()).tolist())
    drawn = {sample_token(row, SamplingParams(temperature=2.0, min_p=0.5), rng) for _ in range(600)}
    assert drawn == keep and len(keep) == 3


# ------------------------------------------------------------------------------ semantic cache scope


@pytest.mark.parametrize("changed", [
    {"logit_bias": ((5, 10.0),)}, {"presence_penalty": 1.0}, {"frequency_penalty": 1.0},
    {"repetition_penalty": 1.3}, {"min_p": 0.2},
])
def test_the_prompt_cache_scope_covers_the_new_sampling_fields(changed):
    """A cached greedy answer must never answer a request whose bias or penalties change the tokens."""
    from gateway.core.generation import GenerationRequest
    from gateway.core.model_config import SemanticCacheConfig
    from gateway.service.prompt_cache import _query

    def scope(**params):
        req = GenerationRequest("m", SamplingParams(temperature=0, max_tokens=8, **params), prompt="hello")
        query = _query("m", "1", req, SemanticCacheConfig(enabled=True), None, None)
        assert query is not None and query.cacheable
        return query.scope

    assert scope(**changed) != scope()
