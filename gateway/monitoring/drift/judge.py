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
    s: dict[str, float] = {
        "psi": stats.psi(ref.counts, counts, epsilon),
        "jsd": stats.js_distance(ref.counts, counts),
    }
    votes = {"psi": _upper(s["psi"], thresholds.psi), "jsd": _upper(s["jsd"], thresholds.jsd)}
    n = int(counts.sum())
    if ref.categorical:
        s["chi2"], s["chi2_pvalue"] = stats.chi2_homogeneity(ref.counts, counts)
        votes["chi2_pvalue"] = _pvalue(s["chi2_pvalue"], thresholds.chi2_pvalue)
    else:
        s["ks"] = stats.ks_binned(ref.counts, counts)
        s["ks_pvalue"] = stats.ks_pvalue(s["ks"], ref.rows, n)
        significant = not math.isnan(s["ks_pvalue"]) and s["ks_pvalue"] < thresholds.ks_alpha
        votes["ks"] = _upper(s["ks"], thresholds.ks) if significant else NONE
    return StreamResult(ref.name, ref.categorical, n, missing, s, votes)
