"""How the registry client is doing: counters for /metrics, backoff, and logs once per change of state."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


class Backoff:
    """Poll interval while healthy; doubles per failure in a row up to ``max_s``.

    Every wait is drawn from ``[1 - jitter, 1]`` of its nominal value so that
    replicas started together do not poll (or retry a recovering registry) in step.
    """

    def __init__(self, interval_s: float, max_s: float, jitter: float, rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self.max_s = max(max_s, interval_s)
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures = 0

    def nominal_s(self) -> float:
        if self.failures == 0:
            return self.interval_s
        return min(self.max_s, self.interval_s * 2.0 ** self.failures)

    def next_wait_s(self) -> float:
        return self.nominal_s() * (1.0 - self.jitter * self.rng.random())

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class RegistryHealth:
    """Counters and the up/down state; logs a transition once, never once per poll."""

    up: bool | None = None  # None until the first poll
    polls: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # operation -> count
    downloads: int = 0
    downloaded_bytes: int = 0
    reports: int = 0
    # (model, alias) -> version the alias pointed at when last seen
    assigned: dict[tuple[str, str], int] = field(default_factory=dict)
    failing_since_poll: int = 0
    # Per-model problems that are not outages (no such alias, a bad artifact), logged when they change.
    problems: dict[str, str] = field(default_factory=dict)
    report_ok: bool | None = None

    def failed(self, operation: str, reason: str) -> None:
        """The registry could not be reached or answered too slowly (an outage)."""
        self.failures[operation] = self.failures.get(operation, 0) + 1
        if operation == "report":
            if self.report_ok is not False:
                _log.warning("registry: reporting metrics failed (%s); will retry at the next report", reason)
            self.report_ok = False
            return
        if self.up is not False:
            _log.warning(
                "registry unavailable (%s): %s; the versions loaded keep serving, polls back off",
                operation, reason,
            )
            self.failing_since_poll = self.polls
        self.up = False

    def reached(self) -> None:
        if self.up is False:
            _log.warning("registry reachable again after %d failed poll(s)", self.polls - self.failing_since_poll)
        elif self.up is None:
            _log.info("registry reachable")
        self.up = True

    def reported(self) -> None:
        self.reports += 1
        if self.report_ok is False:
            _log.warning("registry: reporting metrics works again")
        self.report_ok = True

    def problem(self, model: str, operation: str, reason: str) -> None:
        """A problem of one model that is not an outage; counted every time, logged when it changes."""
        self.failures[operation] = self.failures.get(operation, 0) + 1
        if self.problems.get(model) != reason:
            _log.error("registry: model %s: %s", model, reason)
        self.problems[model] = reason

    def note(self, model: str, reason: str) -> None:
        """Something worth saying once that is not a failure (e.g. the live alias is not set yet)."""
        if self.problems.get(model) != reason:
            _log.warning("registry: model %s: %s", model, reason)
        self.problems[model] = reason

    def clear(self, model: str) -> None:
        if self.problems.pop(model, None) is not None:
            _log.info("registry: model %s: in step with the registry again", model)
