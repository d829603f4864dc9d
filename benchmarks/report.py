"""The run's results as a console/Markdown table, JSON, and the issue's target ratios."""

from __future__ import annotations

import json
import os
from typing import Iterable

COLUMNS = [
    ("system", "label"), ("protocol", "protocol"), ("config", "config"), ("c", "concurrency"),
    ("infer/s", "infer_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
    ("server CPU cores", "server_cpu_cores"), ("server CPU ms/infer", "server_cpu_ms_per_infer"),
    ("mean batch", "mean_batch"), ("generator CPU cores", "gen_cpu_cores"), ("errors", "errors"), ("note", "note"),
]


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "infer_per_s":
        return f"{value:,.0f}"
    if key in ("p50_ms", "p99_ms", "server_cpu_ms_per_infer"):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if key in ("server_cpu_cores", "gen_cpu_cores", "mean_batch"):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "|".join("---:" if k not in ("label", "protocol", "config", "note") else "---" for _, k in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


# --- the targets, as ratios of rows of this run ----------------------------------------


def _ok(rows: Iterable[dict], **match) -> list[dict]:
    return [r for r in rows if r.get("infer_per_s") and all(r.get(k) == v for k, v in match.items())]


def _best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["infer_per_s"]) if rows else None


def _gw(rows, model, c, protocol="grpc", workers=1, batching=True):
    found = _ok(rows, model=model, system="gateway", protocol=protocol, workers=workers, batching=batching, concurrency=c)
    return found[0] if found else None


def ratios(rows: list[dict]) -> list[dict]:
    peers = [r for r in rows if r["system"] in ("mlserver", "pytriton", "fastapi")]
    out: list[dict] = []

    def add(what, model, c, value, target, higher_is_better=True, detail=""):
        if value is None:
            return
        met = value >= target if higher_is_better else value <= target
        out.append({"what": what, "model": model, "concurrency": c, "value": value,
                    "target": f"{'≥' if higher_is_better else '≤'} {target:g}", "met": met, "detail": detail})

    concurrencies = sorted({r["concurrency"] for r in rows if isinstance(r.get("concurrency"), int)})
    for c in concurrencies:
        best_peer = _best(_ok(peers, model="mlp", concurrency=c))
        for workers, target in ((1, 2.5), (2, 4.0)):
            gw = _gw(rows, "mlp", c, workers=workers)
            if gw and best_peer and c > 1:
                add(f"gRPC unary, {workers} worker(s) ÷ best peer", "mlp", c, gw["infer_per_s"] / best_peer["infer_per_s"],
                    target, detail=f"best peer: {best_peer['label']} {best_peer['protocol']} ({best_peer['config']})")
        unary, stream = _gw(rows, "mlp", c), _gw(rows, "mlp", c, protocol="grpc-stream")
        if unary and stream and c > 1:
            add("ModelStreamInfer ÷ unary (1 worker)", "mlp", c, stream["infer_per_s"] / unary["infer_per_s"], 1.5)
    if concurrencies:
        top = _gw(rows, "mlp", concurrencies[-1])
        if top and top.get("server_cpu_ms_per_infer") is not None:
            add("server CPU ms per inference at the top concurrency (gRPC unary, 1 worker)", "mlp", concurrencies[-1],
                top["server_cpu_ms_per_infer"], 0.25, higher_is_better=False)

    for threads, workers in ((1, 1), (2, 2)):
        raw = _best(_ok(rows, model="cnn", system="onnxruntime", threads=threads))
        for c in (x for x in concurrencies if x >= 32):
            gw = _gw(rows, "cnn", c, workers=workers)
            if gw and raw:
                add(f"gRPC unary, {workers} worker(s) ÷ raw ORT best ({threads} thread(s), batch {raw['batch']})",
                    "cnn", c, gw["infer_per_s"] / raw["infer_per_s"], 0.85)
    for c in (x for x in concurrencies if x >= 32):
        gw, triton = _gw(rows, "cnn", c), _best(_ok(rows, model="cnn", system="pytriton", concurrency=c))
        if gw and triton:
            add("gRPC unary, 1 worker ÷ PyTriton", "cnn", c, gw["infer_per_s"] / triton["infer_per_s"], 1.8,
                detail=f"PyTriton {triton['protocol']}")

    raw1 = _ok(rows, model="mlp", system="onnxruntime", threads=1, batch=1)
    gw1 = _gw(rows, "mlp", 1)
    if raw1 and gw1 and gw1.get("p50_ms") is not None:
        add("p50 gateway gRPC (batching on) − raw ORT batch 1, ms", "mlp", 1, gw1["p50_ms"] - raw1[0]["p50_ms"], 0.25,
            higher_is_better=False)

    for model in sorted({r["model"] for r in rows}):
        for c in concurrencies:
            gw = _gw(rows, model, c, protocol="http-binary")
            naive = _best(_ok(rows, model=model, system="fastapi", concurrency=c))
            if gw and naive:
                add("HTTP binary (1 worker) ÷ naive FastAPI", model, c, gw["infer_per_s"] / naive["infer_per_s"], 2.0)
    return out


def ratios_markdown(items: list[dict]) -> str:
    if not items:
        return "_No target ratio could be computed from this run's rows._"
    lines = ["| model | c | ratio | value | target | met | |", "|---|---:|---|---:|---|---|---|"]
    for r in items:
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['what']} | {r['value']:.2f} | {r['target']} | "
                     f"{'yes' if r['met'] else '**no**'} | {r['detail']} |")
    return "\n".join(lines)


