"""Server settings: defaults < gateway.yaml < GATEWAY_* environment < command-line flags."""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.errors import ConfigError

ENV_PREFIX = "GATEWAY_"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="0.0.0.0", description="address both servers listen on")
    http_port: int = Field(default=8000, ge=0, le=65535, description="KServe v2 REST port (0 = off)")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="KServe v2 gRPC port (0 = off)")
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
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    cache_url: str = Field(
        default="",
        pattern=r"^$|^(redis|rediss|unix)://",
        description="shared response cache, e.g. redis://127.0.0.1:6379/0 (empty = in-process only)",
    )
    cache_timeout_ms: float = Field(
        default=5.0, gt=0, le=10_000, description="longest wait on the shared cache per operation before answering as a miss"
    )


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
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(origin, field, reason) from None
