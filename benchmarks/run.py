"""Side-by-side benchmark: raw onnxruntime, the gateway, MLServer, Triton (PyTriton), naive FastAPI.

    .venv/bin/python benchmarks/run.py            # the full matrix (about 20 minutes)
    .venv/bin/python benchmarks/run.py --quick    # mlp, one concurrency, gateway + raw ORT only

One run generates the mlp and cnn models (fixed seeds), measures raw onnxruntime in a tight
loop, then starts each server in turn (peers in virtual environments of their own, made once
and cached under ~/.cache/gateway-bench), checks one answer of every request body against
raw onnxruntime, and loads it with compiled generators: h2load for gRPC, wrk for HTTP.
It prints a table per model and writes <out-dir>/latest.md, latest.json and latest.png.
A system that cannot start here gets a line saying why; the run goes on without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxruntime  # noqa: E402

from benchmarks import loadgen, machine, payloads, raw_ort, report, systems, venvs  # noqa: E402
from benchmarks.models import SPECS, write_models  # noqa: E402
from benchmarks.servers import StartError  # noqa: E402

PEERS = ("mlserver", "pytriton", "fastapi")
# nghttpd answers a fixed body without inference: the HTTP/2 protocol's ceiling on this machine.
ALL_SYSTEMS = ("onnxruntime", "gateway", *PEERS, "nghttpd")
GATEWAY_PROTOCOLS = ("grpc", "grpc-stream", "http-binary")
# perf_analyzer's modes, per system that speaks KServe v2 (--perf-analyzer).
PERF_ANALYZER_PROTOCOLS = {
    "gateway": ("pa-grpc", "pa-grpc-stream", "pa-http"),
    "pytriton": ("pa-grpc", "pa-grpc-stream", "pa-http"),
    "mlserver": ("pa-grpc", "pa-http"),
}


def _csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke setting: mlp, concurrency 8, 2 s points, gateway (1 worker, batching on) + raw ORT")
    ap.add_argument("--models", type=_csv(str), default=None, help="comma list of mlp,cnn (default both)")
    ap.add_argument("--systems", type=_csv(str), default=None,
                    help=f"comma list of {','.join(ALL_SYSTEMS)} (default all)")
    ap.add_argument("--concurrency", type=_csv(int), default=None, help="default 1,8,32,128")
    ap.add_argument("--seconds", type=float, default=None, help="measured seconds per point (default 5)")
    ap.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each point (default 1)")
    ap.add_argument("--raw-seconds", type=float, default=None, help="seconds per raw onnxruntime point (default 2)")
    ap.add_argument("--raw-batches", type=_csv(int), default=None, help="raw ORT batch sizes (default 1,8,32,128)")
    ap.add_argument("--raw-threads", type=_csv(int), default=None, help="raw ORT intra-op threads (default 1,2)")
    ap.add_argument("--gateway-workers", type=_csv(int), default=None, help="default 1,2")
    ap.add_argument("--gateway-batching", type=_csv(str), default=None,
                    help="on (adaptive window, the default config), fixed (Triton's fixed window), off (default on,off)")
    ap.add_argument("--gateway-protocols", type=_csv(str), default=None,
                    help=f"comma list of {','.join(GATEWAY_PROTOCOLS)} (default all)")
    ap.add_argument("--perf-analyzer", action="store_true",
                    help="also load every KServe v2 server with Triton's perf_analyzer (gRPC, gRPC streaming, "
                         "HTTP binary; async, batch 1; fetched by scripts/perf_analyzer.sh)")
    ap.add_argument("--max-batch", type=int, default=32, help="max rows per batch, every batching server")
    ap.add_argument("--max-delay-us", type=int, default=2000, help="longest hold of a partial batch, every server")
    ap.add_argument("--intra-op-threads", type=int, default=1, help="ORT intra-op threads in every server")
    ap.add_argument("--stream-messages", type=int, default=8, help="requests per ModelStreamInfer call")
    ap.add_argument("--h2-connections", type=int, default=16, help="most HTTP/2 connections h2load opens")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--cache-dir", default=venvs.DEFAULT_CACHE, help="where peer venvs are kept between runs")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (and the matplotlib venv)")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "models": ["mlp"] if quick else ["mlp", "cnn"],
        "systems": ["onnxruntime", "gateway"] if quick else list(ALL_SYSTEMS),
        "concurrency": [8] if quick else [1, 8, 32, 128],
        "seconds": 2.0 if quick else 5.0,
        "warmup_s": 1.0,
        "raw_seconds": 1.0 if quick else 2.0,
        "raw_batches": [1, 32] if quick else [1, 8, 32, 128],
        "raw_threads": [1] if quick else [1, 2],
        "gateway_workers": [1] if quick else [1, 2],
        "gateway_batching": ["on"] if quick else ["on", "off"],
        "gateway_protocols": list(GATEWAY_PROTOCOLS),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name, allowed in (("models", SPECS), ("systems", ALL_SYSTEMS), ("gateway_protocols", GATEWAY_PROTOCOLS),
                          ("gateway_batching", tuple(systems.GATEWAY_BATCHING))):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            ap.error(f"--{name.replace('_', '-')}: unknown {bad}; choose from {', '.join(allowed)}")
    return args


def server_configs(args) -> list[systems.SystemConfig]:
    out: list[systems.SystemConfig] = []
    if "gateway" in args.systems:
        out += systems.gateway_configs(args.gateway_batching, args.gateway_workers,
                                       tuple(args.gateway_protocols), args.max_batch, args.max_delay_us)
    if "mlserver" in args.systems:
        out += systems.mlserver_configs()
    if "pytriton" in args.systems:
        out += systems.pytriton_configs(args.max_batch, args.max_delay_us)
    if "fastapi" in args.systems:
        out += systems.fastapi_configs()
    if "nghttpd" in args.systems:
        out += systems.nghttpd_configs()
    if args.perf_analyzer:
        out = [dataclasses.replace(cfg, protocols=cfg.protocols + PERF_ANALYZER_PROTOCOLS.get(cfg.system, ()))
               for cfg in out]
    return out


def estimate_s(args) -> float:
    points = sum(len(cfg.protocols) for cfg in server_configs(args)) * len(args.models) * len(args.concurrency)
    per_point = args.seconds + args.warmup_s + 1.0  # + the answer check and the generators' start
    raw = len(args.models) * len(args.raw_threads) * len(args.raw_batches) * (args.raw_seconds + 0.5)
    starts = 15.0 * len(server_configs(args))
    return points * per_point + raw + starts


def _log(msg: str) -> None:
    print(msg, flush=True)


def _row_line(r: dict) -> str:
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    what = f"{r['model']:<4} {r['label']:<18} {r['protocol']:<11} c={r['concurrency']!s:<4} {r['config']}"
    if r.get("infer_per_s") is None:
        return f"  {what}: {r.get('note')}"
    return (f"  {what}: {f(r['infer_per_s'], ',.0f')} infer/s, p50 {f(r['p50_ms'], '.3f')} ms, "
            f"p99 {f(r['p99_ms'], '.3f')} ms, server {f(r['server_cpu_cores'], '.2f')} cores "
            f"({f(r['server_cpu_ms_per_infer'], '.3f')} ms/infer), generator {f(r['gen_cpu_cores'], '.2f')} cores"
            + (f", errors {r['errors']}" if r.get("errors") else "") + (f" [{r['note']}]" if r.get("note") else ""))


def run_raw(args, models) -> list[dict]:
    rows = []
    for m in models.values():
        for threads in args.raw_threads:
            found = []
            for batch in args.raw_batches:
                res = raw_ort.measure(m, threads, batch, args.raw_seconds)
                row = {"model": m.name, "system": "onnxruntime", "label": "raw onnxruntime", "protocol": "in-process",
                       "config": f"{threads} thread{'s' if threads > 1 else ''}, batch {batch}",
                       "batching": batch > 1, "workers": 1, "threads": threads, "concurrency": "–", "batch": batch,
                       "mean_batch": float(batch), "gen_cpu_cores": None, "errors": 0,
                       "note": "tight loop, no server", **res}
                found.append(row)
                _log(_row_line(row))
            best = max(found, key=lambda r: r["infer_per_s"])
            best["best"] = True
            best["note"] = "tight loop, no server; best batch"
            rows += found
    return rows


def _perf_analyzer_go(run: systems.Running, batching: bool, m, protocol: str, c: int, args, expected, x):
    """The measuring call of one perf_analyzer point (the server's answer checked first, over gRPC).
    Without batching a model has max_batch_size 0, so perf_analyzer wants the batch axis in its data."""
    if args.pa_binary is None:
        raise loadgen.LoadError(args.pa_unavailable)
    if run.grpc_port is not None:
        payloads.check_grpc(f"127.0.0.1:{run.grpc_port}", payloads.grpc_unary(m.name, x), expected)
    http = protocol == "pa-http"
    url = f"127.0.0.1:{run.http_port if http else run.grpc_port}"
    data = args.pa_inputs[m.name, batching]

    def go(seconds):
        return loadgen.perf_analyzer(args.pa_binary, url, "http" if http else "grpc", m.name, c, seconds, data,
                                     streaming=protocol == "pa-grpc-stream")
    return go


def _point(run: systems.Running, cfg: systems.SystemConfig, m, protocol: str, c: int, args,
           expected, x) -> dict:
    perf_analyzer = protocol.startswith("pa-")
    body = payloads.grpc_unary(m.name, x) if perf_analyzer else run.encode(protocol, m, x, c)
    row = {**_row_head(cfg, m.name, protocol, c, args), "p50_ms": None, "p99_ms": None, "server_cpu_cores": None,
           "server_cpu_ms_per_infer": None, "mean_batch": None, "gen_cpu_cores": None, "errors": None, "note": ""}
    if perf_analyzer:
        go = _perf_analyzer_go(run, cfg.batching, m, protocol, c, args, expected, x)
    elif protocol.startswith("grpc"):
        if shutil.which("h2load") is None:
            row["note"] = "h2load not found (apt-get install nghttp2-client)"
            return row
        if run.fixed_answer_bytes is not None:
            response_bytes = run.fixed_answer_bytes[m.name]  # no inference: nothing to check
        else:
            response_bytes = payloads.check_grpc(f"127.0.0.1:{run.grpc_port}", body, expected)
        in_flight = run.in_flight(body, c)

        def go(seconds):
            return loadgen.h2load(run.grpc_port, body, in_flight, seconds, expected_response_bytes=response_bytes,
                                  max_connections=args.h2_connections)
    else:
        if shutil.which("wrk") is None:
            row["note"] = "wrk not found (apt-get install wrk)"
            return row
        payloads.check_http(f"http://127.0.0.1:{run.http_port}", body, expected)

        def go(seconds):
            return loadgen.wrk(run.http_port, body, c, seconds)

    if args.warmup_s > 0:
        go(args.warmup_s)
    counts0 = run.counts(m.name)
    cpu0, t0 = run.server.cpu_by_pid(), time.perf_counter()
    res = go(args.seconds)
    outer_wall, cpu1 = time.perf_counter() - t0, run.server.cpu_by_pid()
    split = machine.cpu_split(cpu0, cpu1)
    cpu = sum(split)
    counts1 = run.counts(m.name)
    row.update({
        "infer_per_s": res.infer_per_s, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
        "server_cpu_cores": cpu / outer_wall, "server_cpu_ms_per_infer": cpu * 1000 / res.inferences if res.inferences else None,
        "gen_cpu_cores": res.gen_cpu_s / outer_wall, "errors": res.errors, "inferences": res.inferences,
        "wall_s": res.wall_s, "server_cpu_s_by_process": split,
    })
    if counts0 and counts1 and counts1[1] > counts0[1]:
        row["mean_batch"] = (counts1[0] - counts0[0]) / (counts1[1] - counts0[1])
    if perf_analyzer:
        row["note"] = "perf_analyzer, async, batch 1" + (", streaming" if protocol == "pa-grpc-stream" else "")
    elif body.inferences > 1:
        row["note"] = f"{body.inferences} requests per stream call; latency per call"
    if not run.server.alive():
        row["note"] = (row["note"] + "; " if row["note"] else "") + "server died during the point"
    return row


def _row_head(cfg: systems.SystemConfig, model: str, protocol: str, c: int, args) -> dict:
    """What names a server point's row (measured or failed); its figures start empty."""
    return {"model": model, "system": cfg.system, "label": cfg.label, "protocol": protocol, "config": cfg.config,
            "batching": cfg.batching, "window": cfg.window, "workers": cfg.workers, "threads": args.intra_op_threads,
            "concurrency": c, "batch": 1, "infer_per_s": None}


def _failure_line(exc: Exception) -> str:
    """The error's first line, and its last when that says more (a tool's own last words)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return text[:400]


def run_servers(args, settings: systems.Settings, inputs: dict, expected: dict, log_dir: str,
                unavailable: list[dict], peer_versions: dict) -> list[dict]:
    rows: list[dict] = []
    for i, cfg in enumerate(server_configs(args)):
        _log(f"\n== {cfg.label}: {cfg.config}")
        log_path = os.path.join(log_dir, f"{i:02d}-{cfg.system}.log")
        try:
            run = cfg.start(settings, log_path)
        except (StartError, venvs.VenvError, OSError, subprocess.SubprocessError) as exc:
            reason = str(exc).strip()
            _log(f"  could not start: {reason}")
            unavailable.append({"system": cfg.system, "label": cfg.label, "config": cfg.config,
                                "reason": reason.splitlines()[0] + (f" (log: {log_path})" if os.path.exists(log_path) else ""),
                                "detail": reason})
            continue
        if run.versions:
            peer_versions[cfg.label] = run.versions
        try:
            for m in settings.models.values():
                for protocol in cfg.protocols:
                    for c in args.concurrency:
                        try:
                            row = _point(run, cfg, m, protocol, c, args, expected[m.name], inputs[m.name])
                        except (payloads.WrongAnswer, loadgen.LoadError, OSError, ValueError) as exc:
                            row = {**_row_head(cfg, m.name, protocol, c, args), "note": f"failed: {_failure_line(exc)}"}
                        rows.append(row)
                        _log(_row_line(row))
                        if not run.server.alive():
                            break
                    if not run.server.alive():
                        break
                if not run.server.alive():
                    _log(f"  server exited ({run.server.proc.returncode}):\n{run.server.log_tail()}")
                    break
        finally:
            run.server.stop()
    return rows


def draw_plot(args, json_path: str, png_path: str) -> str | None:
    try:
        python = venvs.ensure("plot", "requirements-plot.txt", [], args.cache_dir)
    except venvs.VenvError as exc:
        _log(f"no plot: {exc}")
        return None
    res = subprocess.run([python, os.path.join(ROOT, "benchmarks", "plot.py"), json_path, png_path],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        _log(f"no plot: plot.py failed:\n{res.stderr[-1500:]}")
        return None
    return png_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = machine.describe()
    _log(f"machine: {machine.summary_line(info)}")
    missing = [t for t in ("h2load", "wrk") if shutil.which(t) is None]
    if missing:
        _log(f"warning: {', '.join(missing)} not found: those protocols' rows will say so "
             "(apt-get install nghttp2-client wrk)")
    workdir = tempfile.mkdtemp(prefix="gateway-bench-")
    log_dir = os.path.join(args.out_dir, "logs")  # servers' logs outlive the run (git-ignored)
    shutil.rmtree(log_dir, ignore_errors=True)
    os.makedirs(log_dir)
    try:
        models = write_models(os.path.join(workdir, "models"), args.models)
        inputs = {name: m.sample(1) for name, m in models.items()}
        expected = {name: raw_ort.reference_output(m, inputs[name]) for name, m in models.items()}
        settings = systems.Settings(models, workdir, args.cache_dir, args.max_batch, args.max_delay_us,
                                    args.intra_op_threads, args.stream_messages, onnxruntime.__version__)
        args.pa_binary, args.pa_unavailable, args.pa_inputs = None, "", {}
        if args.perf_analyzer:
            try:
                args.pa_binary = loadgen.perf_analyzer_binary()
                args.pa_inputs = {(name, batching): loadgen.perf_analyzer_input(workdir, "INPUT", m.sample(16, seed=1),
                                                                                batch_axis=not batching)
                                  for name, m in models.items() for batching in (True, False)}
            except loadgen.LoadError as exc:
                args.pa_unavailable = str(exc)
                _log(f"warning: {exc}: the perf_analyzer rows will say so")
        _log(f"about {estimate_s(args) / 60:.0f} minutes (more on a first run, which makes the peers' venvs)")
        rows: list[dict] = []
        if "onnxruntime" in args.systems:
            _log("\n== raw onnxruntime (tight loop in this process)")
            rows += run_raw(args, models)
        unavailable: list[dict] = []
        peer_versions: dict = {}
        rows += run_servers(args, settings, inputs, expected, log_dir, unavailable, peer_versions)
        info["load_average_at_end"] = machine.load_average()
        doc = {
            "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *(argv or sys.argv[1:])]),
            "started_at": started_at,
            "duration_s": time.monotonic() - started,
            "machine": info,
            "machine_line": machine.summary_line(info),
            "peer_versions": peer_versions,
            "settings": {k: getattr(args, k) for k in (
                "quick", "models", "systems", "concurrency", "seconds", "warmup_s", "raw_seconds", "raw_batches",
                "raw_threads", "gateway_workers", "gateway_batching", "gateway_protocols", "max_batch",
                "max_delay_us", "intra_op_threads", "stream_messages", "h2_connections", "perf_analyzer")},
            "models": list(models),
            "rows": rows,
            "unavailable": unavailable,
            "ratios": report.ratios(rows),
            "plot": None,
        }
        md_path, json_path = report.write(args.out_dir, doc)
        if not args.no_plot:
            doc["plot"] = draw_plot(args, json_path, os.path.join(args.out_dir, "latest.png"))
            doc["duration_s"] = time.monotonic() - started
            md_path, json_path = report.write(args.out_dir, doc)
        _log("\n" + report.render_markdown(doc))
        _log(f"wrote {md_path}, {json_path}" + (f", {doc['plot']}" if doc["plot"] else ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
