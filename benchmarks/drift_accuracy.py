"""The drift statistics next to numpy and scipy on the same data (needs the test extra: scipy).

    .venv/bin/python benchmarks/drift_accuracy.py [--bins 10] [--reference 5000] [--window 1000]

Reference and window samples per scenario; ours goes through the profile and the
native histogram routine exactly as served traffic does. PSI is compared with a
direct numpy computation on the same bins (epsilon 1e-4 for empty bins), JSD with
scipy.spatial.distance.jensenshannon (base 2) on the same bins, KS with
scipy.stats.ks_2samp on the raw samples (ours is binned: the bound is the largest
proportion either sample has in one bin), chi-square with scipy.stats.chi2_contingency.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.spatial.distance
import scipy.stats

from gateway.monitoring.drift import stats
from gateway.monitoring.drift.profile import bin_counts, profile_stream

EPS = 1e-4
SCENARIOS = {
    "same N(0,1)": lambda r, n: r.standard_normal(n),
    "shift +0.1 sd": lambda r, n: r.standard_normal(n) + 0.1,
    "shift +0.5 sd": lambda r, n: r.standard_normal(n) + 0.5,
    "shift +3 sd": lambda r, n: r.standard_normal(n) + 3,
    "scale x2": lambda r, n: 2 * r.standard_normal(n),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--reference", type=int, default=5000)
    ap.add_argument("--window", type=int, default=1000)
    args = ap.parse_args()
    print(f"reference {args.reference} rows, window {args.window} rows, {args.bins} quantile bins + 2 open outer bins\n")
    print("| scenario | PSI ours | PSI numpy | JSD ours | JSD scipy | KS ours (binned) | KS scipy (exact) | "
          "gap | bound | KS p ours (exact D) | KS p scipy (asymp) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (name, fn) in enumerate(SCENARIOS.items()):
        rng = np.random.default_rng(i)
        ref, cur = rng.standard_normal(args.reference), fn(rng, args.window)
        prof = profile_stream("x", ref, False, args.bins, 100)
        cc, _ = bin_counts(cur, prof.edges, False)
        rc = np.bincount(np.searchsorted(prof.edges, ref, side="right"), minlength=len(prof.edges) + 1)
        ccn = np.bincount(np.searchsorted(prof.edges, cur, side="right"), minlength=len(prof.edges) + 1)
        p, q = rc / rc.sum(), ccn / ccn.sum()
        p, q = np.where(p == 0, EPS, p), np.where(q == 0, EPS, q)
        psi_np = float(((q - p) * np.log(q / p)).sum())
        jsd_sp = float(scipy.spatial.distance.jensenshannon(rc, ccn, base=2))
        ks_ours = stats.ks_binned(prof.counts, cc)
        exact = scipy.stats.ks_2samp(ref, cur)
        asymp = scipy.stats.ks_2samp(ref, cur, method="asymp")
        bound = max((prof.counts / prof.counts.sum()).max(), (cc / cc.sum()).max())
        print(f"| {name} | {stats.psi(prof.counts, cc, EPS):.6f} | {psi_np:.6f} | {stats.js_distance(prof.counts, cc):.6f} | "
              f"{jsd_sp:.6f} | {ks_ours:.4f} | {exact.statistic:.4f} | {exact.statistic - ks_ours:.4f} | {bound:.4f} | "
              f"{stats.ks_pvalue(exact.statistic, len(ref), len(cur)):.4g} | {asymp.pvalue:.4g} |")
    print("\nchi-square (categorical, codes 1,2,3,7 in the reference; the window adds an unseen 9):\n")
    print("| window | chi2 ours | chi2 scipy | p ours | p scipy |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(99)
    ref = rng.choice([1, 2, 3, 7], size=args.reference, p=[0.4, 0.3, 0.2, 0.1]).astype(float)
    prof = profile_stream("c", ref, True, args.bins, 100)
    for name, probs in (("same mix", [0.4, 0.3, 0.2, 0.1, 0.0]), ("shifted mix", [0.3, 0.3, 0.2, 0.15, 0.05])):
        cur = rng.choice([1, 2, 3, 7, 9], size=args.window, p=probs).astype(float)
        cc, _ = bin_counts(cur, prof.edges, True)
        chi2, pv = stats.chi2_homogeneity(prof.counts, cc)
        table = np.vstack([prof.counts, cc])
        ref_res = scipy.stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
        print(f"| {name} | {chi2:.6f} | {ref_res.statistic:.6f} | {pv:.6g} | {ref_res.pvalue:.6g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
