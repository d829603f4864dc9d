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


def _gw(rows, model, c, protocol="grpc", workers=1, window="adaptive"):
    """The gateway's row; window None: batching off."""
    found = _ok(rows, model=model, system="gateway", protocol=protocol, workers=workers, concurrency=c)
    found = [r for r in found if r.get("window", "adaptive" if r.get("batching") else None) == window]
    return found[0] if found else None


def _per_core(row: dict) -> float | None:
    cores = row.get("server_cpu_cores")
    return row["infer_per_s"] / cores if cores else None


# gRPC unary as each tool drives it: h2load (16 connections) and perf_analyzer (its own channel).
UNARY = (("grpc", "h2load"), ("pa-grpc", "perf_analyzer"))


def ratios(rows: list[dict]) -> list[dict]:
    """Issue 21's targets, each from rows of this run (a target whose rows are missing is left out)."""
    out: list[dict] = []

    def add(what, model, c, value, target, higher_is_better=True, detail=""):
        if value is None:
            return
        if target is None:
            met = None
        else:
            met = value >= target if higher_is_better else value <= target
        out.append({"what": what, "model": model, "concurrency": c, "value": value,
                    "target": "–" if target is None else f"{'≥' if higher_is_better else '≤'} {target:g}",
                    "met": met, "detail": detail})

    concurrencies = sorted({r["concurrency"] for r in rows if isinstance(r.get("concurrency"), int)})
    fastapi = lambda model, c: _best(_ok(rows, model=model, system="fastapi", concurrency=c))  # noqa: E731

    # Low load by default (mlp): the adaptive window against raw ORT, FastAPI and the best fixed window.
    raw1 = _ok(rows, model="mlp", system="onnxruntime", threads=1, batch=1)
    for protocol, tool in UNARY:
        gw1 = _gw(rows, "mlp", 1, protocol)
        if raw1 and gw1 and gw1.get("p50_ms") is not None:
            add(f"p50 gateway gRPC ({tool}, default batching) − raw ORT batch 1, ms", "mlp", 1,
                gw1["p50_ms"] - raw1[0]["p50_ms"], 0.15, higher_is_better=False)
        for c in (x for x in concurrencies if x <= 8):
            gw, naive = _gw(rows, "mlp", c, protocol), fastapi("mlp", c)
            if gw and naive:
                add(f"gateway gRPC ({tool}, default batching) ÷ naive FastAPI", "mlp", c,
                    gw["infer_per_s"] / naive["infer_per_s"], 2.0)
        for c in (x for x in concurrencies if x >= 32):
            adaptive, fixed = _gw(rows, "mlp", c, protocol), _gw(rows, "mlp", c, protocol, window="fixed")
            if adaptive and fixed:
                add(f"adaptive ÷ fixed window, gRPC ({tool}), 1 worker", "mlp", c,
                    adaptive["infer_per_s"] / fixed["infer_per_s"], 0.95)

    # Compute-bound: cnn against raw ORT's best batch at equal cores, and against PyTriton.
    # Equal cores: the raw loop's threads are the gateway's workers times its intra-op threads.
    for workers in (1, 2):
        for c in (x for x in concurrencies if x >= 32):
            for protocol, tool in UNARY:
                gw = _gw(rows, "cnn", c, protocol, workers=workers)
                threads = workers * (gw.get("threads") or 1) if gw else 0
                raw = _best(_ok(rows, model="cnn", system="onnxruntime", threads=threads))
                if gw and raw:
                    add(f"gRPC ({tool}), {workers} worker(s) × {gw.get('threads') or 1} intra-op thread(s) ÷ raw ORT best "
                        f"({threads} thread(s), batch {raw['batch']})", "cnn", c, gw["infer_per_s"] / raw["infer_per_s"], 0.9)
    for c in (x for x in concurrencies if x >= 32):
        for protocol, tool in UNARY:
            gw = _gw(rows, "cnn", c, protocol)
            triton = _best(_ok(rows, model="cnn", system="pytriton", concurrency=c, protocol=protocol))
            if gw and triton:
                add(f"gRPC ({tool}), 1 worker ÷ PyTriton", "cnn", c, gw["infer_per_s"] / triton["infer_per_s"], 2.0)

    # Workers scale, never below one worker.
    for model in sorted({r["model"] for r in rows}):
        for c in concurrencies:
            for protocol, tool in UNARY:
                one, two = _gw(rows, model, c, protocol), _gw(rows, model, c, protocol, workers=2)
                if one and two:
                    target = 1.8 if (model, c) == ("mlp", 128) else 1.0
                    add(f"2 workers ÷ 1 worker, gRPC ({tool})", model, c, two["infer_per_s"] / one["infer_per_s"], target)

    # ModelStreamInfer against unary, where perf_analyzer holds real bidirectional streams.
    for c in (x for x in concurrencies if x == 32):
        unary, stream = _gw(rows, "mlp", c, "pa-grpc"), _gw(rows, "mlp", c, "pa-grpc-stream")
        if unary and stream:
            add("ModelStreamInfer ÷ unary (perf_analyzer, 1 worker)", "mlp", c, stream["infer_per_s"] / unary["infer_per_s"], 1.3)

    # The protocol ceiling: a C HTTP/2 server answering a fixed body, per server core.
    for c in concurrencies:
        ceiling = _best(_ok(rows, model="mlp", system="nghttpd", concurrency=c))
        gw = _gw(rows, "mlp", c)
        if ceiling and gw and _per_core(ceiling) and _per_core(gw):
            add("gateway gRPC unary ÷ nghttpd fixed answer, per server core (h2load)", "mlp", c,
                _per_core(gw) / _per_core(ceiling), None, detail="the ceiling: no target this round")
    return out


def ratios_markdown(items: list[dict]) -> str:
    if not items:
        return "_No target ratio could be computed from this run's rows._"
    lines = ["| model | c | ratio | value | target | met | |", "|---|---:|---|---:|---|---|---|"]
    for r in items:
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['what']} | {r['value']:.2f} | {r['target']} | "
                     f"{'–' if r['met'] is None else 'yes' if r['met'] else '**no**'} | {r['detail']} |")
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
    parts += ["## Targets of issue 21 (ratios from this run)", "", ratios_markdown(doc["ratios"]), ""]
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
