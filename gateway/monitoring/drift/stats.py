"""Two-sample drift statistics on binned counts (reference vs. current window).

Every function takes the two histograms over the same bins as counts (PSI, JSD and
KS also a stack of histograms, one per row, to judge many streams in one numpy
pass). Proportions are counts over their total; NaN comes back where a side is empty. Only PSI needs
an epsilon (a log ratio with an empty bin is infinite): zero proportions are
replaced by it, without renormalising, as Evidently does.
"""

from __future__ import annotations

import math

import numpy as np

_NAN = float("nan")


def proportions(counts: np.ndarray) -> np.ndarray:
    """Counts over their total along the last axis; NaN rows where the total is 0."""
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / total


def _result(values: np.ndarray, ref: np.ndarray, cur: np.ndarray):
    """NaN where either side is empty; a float for one histogram, an array for a stack of them."""
    values = np.where((ref.sum(axis=-1) > 0) & (cur.sum(axis=-1) > 0), values, np.nan)
    return float(values) if values.ndim == 0 else values


def psi(ref: np.ndarray, cur: np.ndarray, epsilon: float):
    """Population stability index: sum over bins of (q - p) * ln(q / p).

    Histograms are along the last axis (one, or a stack of streams at once).
    """
    p, q = proportions(ref), proportions(cur)
    p = np.where(p > 0, p, epsilon)
    q = np.where(q > 0, q, epsilon)
    return _result(np.sum((q - p) * np.log(q / p), axis=-1), ref, cur)


def js_distance(ref: np.ndarray, cur: np.ndarray):
    """Jensen-Shannon distance, base 2 (0 = same, 1 = disjoint): the square root of the divergence."""
    p, q = proportions(ref), proportions(cur)
    m = (p + q) / 2
    div = 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m)
    return _result(np.sqrt(np.maximum(div, 0.0)), ref, cur)


def _kl_bits(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0)  # 0 * log 0 = 0; m > 0 wherever p > 0
    return terms.sum(axis=-1)


def ks_binned(ref: np.ndarray, cur: np.ndarray):
    """Largest gap between the two empirical CDFs at the bin edges.

    At most the exact two-sample KS statistic, and short of it by at most the largest
    mass either sample puts in one bin (the CDFs can only move apart inside a bin by
    what that bin holds).
    """
    p, q = proportions(ref), proportions(cur)
    if p.shape[-1] < 2:
        return _result(np.zeros(p.shape[:-1]), ref, cur)
    gap = np.abs(np.cumsum(p, axis=-1)[..., :-1] - np.cumsum(q, axis=-1)[..., :-1])
    return _result(gap.max(axis=-1), ref, cur)


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS distance ``d`` between samples of n and m.

    Kolmogorov's limiting distribution at sqrt(n m / (n + m)) * d, with Stephens's
    small-sample correction of the argument.
    """
    if math.isnan(d) or n <= 0 or m <= 0:
        return _NAN
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution K."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # The CDF's theta-function form converges fast for small x.
        t = math.exp(-(math.pi**2) / (8 * x * x))
        cdf = math.sqrt(2 * math.pi) / x * (t + t**9 + t**25 + t**49)
        return min(1.0, max(0.0, 1.0 - cdf))
    t = math.exp(-2 * x * x)
    return min(1.0, max(0.0, 2 * (t - t**4 + t**9 - t**16)))


def chi2_homogeneity(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Pearson chi-square of the 2 x K table (reference counts, window counts) and its p-value.

    Categories neither side has are left out; degrees of freedom = categories kept - 1.
    """
    if ref.sum() <= 0 or cur.sum() <= 0:
        return _NAN, _NAN
    keep = (ref + cur) > 0
    table = np.vstack([ref[keep], cur[keep]]).astype(np.float64)
    dof = table.shape[1] - 1
    if dof < 1:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return stat, chi2_sf(stat, dof)


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-square variable with ``dof`` degrees of freedom."""
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x): series below a + 1, continued fraction above."""
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Lentz's method on the continued fraction of Q.
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)
