"""Drift statistics against direct numpy computations and scipy, on the same data.

- PSI and Jensen-Shannon: equal (1e-12) to numpy/scipy on the same bins, binned here
  independently of the native histogram routine (np.searchsorted + np.bincount).
- KS: the statistic comes from the binned CDFs, so it can only miss the exact
  two-sample statistic (scipy.stats.ks_2samp) by what happens inside one bin:
  0 <= exact - ours <= the largest proportion either sample has in one bin.
- KS p-value: Kolmogorov's limit with Stephens's correction; within 0.005 of
  ks_2samp's asymptotic p-value for the same statistic and sample sizes.
- chi-square: equal to scipy.stats.chi2_contingency (no continuity correction).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from gateway.core.drift_config import DriftThresholds
from gateway.monitoring.drift import stats
from gateway.monitoring.drift.judge import CRITICAL, NONE, WARNING, judge
from gateway.monitoring.drift.profile import bin_counts, profile_stream

EPS = 1e-4

SCENARIOS = {
    # name: (reference sampler, current sampler)
    "same": (lambda r, n: r.standard_normal(n), lambda r, n: r.standard_normal(n)),
    "shift_0.1sd": (lambda r, n: r.standard_normal(n), lambda r, n: r.standard_normal(n) + 0.1),
    "shift_0.5sd": (lambda r, n: r.standard_normal(n), lambda r, n: r.standard_normal(n) + 0.5),
    "shift_3sd": (lambda r, n: r.standard_normal(n), lambda r, n: r.standard_normal(n) + 3),
    "scale_x2": (lambda r, n: r.standard_normal(n), lambda r, n: 2 * r.standard_normal(n)),
    "exponential": (lambda r, n: r.exponential(1.0, n), lambda r, n: r.exponential(1.3, n)),
}


def numpy_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin i = [edges[i-1], edges[i]), open-ended outer bins: an independent twin of the native routine."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def numpy_psi(ref: np.ndarray, cur: np.ndarray, eps: float) -> float:
    p, q = ref / ref.sum(), cur / cur.sum()
    p, q = np.where(p == 0, eps, p), np.where(q == 0, eps, q)
    return float(((q - p) * np.log(q / p)).sum())


def sample(name: str, n_ref: int = 5000, n_cur: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref_fn, cur_fn = SCENARIOS[name]
    return ref_fn(rng, n_ref), cur_fn(rng, n_cur)


@pytest.mark.parametrize("bins", [5, 10, 20])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_psi_jsd_equal_numpy_on_the_same_bins(name, bins):
    ref, cur = sample(name)
    profile = profile_stream("x", ref, False, bins, 100)
    cur_counts, _ = bin_counts(cur, profile.edges, False)
    assert profile.counts.tolist() == numpy_bins(ref, profile.edges).tolist()
    assert cur_counts.tolist() == numpy_bins(cur, profile.edges).tolist()
    assert stats.psi(profile.counts, cur_counts, EPS) == pytest.approx(numpy_psi(profile.counts, cur_counts, EPS), rel=1e-12, abs=1e-12)
    expected_jsd = scipy.spatial.distance.jensenshannon(profile.counts, cur_counts, base=2)
    assert stats.js_distance(profile.counts, cur_counts) == pytest.approx(expected_jsd, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bins", [10, 50])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ks_within_binning_error_of_scipy(name, bins):
    ref, cur = sample(name)
    profile = profile_stream("x", ref, False, bins, 100)
    cur_counts, _ = bin_counts(cur, profile.edges, False)
    ours = stats.ks_binned(profile.counts, cur_counts)
    exact = scipy.stats.ks_2samp(ref, cur)
    bound = max((profile.counts / profile.counts.sum()).max(), (cur_counts / cur_counts.sum()).max())
    assert -1e-12 <= exact.statistic - ours <= bound + 1e-12
    asymp = scipy.stats.ks_2samp(ref, cur, method="asymp")
    assert stats.ks_pvalue(exact.statistic, len(ref), len(cur)) == pytest.approx(asymp.pvalue, abs=0.005)


def test_ks_bound_tightens_with_more_bins():
    ref, cur = sample("shift_0.5sd", 20000, 5000)
    exact = scipy.stats.ks_2samp(ref, cur).statistic
    gaps = []
    for bins in (5, 20, 100):
        p = profile_stream("x", ref, False, bins, 100)
        gaps.append(exact - stats.ks_binned(p.counts, bin_counts(cur, p.edges, False)[0]))
    assert gaps[-1] <= gaps[0] and gaps[-1] < 0.01


@pytest.mark.parametrize("seed", range(4))
def test_chi2_equals_scipy_contingency(seed):
    rng = np.random.default_rng(seed)
    ref = rng.choice([1, 2, 3, 7], size=3000, p=[0.4, 0.3, 0.2, 0.1]).astype(float)
    cur = rng.choice([1, 2, 3, 7, 9], size=800, p=[0.3, 0.3, 0.2, 0.15, 0.05]).astype(float)
    profile = profile_stream("c", ref, True, 10, 100)
    assert profile.edges.tolist() == [1, 2, 3, 7]
    cur_counts, _ = bin_counts(cur, profile.edges, True)
    assert cur_counts[-1] == int((cur == 9).sum())  # the unseen category lands in "other"
    chi2, p = stats.chi2_homogeneity(profile.counts, cur_counts)
    table = np.vstack([profile.counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    expected = scipy.stats.chi2_contingency(table, correction=False)
    assert chi2 == pytest.approx(expected.statistic, rel=1e-10)
    assert p == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize("x,dof", [(0.5, 1), (3.0, 2), (10.0, 5), (100.0, 9), (1e-3, 3), (50.0, 50), (300.0, 99)])
def test_chi2_sf_equals_scipy(x, dof):
    assert stats.chi2_sf(x, dof) == pytest.approx(scipy.stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("x", [0.05, 0.3, 0.8, 1.17, 1.19, 1.6, 2.5, 4.0])
def test_kolmogorov_sf_equals_scipy(x):
    assert stats.kolmogorov_sf(x) == pytest.approx(scipy.stats.kstwobign.sf(x), rel=1e-9, abs=1e-15)


def test_empty_bins_use_epsilon_and_empty_windows_give_nan():
    ref = np.array([10, 0, 10])
    cur = np.array([0, 10, 10])
    # bin 0: (0 -> eps) vs 0.5, bin 1: 0.5 vs (0 -> eps)
    expected = 2 * (0.5 - EPS) * np.log(0.5 / EPS)
    assert stats.psi(ref, cur, EPS) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(stats.psi(ref, np.zeros(3), EPS))
    assert np.isnan(stats.js_distance(np.zeros(3), cur))
    assert stats.js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


def test_severity_levels():
    ref, _ = sample("same")
    profile = profile_stream("x", ref, False, 10, 100)
    t = DriftThresholds()
    rng = np.random.default_rng(5)
    same = judge(profile, bin_counts(rng.standard_normal(2000), profile.edges, False)[0], 0, t, EPS)
    assert same.severity == NONE and not any(same.votes.values())
    far = judge(profile, bin_counts(rng.standard_normal(2000) + 3, profile.edges, False)[0], 0, t, EPS)
    assert far.severity == CRITICAL and far.votes == {"psi": CRITICAL, "jsd": CRITICAL, "ks": CRITICAL}
    # A shift between the PSI warning and critical levels.
    mild = judge(profile, bin_counts(rng.standard_normal(20000) + 0.35, profile.edges, False)[0], 0, t, EPS)
    assert 0.1 <= mild.statistics["psi"] < 0.2 and mild.votes["psi"] == WARNING
    off = DriftThresholds(psi={"warning": None, "critical": None}, jsd={"warning": None}, ks={"warning": None})
    assert judge(profile, bin_counts(rng.standard_normal(2000) + 3, profile.edges, False)[0], 0, off, EPS).severity == NONE
