"""Throughput vs p99 latency, one panel per model, one line per system/protocol/config.

    <python with matplotlib> benchmarks/plot.py results.json out.png

run.py calls this with the python of a cached venv that has matplotlib
(requirements-plot.txt), so matplotlib never becomes a dependency of the gateway.
Raw onnxruntime is drawn as vertical lines: its batch-1 and best-batch throughput.
"""

from __future__ import annotations

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# one hue per system, one shade per configuration of it; line style and marker per protocol
PALETTES = {
    "gateway": ["#08306b", "#2171b5", "#6baed6", "#9ecae1"],
    "mlserver": ["#a63603", "#fd8d3c"],
    "pytriton": ["#006d2c", "#41ab5d"],
    "fastapi": ["#cb181d", "#fb6a4a"],
}
STYLES = {"grpc": ("o", "-"), "grpc-stream": ("D", "-."), "http-binary": ("s", "--"), "http-json": ("^", ":")}


def main(src: str, dst: str) -> None:
    with open(src) as fh:
        doc = json.load(fh)
    models = doc["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(8 * len(models), 9), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in doc["rows"] if r["model"] == model and r.get("infer_per_s") and r.get("p99_ms")]
        series: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["system"] != "onnxruntime":
                series.setdefault((r["system"], r["label"], r["protocol"], r["config"]), []).append(r)
        shades: dict[tuple, str] = {}
        for (system, label, protocol, config), pts in series.items():
            pts.sort(key=lambda r: r["concurrency"])
            palette = PALETTES.get(system, ["tab:gray"])
            color = shades.setdefault((system, config), palette[sum(k[0] == system for k in shades) % len(palette)])
            marker, linestyle = STYLES.get(protocol, ("o", "-"))
            ax.plot([p["infer_per_s"] for p in pts], [p["p99_ms"] for p in pts], marker=marker, color=color,
                    linestyle=linestyle, label=f"{label} {protocol} ({config})", alpha=0.85)
            for p in pts:
                ax.annotate(f"c{p['concurrency']}", (p["infer_per_s"], p["p99_ms"]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        for r in rows:
            if r["system"] == "onnxruntime" and (r["batch"] == 1 or r.get("best")):
                ax.axvline(r["infer_per_s"], color="black", alpha=0.3 if r["batch"] == 1 else 0.6,
                           linestyle=":" if r["threads"] == 1 else "-.", linewidth=1)
                ax.annotate(f"raw ORT {r['threads']}t b{r['batch']}", (r["infer_per_s"], 0.98),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="top")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("inferences / s (log)")
        ax.set_ylabel("p99 latency, ms (log)")
        ax.set_title(f"{model}: throughput vs p99 (batch-1 requests, c = concurrency)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.suptitle("\n".join(textwrap.wrap(doc.get("machine_line", ""), 160)), fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
