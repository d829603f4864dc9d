"""Server settings: defaults < gateway.yaml < GATEWAY_* environment < command-line flags."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gateway.core.errors import ConfigError

ENV_PREFIX = "GATEWAY_"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="0.0.0.0", description="address both servers listen on")
    http_port: int = Field(default=8000, ge=0, le=65535, description="KServe v2 REST port (0 = pick a free port, logged)")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="KServe v2 gRPC port (0 = pick a free port, logged)")
    grpc_transport: Literal["native", "grpcio"] = Field(
        default="native",
        description="gRPC front end: 'native' (HTTP/2 on the event loop, several times less CPU per call) "
        "or 'grpcio' (grpc.aio); same services, statuses and limits",
    )
    model_repository: str = Field(default="examples/models", description="model repository directory")
    repository_poll_s: float = Field(
        default=2.0, ge=0, description="seconds between repository scans for hot reload (0 = no polling)"
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest request body / gRPC message accepted (HTTP 413 beyond)"
    )
    grace_period_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long accepted requests may take to finish"
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="server processes sharing the ports (SO_REUSEPORT), each with its own loop and executors"
    )
    gil_switch_interval_us: int = Field(
        default=5000, ge=100, le=100_000,
        description="how long the busy event loop may hold the GIL before an executor thread whose model run "
        "finished gets it back (Python's sys.setswitchinterval; 5000 = Python's default). Lower helps "
        "compute-bound models under load, costs per-request CPU on tiny ones (README: Benchmarks)",
    )
    gc_threshold: int = Field(
        default=20_000, ge=0, le=10_000_000,
        description="allocations between young-generation garbage collections (Python's default is 700; "
        "each collection walks the objects of the requests in flight, so a serving process collects less "
        "often); 0 keeps Python's setting",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or as JSON objects with request and trace ids"
    )
    log_levels: str = Field(
        default="",
        description="per-module log levels over log_level, e.g. 'gateway.scheduler=debug,gateway.requests=debug'",
    )
    tracing: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="OpenTelemetry traces over OTLP, configured by the standard OTEL_* variables; "
        "auto = on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set",
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="fraction of new traces sampled (a caller's sampled traceparent is always followed); "
        "OTEL_TRACES_SAMPLER overrides",
    )

    cache_url: str = Field(
        default="",
        pattern=r"^$|^(redis|rediss|unix)://",
        description="shared response cache, e.g. redis://127.0.0.1:6379/0 (empty = in-process only)",
    )
    cache_timeout_ms: float = Field(
        default=5.0, gt=0, le=10_000, description="longest wait on the shared cache per operation before answering as a miss"
    )

    state_url: str = Field(
        default="",
        pattern=r"^$|^(redis|rediss|unix)://",
        description="routing control state shared by the replicas (admin overrides, resets, rollbacks, the rollback "
        "guard's window counts), e.g. redis://redis:6379/0 (empty = per host: this process, or the workers of --workers)",
    )

    admin_token: str = Field(
        default="", repr=False,
        description="bearer token of the /v2/admin endpoints and, when set, of model control (repository index, "
        "load, unload on both protocols) (empty = admin endpoints off, model control open; prefer the environment)",
    )
    api_keys: str = Field(
        default="", repr=False,
        description="keys that inference needs (v2 infer on both protocols, every /v1 route) as "
        "'Authorization: Bearer <key>': comma-separated keys or sha256:<hex> digests of keys (a list in "
        "gateway.yaml; prefer the environment); empty = no key needed. Health, metadata and /metrics stay open",
    )

    allow_client_shm: bool = Field(
        default=False,
        description="let clients register system shared memory regions (/v2/systemsharedmemory, "
        "SystemSharedMemoryRegister): a same-host trust feature, since a client names any /dev/shm object "
        "this process may open; per worker process (README: Shared memory)",
    )

    registry_url: str = Field(
        default="",
        pattern=r"^$|^https?://",
        description="MLflow tracking server whose model registry decides the versions served, "
        "e.g. http://mlflow:5000 (empty = no registry: the local repository is the source of truth)",
    )
    registry_models: str = Field(
        default="",
        description="registered models to follow besides those whose model.yaml has a registry section: "
        "'name' or 'local_name=registered_name', comma-separated (a list in gateway.yaml)",
    )
    registry_poll_s: float = Field(default=30.0, gt=0, le=86_400, description="seconds between registry polls")
    registry_backoff_max_s: float = Field(
        default=300.0, gt=0, le=86_400, description="longest wait between polls while the registry fails (exponential backoff)"
    )
    registry_jitter: float = Field(
        default=0.2, ge=0, le=1, description="each wait is drawn from [1 - jitter, 1] of its nominal value"
    )
    registry_timeout_s: float = Field(default=10.0, gt=0, le=3600, description="bound of one registry request")
    registry_report_s: float = Field(
        default=60.0, ge=0, le=86_400,
        description="seconds between reports of serving (and drift) metrics to MLflow (0 = no reports)",
    )
    registry_experiment: str = Field(
        default="gateway-serving", min_length=1, description="MLflow experiment holding the serving runs"
    )
    registry_token: str = Field(
        default="", repr=False,
        description="bearer token for the registry (prefer the environment; MLFLOW_TRACKING_TOKEN is used when unset)",
    )

    # -- limits and transport security (README "Reliability and security") --
    max_tensor_elements: int = Field(
        default=1 << 28, ge=1, description="largest element count of one input tensor (HTTP 413 / RESOURCE_EXHAUSTED beyond)"
    )
    max_request_rows: int = Field(
        default=65536, ge=1, description="largest batch dim (rows) of one request's inputs (HTTP 400 / INVALID_ARGUMENT beyond)"
    )
    max_concurrent_requests: int = Field(
        default=0, ge=0,
        description="requests in progress at once per protocol (HTTP requests, gRPC RPCs; a stream counts once), "
        "for the host: under --workers N each worker admits its share (at least 1); "
        "beyond: HTTP 429 / RESOURCE_EXHAUSTED; 0 = no limit",
    )
    max_header_bytes: int = Field(
        default=8190, ge=256, le=1 << 20,
        description="largest HTTP request line / header field and gRPC metadata (HTTP 400 beyond)",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a new connection must send its first request head within this (HTTP: request line and "
        "headers; gRPC: the HTTP/2 preface and a first HEADERS), and one header block may take no longer; "
        "slow or silent peers are closed",
    )
    idle_timeout_s: float = Field(
        default=120.0, gt=0, le=86_400,
        description="a keep-alive connection with no request in progress is closed after this (gRPC: GOAWAY, then close)",
    )
    tls_handshake_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="a TLS handshake not finished within this is dropped"
    )
    tls_cert_file: str = Field(default="", description="PEM certificate chain: HTTPS and gRPC over TLS when set with tls_key_file")
    tls_key_file: str = Field(default="", description="PEM private key of tls_cert_file")
    tls_ca_file: str = Field(
        default="", description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)"
    )

    @field_validator("tracing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        return ("on" if v else "off") if isinstance(v, bool) else v

    @field_validator("log_levels", mode="before")
    @classmethod
    def _module_levels(cls, v: Any) -> str:
        """Accepts 'a=debug,b=info' or, in gateway.yaml, a mapping; stored as the string form."""
        if isinstance(v, dict):
            v = ",".join(f"{k}={lvl}" for k, lvl in v.items())
        if not isinstance(v, str):
            raise ValueError("expected 'module=level,...' or a mapping of module to level")
        parse_module_levels(v)
        return v

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, v: str) -> str:
        if v and not _is_header_token(v):
            raise ValueError("must be printable ASCII without spaces or commas (it travels in an HTTP header)")
        return v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, v: Any) -> str:
        """Accepts 'k1,sha256:<hex>' or, in gateway.yaml, a list; stored as the string form.
        Messages name an entry by its position, never by its value."""
        if isinstance(v, list | tuple):
            if not all(isinstance(x, str) for x in v):
                raise ValueError("expected a list of strings")
            v = ",".join(x.strip() for x in v)
        if not isinstance(v, str):
            raise ValueError("expected 'key,sha256:<hex>,...' or a list")
        parse_api_keys(v)
        return v

    @property
    def api_key_entries(self) -> tuple[str, ...]:
        return parse_api_keys(self.api_keys)

    @field_validator("registry_url")
    @classmethod
    def _registry_needs_polling(cls, v: str, info: ValidationInfo) -> str:
        if v and info.data.get("repository_poll_s") == 0:
            raise ValueError("needs repository_poll_s > 0: the repository's hot reload loads what the registry client downloads")
        return v.rstrip("/")

    @field_validator("registry_models", mode="before")
    @classmethod
    def _registry_models(cls, v: Any) -> str:
        """Accepts 'a,b=c' or, in gateway.yaml, a list or a mapping of local name to registered name."""
        if isinstance(v, dict):
            v = ",".join(f"{k}={name}" for k, name in v.items())
        elif isinstance(v, list):
            v = ",".join(str(x) for x in v)
        if not isinstance(v, str):
            raise ValueError("expected 'name,local=registered,...', a list or a mapping")
        parse_registry_models(v)
        return v

    @property
    def registry_model_names(self) -> dict[str, str]:
        return parse_registry_models(self.registry_models)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_ca_file and not self.tls_cert_file:
            raise ValueError("tls_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ValueError(f"{name}: '{path}' is not a readable file")
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def apply_to_interpreter(self) -> None:
        """Process-wide interpreter settings; called once by each serving process before its loop starts."""
        sys.setswitchinterval(self.gil_switch_interval_us / 1e6)
        if self.gc_threshold:
            _, older, oldest = gc.get_threshold()
            gc.set_threshold(self.gc_threshold, older, oldest)

    @property
    def module_levels(self) -> dict[str, str]:
        return parse_module_levels(self.log_levels)


LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_module_levels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        module, sep, level = part.partition("=")
        module, level = module.strip(), level.strip().lower()
        if not sep or not module:
            raise ValueError(f"'{part}' is not module=level")
        if level not in LOG_LEVELS:
            raise ValueError(f"'{part}': level must be one of {', '.join(LOG_LEVELS)}")
        out[module] = level
    return out


def _is_header_token(text: str) -> bool:
    return all(33 <= ord(c) <= 126 and c != "," for c in text)


_SHA256_HEX = frozenset("0123456789abcdefABCDEF")


def parse_api_keys(text: str) -> tuple[str, ...]:
    """'k1, sha256:<64 hex>' -> ('k1', 'sha256:<hex>'); a digest is kept in lower case."""
    out: list[str] = []
    for i, part in enumerate((p.strip() for p in text.split(",")), 1):
        if not part:
            if text.strip():
                raise ValueError(f"entry {i} is empty")
            continue
        if part.startswith("sha256:"):
            digest = part[len("sha256:"):]
            if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
                raise ValueError(f"entry {i}: a sha256: entry needs 64 hex digits (sha256 of the key)")
            part = "sha256:" + digest.lower()
        elif not _is_header_token(part):
            raise ValueError(f"entry {i}: a key must be printable ASCII without spaces or commas")
        out.append(part)
    return tuple(out)


def parse_registry_models(text: str) -> dict[str, str]:
    """'a,b=c' -> {'a': 'a', 'b': 'c'} (local model name -> registered model name)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        local, sep, registered = (x.strip() for x in part.partition("="))
        if not local or (sep and not registered):
            raise ValueError(f"'{part}' is not 'name' or 'local_name=registered_name'")
        out[local] = registered or local
    return out


FIELDS = ServerSettings.model_fields


def _coerce_env(raw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in FIELDS:
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            out[name] = value
    return {**raw, **out}


def load_settings(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> ServerSettings:
    """Build settings; every error names its source and field."""
    raw: dict[str, Any] = {}
    source = "defaults"
    config_file = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        source = config_file
        try:
            with open(config_file, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(config_file, "(file)", str(exc)) from None
        if not isinstance(raw, dict):
            raise ConfigError(config_file, "(file)", "expected a mapping at the top level")
    merged = _coerce_env(raw)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged.update(flags)
    try:
        return ServerSettings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(file)"
        if field in flags:
            origin = f"command line (--{field.replace('_', '-')})"
        elif ENV_PREFIX + field.upper() in os.environ:
            origin = "environment"
        else:
            origin = source
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(origin, field, reason) from None
