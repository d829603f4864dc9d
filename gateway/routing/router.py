"""The router of one model: turns a request's key into a RoutePlan and keeps the routing state.

State kept here: admin overrides, versions the rollback guard took out, per-version
counters, shadow comparison statistics. The caller passes the clock
(``now_ns``, monotonic) and which versions are being served; nothing here awaits.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from gateway.core.errors import InvalidInputError
from gateway.core.field_path import field_path
from gateway.core.routing_config import RoutingConfig, internal_problems
from gateway.routing.compare import ClassDistribution, Comparison, PairStats, compare_arrays, pick_output
from gateway.routing.guard import RollbackGuard, WindowCounts
from gateway.routing.sticky import sticky_choice

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    model: str
    version: str  # "" = that model's default version
    fraction: float = 1.0


@dataclass(slots=True)  # not frozen: built per request, and frozen dataclasses construct slowly
class RoutePlan:
    version: str  # the live version
    fallback: str  # "" = none
    shadows: tuple[ShadowTarget, ...]
    sticky: bool


@dataclass(slots=True)
class VersionCounters:
    routed: int = 0
    succeeded: int = 0
    failed: int = 0
    fell_back: int = 0  # failed here, then retried on the fallback
    answered_as_fallback: int = 0


@dataclass(frozen=True, slots=True)
class Trip:
    reason: str
    at_ns: int


class Router:
    def __init__(self, model: str, file_config: RoutingConfig | None, rng: random.Random | None = None) -> None:
        self.model = model
        self.file_config = file_config
        self.admin_config: RoutingConfig | None = None
        self.rng = rng or random.Random()
        self.tripped: dict[str, Trip] = {}
        self.rollbacks = 0
        self.counters: dict[str, VersionCounters] = {}
        self.pairs: dict[tuple[str, str, str], PairStats] = {}
        self.predictions: dict[str, ClassDistribution] = {}
        self.guard: RollbackGuard | None = None
        # Told of each trip this router's own guard decides (the fleet state publishes it).
        self.on_trip: Callable[[str, Trip], None] | None = None
        self._apply()

    # -- configuration ---------------------------------------------------------------

    @property
    def config(self) -> RoutingConfig:
        return self.admin_config or self.file_config or RoutingConfig()

    @property
    def source(self) -> str:
        return "admin" if self.admin_config is not None else "file"

    def set_admin_config(self, cfg: RoutingConfig | None) -> None:
        """An operator's config replaces the file's until cleared (None). Trips stay until reset."""
        self.admin_config = cfg
        self._apply()

    def _apply(self) -> None:
        cfg = self.config
        self._weights = [(str(v), float(w)) for v, w in sorted(cfg.weights.items())]
        champion = cfg.effective_champion()
        self.champion = str(champion) if champion is not None else ""
        self._fallback = str(cfg.fallback) if cfg.fallback is not None else ""
        self._shadows = tuple(
            ShadowTarget(s.model if s.model and s.model != self.model else self.model,
                         str(s.version) if s.version is not None else "", s.fraction)
            for s in cfg.shadows
        )
        self.attempt_timeout_s = cfg.attempt_timeout_us / 1e6
        self.shadow_queue_size = cfg.shadow_queue_size
        rollback = cfg.rollback
        if rollback is None:
            self.guard = None
        elif self.guard is None or self.guard.cfg != rollback:
            self.guard = RollbackGuard(rollback)
        self._guarded = frozenset(v for v, _ in self._weights if v != self.champion) if self.guard else frozenset()
        self._compare_target = (
            ShadowTarget(self.model, self.champion, rollback.compare_fraction)
            if rollback is not None and rollback.max_disagreement is not None else None
        )
        self._refresh_live()

    def _refresh_live(self) -> None:
        self._live = [(v, w) for v, w in self._weights if w > 0 and v not in self.tripped]

    def effective_weights(self) -> dict[str, float]:
        live = dict(self._live)
        return {v: live.get(v, 0.0) for v, _ in self._weights}

    # -- per request -----------------------------------------------------------------

    def key_of(self, route_key: str, parameters: Mapping[str, Any]) -> str | None:
        cfg = self.config
        for source in cfg.sticky_key_sources:
            if source == "header":
                if route_key:
                    return route_key
            else:
                value = parameters.get(cfg.sticky_key_parameter)
                if value is not None and value != "":
                    return str(value)
        return None

    def choose(self, key: str | None, served: Container[str], default_version: str) -> str:
        candidates = [(v, w) for v, w in self._live if v in served]
        if not candidates:
            for v in (self.champion, self._fallback):
                if v and v in served:
                    return v
            return default_version
        if len(candidates) == 1:
            return candidates[0][0]
        if key is not None:
            return sticky_choice(self.model, key, candidates)  # type: ignore[return-value]
        point = self.rng.random() * sum(w for _, w in candidates)
        for v, w in candidates:
            point -= w
            if point < 0:
                return v
        return candidates[-1][0]

    def plan(self, key: str | None, served: Container[str], default_version: str) -> RoutePlan:
        version = self.choose(key, served, default_version)
        self._counter(version).routed += 1
        shadows = tuple(
            t for t in self._shadows
            if not (t.model == self.model and t.version == version)
            and (t.fraction >= 1.0 or self.rng.random() < t.fraction)
        ) if self._shadows else ()
        compare = self._compare_target
        if (compare is not None and version in self._guarded
                and not any(t.model == self.model and t.version == self.champion for t in shadows)
                and (compare.fraction >= 1.0 or self.rng.random() < compare.fraction)):
            shadows += (compare,)
        fallback = self._fallback if self._fallback != version else ""
        return RoutePlan(version, fallback, shadows, key is not None)

    def _counter(self, version: str) -> VersionCounters:
        c = self.counters.get(version)
        if c is None:
            c = self.counters[version] = VersionCounters()
        return c

    # -- outcomes --------------------------------------------------------------------

    def record_result(self, version: str, ok: bool, latency_ns: int, now_ns: int) -> None:
        c = self._counter(version)
        if ok:
            c.succeeded += 1
        else:
            c.failed += 1
        if version in self._guarded and version not in self.tripped:
            reason = self.guard.record_result(version, now_ns, ok, latency_ns)  # type: ignore[union-attr]
            if reason:
                self.trip(version, reason, now_ns)

    def record_fallback(self, failed_version: str, answered_version: str) -> None:
        self._counter(failed_version).fell_back += 1
        self._counter(answered_version).answered_as_fallback += 1

    def _pair(self, live_version: str, target: ShadowTarget) -> PairStats:
        key = (live_version, target.model, target.version)
        p = self.pairs.get(key)
        if p is None:
            p = self.pairs[key] = PairStats()
        return p

    def record_shadow_sent(self, live_version: str, target: ShadowTarget) -> None:
        self._pair(live_version, target).sent += 1

    def record_shadow_dropped(self, live_version: str, target: ShadowTarget) -> None:
        self._pair(live_version, target).dropped += 1

    def record_shadow_failed(self, live_version: str, target: ShadowTarget) -> None:
        self._pair(live_version, target).failed += 1

    def record_shadow(
        self,
        live_version: str,
        target: ShadowTarget,
        shadow_version: str,
        live: Mapping[str, np.ndarray],
        shadow: Mapping[str, np.ndarray],
        now_ns: int,
    ) -> None:
        name = pick_output(live, shadow, self.config.compare_output)
        if name is None:
            self._pair(live_version, target).failed += 1
            return
        self.record_comparison(live_version, target, shadow_version, compare_arrays(live[name], shadow[name]), now_ns)

    def record_comparison(self, live_version: str, target: ShadowTarget, shadow_version: str, c: Comparison, now_ns: int) -> None:
        """One compared shadow answer (tensors or generations); the rollback guard counts disagreement
        when the shadow is the champion."""
        self._pair(live_version, target).add(c)
        if c.live_classes is not None:
            self._distribution(self.model, live_version).add(c.live_classes)
            self._distribution(target.model, shadow_version).add(c.shadow_classes)  # type: ignore[arg-type]
        if (target.model == self.model and shadow_version == self.champion
                and live_version in self._guarded and live_version not in self.tripped):
            reason = self.guard.record_comparison(live_version, now_ns, c.rows, c.disagreed_rows)  # type: ignore[union-attr]
            if reason:
                self.trip(live_version, reason, now_ns)

    def _distribution(self, model: str, version: str) -> ClassDistribution:
        key = f"{model}:{version}"
        d = self.predictions.get(key)
        if d is None:
            d = self.predictions[key] = ClassDistribution()
        return d

    # -- rollback --------------------------------------------------------------------

    def trip(self, version: str, reason: str, now_ns: int, *, announce: bool = True) -> None:
        """Weight 0 for ``version``; ``announce=False`` when the trip was decided elsewhere (another worker)."""
        if version == self.champion or version in self.tripped:
            return
        self.tripped[version] = trip = Trip(reason, now_ns)
        self.rollbacks += 1
        self._refresh_live()
        _log.warning("rollback: model %s version %s weight set to 0: %s (an operator resets it)",
                     self.model, version, reason)
        if announce and self.on_trip is not None:
            self.on_trip(version, trip)

    def guard_windows(self, now_ns: int) -> dict[str, WindowCounts]:
        """This process's window counts of each guarded canary still in (for the other workers)."""
        if self.guard is None:
            return {}
        return {v: self.guard.counts(v, now_ns) for v in sorted(self._guarded) if v not in self.tripped}

    def judge_fleet(self, peers: Mapping[str, WindowCounts], now_ns: int) -> None:
        """The other workers' window counts, summed: the guard judges the fleet's window from now on,
        and judges it at once (the verdict may be due without a request of this process)."""
        if self.guard is None:
            return
        for v in sorted(self._guarded):
            self.guard.set_peer_counts(v, peers.get(v))
            if v not in self.tripped and v in peers:
                reason = self.guard.judge(v, now_ns)
                if reason:
                    self.trip(v, reason, now_ns)

    def reset(self, versions: list[str] | None = None) -> list[str]:
        """Give tripped versions their weight back (all when ``versions`` is None)."""
        done = [v for v in (versions if versions is not None else list(self.tripped)) if v in self.tripped]
        for v in done:
            del self.tripped[v]
            if self.guard is not None:
                self.guard.clear(v)
        self._refresh_live()
        if done:
            _log.warning("rollback reset: model %s versions %s back to their weights", self.model, done)
        return done

    # -- status ----------------------------------------------------------------------

    def status(self, now_ns: int) -> dict:
        weights = dict(self._weights)
        effective = self.effective_weights()
        versions = {}
        for v in sorted(set(weights) | set(self.counters), key=int):
            c = self.counters.get(v, VersionCounters())
            doc: dict[str, Any] = {
                "weight": weights.get(v, 0.0),
                "effective_weight": effective.get(v, 0.0),
                "champion": v == self.champion,
                "routed": c.routed,
                "succeeded": c.succeeded,
                "failed": c.failed,
                "fell_back": c.fell_back,
                "answered_as_fallback": c.answered_as_fallback,
            }
            trip = self.tripped.get(v)
            doc["rolled_back"] = (
                {"reason": trip.reason, "seconds_ago": round((now_ns - trip.at_ns) / 1e9, 3)} if trip else None
            )
            if self.guard is not None and v in self._guarded:
                w = self.guard.fleet_counts(v, now_ns)
                doc["window"] = {
                    "requests": w.requests, "errors": w.errors, "slow": w.slow,
                    "compared_rows": w.compared_rows, "disagreed_rows": w.disagreed_rows,
                }
            versions[v] = doc
        return {
            "model": self.model,
            "source": self.source,
            "config": self.config.model_dump(mode="json"),
            "champion": self.champion or None,
            "versions": versions,
            "rollbacks": self.rollbacks,
            "shadows": [
                {"live_version": lv, "model": m, "version": sv or None, **p.to_json()}
                for (lv, m, sv), p in sorted(self.pairs.items())
            ],
            "predictions": {k: d.to_json() for k, d in sorted(self.predictions.items())},
        }


def patched_config(current: RoutingConfig | None, patch: Any) -> RoutingConfig:
    """``current`` with the top-level fields ``patch`` names replaced; errors name the field."""
    if not isinstance(patch, dict):
        raise InvalidInputError("the routing body must be a JSON object with fields of the routing section")
    merged = {**(current.model_dump() if current is not None else {}), **patch}
    try:
        cfg = RoutingConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = field_path(tuple(err["loc"])) or "(file)"
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise InvalidInputError(f"routing.{field}: {reason}") from None
    for field, reason in internal_problems(cfg):
        raise InvalidInputError(f"routing.{field}: {reason}")
    return cfg