# --- files ------------------------------------------------------------------------------------


def noise_warnings(doc: dict) -> list[str]:
    """Signs that other work shared the cores during the run (the numbers then mislead)."""
    out = []
    m = doc["machine"]
    busiest = max(m["load_average_at_start"][0], m.get("load_average_at_end", (0.0,))[0])
    if busiest > 0.5 * m["cores_usable"]:
        out.append(f"load average reached {busiest:.2f} on {m['cores_usable']} cores: other processes were running")
    loops = [r for r in doc["rows"] if r["system"] == "onnxruntime" and r["threads"] == 1]
    starved = min(loops, key=lambda r: r["server_cpu_cores"], default=None)
    if starved and starved["server_cpu_cores"] < 0.9:
        out.append(f"the 1-thread raw onnxruntime loop ({starved['model']}, batch {starved['batch']}) got only "
                   f"{starved['server_cpu_cores']:.2f} of a core")
    return out


def render_markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    parts = [
        "# Benchmark results",
        "",
        f"Command: `{doc['command']}`  ",
        f"Started {doc['started_at']}, took {doc['duration_s']:.0f} s.",
        "",
        f"**Machine**: {doc['machine_line']}; load average at end {m['load_average_at_end'][0]:.2f}.  ",
        f"**Generators**: {m['tools'].get('h2load')} (gRPC over HTTP/2), {m['tools'].get('wrk')} (HTTP/1.1); "
        "their own CPU is the 'generator CPU cores' column.  ",
        f"**Peers**: " + ("; ".join(f"{k}: " + ", ".join(f"{d} {v}" for d, v in vs.items()) for k, vs in doc["peer_versions"].items())
                          or "none run") + ".",
        "",
        f"Load: batch-1 requests, standard-normal inputs (fixed seed), {s['seconds']:g} s per point after "
        f"{s['warmup_s']:g} s of warm-up; server CPU is user+system time of the server's whole process tree "
        f"(/proc) over the point. Batching (where on): at most {s['max_batch']} rows, partial batches held at most "
        f"{s['max_delay_us']} µs; onnxruntime {s['intra_op_threads']} intra-op thread(s) per session in every server. "
        "gRPC via h2load with a pre-encoded ModelInferRequest (latency from its per-request log); HTTP via wrk "
        "(one request in flight per connection). "
        f"ModelStreamInfer: each h2load request is one stream call carrying up to {s['stream_messages']} requests "
        "(h2load cannot keep a bidirectional stream open), so its p50/p99 are per call, i.e. until the last answer "
        "of the call." + (
            " Protocols `pa-*`: Triton's perf_analyzer (C++ client, async, batch 1, real N(0,1) rows as input "
            "data, concurrency = requests in flight; `pa-grpc-stream` keeps one bidirectional stream per "
            "concurrent context; three windows of a third of the point each, averaged by perf_analyzer)."
            if s.get("perf_analyzer") else ""),
        "",
    ]
    warnings = noise_warnings(doc)
    if warnings:
        parts += ["> **Noisy run**: " + "; ".join(warnings) + ". Compare nothing across runs, and trust the ratios "
                  "below only from a quiet machine.", ""]
    if doc["unavailable"]:
        parts += ["## Could not run", ""]
        parts += [f"- **{u['label']}** ({u['config']}): {u['reason']}" for u in doc["unavailable"]]
        parts.append("")
    for model in doc["models"]:
        parts += [f"## {model}", "", markdown_table([r for r in doc["rows"] if r["model"] == model]), ""]
    parts += ["## Targets of issue 11 (ratios from this run)", "", ratios_markdown(doc["ratios"]), ""]
    if doc.get("plot"):
        parts += [f"![throughput vs p99]({os.path.basename(doc['plot'])})", ""]
    return "\n".join(parts)


def write(out_dir: str, doc: dict, stem: str = "latest") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")
    with open(json_path, "w") as fh:
        json.dump(doc, fh, indent=1)
    with open(md_path, "w") as fh:
        fh.write(render_markdown(doc))
    return md_path, json_path
