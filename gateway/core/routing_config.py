"""The ``routing:`` section of ``model.yaml``: canary split, shadows, fallback, rollback guard.

Versions are the repository's version numbers (integers). Weights are
relative: ``{1: 95, 2: 5}`` and ``{1: 19, 2: 1}`` split alike.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowConfig(_Strict):
    """A copy of live traffic sent, after the live answer, to a version of this or another model."""

    # "" = this model; another model must take the same inputs.
    model: str = ""
    # None = the other model's default version; required for this model.
    version: int | None = Field(default=None, ge=1)
    # Share of live requests copied (sampled per request).
    fraction: float = Field(default=1.0, gt=0, le=1)


class RollbackConfig(_Strict):
    """Thresholds over a sliding window; a canary crossing any of them gets weight 0 until reset."""

    window_s: float = Field(default=60.0, gt=0, le=86_400)
    # No verdict on fewer requests (or compared requests, for disagreement) in the window.
    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p99_latency_ms: float | None = Field(default=None, gt=0)
    # Share of compared rows whose prediction (argmax, or the exact value) differs from the champion's.
    max_disagreement: float | None = Field(default=None, ge=0, le=1)
    # Share of a canary's requests also sent to the champion to measure disagreement.
    compare_fraction: float = Field(default=1.0, gt=0, le=1)


class RoutingConfig(_Strict):
    # version -> relative weight; empty: the default version answers (shadows and fallback still apply).
    weights: dict[int, float] = Field(default_factory=dict)
    # The version the guard protects and compares canaries with; default: the highest weight
    # (ties: the higher version).
    champion: int | None = Field(default=None, ge=1)
    # Where the sticky key comes from, first found wins: "header" = HTTP header / gRPC metadata
    # x-route-key (or what a protocol layer puts there); "parameter" = the request parameter below.
    # No key: split at random by weight.
    sticky_key_sources: tuple[Literal["header", "parameter"], ...] = ("header", "parameter")
    sticky_key_parameter: str = Field(default="route_key", min_length=1)
    shadows: tuple[ShadowConfig, ...] = ()
    # Shadow copies of this model queued or running at once; beyond, copies are dropped and counted.
    shadow_queue_size: int = Field(default=64, ge=1, le=1_000_000)
    # Retried once here when the chosen version fails (error, timeout, not ready, queue full).
    fallback: int | None = Field(default=None, ge=1)
    # Give up on the chosen version after this long and try the fallback (0 = no limit of our own);
    # the fallback attempt itself is bounded only by the request's deadlines.
    attempt_timeout_us: int = Field(default=0, ge=0)
    # Output compared between live and shadow answers ("" = the first output both have).
    compare_output: str = ""
    rollback: RollbackConfig | None = None

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[int, float]) -> dict[int, float]:
        for version, weight in v.items():
            if version < 1:
                raise ValueError(f"version {version} is invalid: versions are >= 1")
            if weight < 0:
                raise ValueError(f"weight of version {version} is {weight}: weights are >= 0")
        if v and not any(w > 0 for w in v.values()):
            raise ValueError("at least one weight must be > 0")
        return v

    def effective_champion(self) -> int | None:
        if self.champion is not None:
            return self.champion
        if not self.weights:
            return None
        return max(self.weights, key=lambda v: (self.weights[v], v))


def internal_problems(cfg: RoutingConfig) -> list[tuple[str, str]]:
    """(field, reason) for rules spanning fields of the section."""
    problems = []
    if cfg.champion is not None and cfg.weights and cfg.champion not in cfg.weights:
        problems.append(("champion", f"version {cfg.champion} is not in weights {sorted(cfg.weights)}"))
    seen = set()
    for i, s in enumerate(cfg.shadows):
        if not s.model and s.version is None:
            problems.append((f"shadows[{i}].version", "required for a shadow of this model"))
        target = (s.model, s.version)
        if target in seen:
            problems.append((f"shadows[{i}]", "the same target is listed twice"))
        seen.add(target)
    if cfg.rollback is not None and len(cfg.weights) < 2:
        problems.append(("rollback", "needs at least two versions in weights (a champion and a canary)"))
    return problems


def routed_versions(cfg: RoutingConfig) -> list[tuple[str, int]]:
    """(field, version) for every version of the model itself that the section routes to."""
    out = [(f"weights.{v}", v) for v in cfg.weights]
    if cfg.champion is not None:
        out.append(("champion", cfg.champion))
    if cfg.fallback is not None:
        out.append(("fallback", cfg.fallback))
    out += [(f"shadows[{i}].version", s.version) for i, s in enumerate(cfg.shadows) if not s.model and s.version]
    return out


def unserved_versions(cfg: RoutingConfig, served: Collection[int], policy: str) -> list[tuple[str, str]]:
    """(field, reason) for each routed version that is not among the served ones."""
    have = sorted(served)
    return [
        (f"routing.{field}", f"version {v} is not served (the version policy {policy} selects {have}); "
         "use version_policy {all: true} or {specific: [...]} listing every routed version")
        for field, v in routed_versions(cfg)
        if v not in served
    ]
