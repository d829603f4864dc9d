"""One stream's statistics for a closed window, and its severity under the thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gateway.core.drift_config import DriftThresholds, PValueThresholds, UpperThresholds
from gateway.monitoring.drift import stats
from gateway.monitoring.drift.profile import StreamProfile

NONE, WARNING, CRITICAL = 0, 1, 2
SEVERITY_NAMES = ("none", "warning", "critical")


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: str
    categorical: bool
    rows: int  # values counted (missing excluded)
    missing: int
    statistics: dict[str, float]
    # statistic -> severity it calls for (only statistics with thresholds vote)
    votes: dict[str, int] = field(default_factory=dict)

    @property
    def severity(self) -> int:
        return max(self.votes.values(), default=NONE)


def _upper(value: float, t: UpperThresholds) -> int:
    if math.isnan(value):
        return NONE
    if t.critical is not None and value >= t.critical:
        return CRITICAL
    if t.warning is not None and value >= t.warning:
        return WARNING
    return NONE


def _pvalue(p: float, t: PValueThresholds) -> int:
    if math.isnan(p):
        return NONE
    if t.critical is not None and p <= t.critical:
        return CRITICAL
    if t.warning is not None and p <= t.warning:
        return WARNING
    return NONE


def judge(ref: StreamProfile, counts: np.ndarray, missing: int, thresholds: DriftThresholds, epsilon: float) -> StreamResult:
    """Statistics of a window's ``counts`` (same bins as ``ref``) and the severity each calls for."""
    return judge_group([ref], ref.counts[None, :], counts[None, :], [missing], thresholds, epsilon)[0]


def judge_group(
    refs: list[StreamProfile],
    ref_counts: np.ndarray,
    counts: np.ndarray,
    missing,
    thresholds: DriftThresholds,
    epsilon: float,
) -> list[StreamResult]:
    """``judge`` for a stack of streams at once: row i of ``ref_counts``/``counts`` is stream i's
    histogram, zero-padded to a common width (padding adds nothing to any statistic)."""
    psi = stats.psi(ref_counts, counts, epsilon)
    jsd = stats.js_distance(ref_counts, counts)
    ks = stats.ks_binned(ref_counts, counts)
    rows = counts.sum(axis=1)
    ref_rows = ref_counts.sum(axis=1)
    out = []
    for i, ref in enumerate(refs):
        s: dict[str, float] = {"psi": float(psi[i]), "jsd": float(jsd[i])}
        votes = {"psi": _upper(s["psi"], thresholds.psi), "jsd": _upper(s["jsd"], thresholds.jsd)}
        n = int(rows[i])
        if ref.categorical:
            width = len(ref.counts)
            s["chi2"], s["chi2_pvalue"] = stats.chi2_homogeneity(ref.counts, counts[i, :width])
            votes["chi2_pvalue"] = _pvalue(s["chi2_pvalue"], thresholds.chi2_pvalue)
        else:
            s["ks"] = float(ks[i])
            s["ks_pvalue"] = stats.ks_pvalue(s["ks"], int(ref_rows[i]), n)
            significant = not math.isnan(s["ks_pvalue"]) and s["ks_pvalue"] < thresholds.ks_alpha
            votes["ks"] = _upper(s["ks"], thresholds.ks) if significant else NONE
        out.append(StreamResult(ref.name, ref.categorical, n, int(missing[i]), s, votes))
    return out
