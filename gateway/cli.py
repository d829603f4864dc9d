"""Command line: ``gateway serve``, ``check``, ``tune``, ``drift profile`` and ``registry-sync``."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Callable

from gateway.core.errors import ConfigError
from gateway.core.settings import ENV_PREFIX, FIELDS, ServerSettings, load_settings


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"server settings file (gateway.yaml); env {ENV_PREFIX}CONFIG")
    for name, field in FIELDS.items():
        kind = field.annotation
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        # The text as given for bool and Literal flags: pydantic parses them (bool("false") is True).
        parse: Callable[[str], object] = str
        if not choices and kind is not bool:
            assert isinstance(kind, type), f"setting {name}: a flag needs a plain type, not {kind!r}"
            parse = kind
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=parse,
            choices=choices,
            default=None,
            help=f"{field.description} (default {field.default!r}; env {ENV_PREFIX}{name.upper()})",
        )


def _settings(args: argparse.Namespace) -> ServerSettings | None:
    """Settings from flags, environment and file, or None after printing why they are invalid."""
    overrides = {name: getattr(args, name) for name in FIELDS}
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"gateway: invalid settings: {exc}", file=sys.stderr)
        return None
    if not os.path.isdir(settings.model_repository):
        print(f"gateway: model repository '{settings.model_repository}' is not a directory", file=sys.stderr)
        return None
    return settings


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    try:
        if settings.workers > 1:
            from gateway.supervisor import supervise

            supervise(settings)
        else:
            from gateway.daemon import run  # imported late: the compiled module loads here

            run(settings)
    except ConfigError as exc:  # e.g. an OTEL_* variable the tracing set-up cannot use
        print(f"gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> int:
    """Validate a repository as `serve` would load it and print every problem found."""
    from gateway.tools.check import check_repository

    root = args.repository
    if not os.path.isdir(root):
        print(f"{root}: not a directory", file=sys.stderr)
        return 2
    return 1 if check_repository(root) else 0


def _tune(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.tools.tune import tune

    best = asyncio.run(
        tune(args.model, args.model_repository, args.p99_ms, args.url, args.concurrency, args.seconds, args.dry_run,
             warmup_s=args.warmup_s)
    )
    return 0 if best is not None else 1


def _drift_profile(args: argparse.Namespace) -> int:
    from gateway.tools.drift_profile import main as profile_main

    return profile_main(args)


def _registry_sync(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    if not settings.registry_url:
        print("gateway registry-sync: set --registry-url (or GATEWAY_REGISTRY_URL)", file=sys.stderr)
        return 2
    import uvloop

    from gateway.daemon import setup_logging
    from gateway.registry_sidecar import run_sidecar

    setup_logging(settings)
    return uvloop.run(run_sidecar(settings, gateway_url=args.gateway_url, once=args.once, metrics_port=args.metrics_port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Model-serving daemon (KServe v2 gRPC/HTTP)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the model repository over KServe v2 gRPC and HTTP. "
        "Settings: flag > environment > --config file > default.",
    )
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)
    check = sub.add_parser(
        "check",
        help="validate a model repository as `serve` would load it and print every problem",
        description="Checks every model.yaml and, for each version its policy serves, the config against the "
        "model file's inputs and outputs (declared tensors, batching, drift streams, text-generation layout and "
        "tokenizer), without starting a runtime. Prints 'file: field: reason' per problem; exit 1 if any.",
    )
    check.add_argument("repository", help="model repository directory")
    check.set_defaults(func=_check)
    tune = sub.add_parser(
        "tune",
        help="find batch settings for a model under a p99 bound and write them to its model.yaml",
        description="Sweeps max_batch_size, max_queue_delay_us, instances and intra_op_threads against a "
        "running daemon (--url) or one it starts on --model-repository, and writes the best setting whose p99 "
        "meets the bound into model.yaml (keeping a backup). A running daemon hot-reloads it.",
    )
    tune.add_argument("model")
    tune.add_argument("--p99-ms", type=float, required=True, help="latency bound for the 99th percentile")
    tune.add_argument("--model-repository", default="examples/models", help="repository holding MODEL/model.yaml")
    tune.add_argument("--url", help="gRPC address of a running daemon serving that repository (default: start one)")
    tune.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    tune.add_argument("--seconds", type=float, default=3.0, help="measured seconds per trial")
    tune.add_argument("--warmup-s", type=float, default=0.5,
                      help="unmeasured seconds of load before each trial (the new setting's first batches)")
    tune.add_argument("--dry-run", action="store_true", help="print the best setting without writing it")
    tune.set_defaults(func=_tune)
    drift = sub.add_parser("drift", help="drift monitoring tools")
    drift_sub = drift.add_subparsers(dest="drift_command", required=True)
    profile = drift_sub.add_parser(
        "profile",
        help="write a model version's reference profile (reference.json beside its model file)",
        description="Bins every stream of MODEL's drift: section over the reference data (.npy, .npz, .csv, "
        ".parquet), running the data through the model for output streams, and writes the profile beside the "
        "version's model file. A running daemon reads it when the version (re)loads.",
    )
    profile.add_argument("model")
    profile.add_argument("--data", required=True, help="reference data file")
    profile.add_argument("--repository", default="examples/models", help="model repository (default examples/models)")
    profile.add_argument("--version", help="model version (default: the highest)")
    profile.set_defaults(func=_drift_profile)
    sync = sub.add_parser(
        "registry-sync",
        help="follow the MLflow registry's aliases into a model repository, as a separate process",
        description="Polls the MLflow registry (--registry-url) and downloads the versions its aliases name into "
        "--model-repository, writing each model's version_policy and routing; a daemon serving that repository "
        "hot-reloads them. The same code runs inside the daemon when it has registry_url set.",
    )
    _add_setting_flags(sync)
    sync.add_argument("--gateway-url", default="", help="HTTP address of the daemon whose serving metrics to report, "
                      "e.g. http://127.0.0.1:8000 (default: follow aliases only)")
    sync.add_argument("--once", action="store_true", help="poll once (and report once) and exit: 0 = in step")
    sync.add_argument("--metrics-port", type=int, default=None, help="serve this process's Prometheus metrics on this port")
    sync.set_defaults(func=_registry_sync)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
