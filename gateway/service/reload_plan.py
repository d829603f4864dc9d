"""What one repository scan asks of one model's loaded versions, decided without any I/O.

``plan_reload`` compares the model's entry on disk with what the manager serves and
remembers, and says per wanted version whether to keep, wait, skip or load it.
``settle`` takes the plan and the outcome of its loads and says what serves next,
what retires and which state the model reports. ``ModelManager._apply`` only runs
the loads in between. Both functions are pure: they neither await nor log.

Versions are ints here, as the repository names them; the serving map keys them as
strings, the way the protocols name them.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.core.model_state import ModelState
from gateway.core.repository import ModelEntry

Fingerprint = tuple[int, int]  # (size, mtime_ns) of a version's model file


class Action(enum.Enum):
    KEEP = "keep"  # same files and config as the build that serves: nothing to do
    WAIT = "wait"  # the files are new or still changing: load once two scans agree
    SKIP_FAILED = "skip_failed"  # these files with this config already failed: not retried unforced
    LOAD = "load"  # build it now


@dataclass(frozen=True, slots=True)
class ServingVersion:
    """What the manager knows of a build that serves."""

    fingerprint: Fingerprint
    config_digest: str


@dataclass(frozen=True, slots=True)
class FailedLoad:
    """Files and config that failed to build, and why; kept so they are not rebuilt every scan."""

    fingerprint: Fingerprint
    config_digest: str
    reason: str


@dataclass(frozen=True, slots=True)
class VersionStep:
    version: int
    action: Action
    # A build of this version serves already and keeps serving unless a LOAD replaces it.
    has_old: bool
    reason: str = ""  # SKIP_FAILED: the failure reported when it was tried


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    model: str
    steps: tuple[VersionStep, ...]  # one per wanted version, ascending
    # Serving versions the version policy no longer wants; they retire once every wanted version serves.
    retire: tuple[int, ...]
    # The fingerprints this scan saw, for the manager's memory of the last scan.
    seen: Mapping[int, Fingerprint]
    # Set when model.yaml is invalid: nothing is loaded, the previous good builds keep serving.
    config_error: str | None = None
    state: ModelState | None = None  # the model-level decision, when the plan alone makes it
    # What an UNAVAILABLE model says when no load failed to explain it.
    idle_reason: str = ""

    @property
    def loads(self) -> tuple[VersionStep, ...]:
        return tuple(s for s in self.steps if s.action is Action.LOAD)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What serves after the plan's loads ran, and what the model reports."""

    keep_old: tuple[int, ...]  # versions whose current build serves on
    use_new: tuple[int, ...]  # versions whose fresh build serves
    retire: tuple[int, ...]  # versions whose current build drains (replaced or dropped)
    drop_status: tuple[int, ...]  # versions that no longer serve at all: forget their status
    state: ModelState
    reason: str
    failed: Mapping[int, FailedLoad]  # failures to remember
    cleared: tuple[int, ...]  # versions that loaded: forget their past failures


def plan_reload(
    entry: ModelEntry,
    serving: Mapping[int, ServingVersion],
    seen: Mapping[int, Fingerprint],
    failed: Mapping[int, FailedLoad],
    *,
    force: bool,
) -> ReloadPlan:
    """``serving``, ``seen`` and ``failed`` are this model's, keyed by version; ``force`` loads
    without waiting for stable files and retries failures (first scan, explicit load)."""
    if entry.config is None:
        assert entry.error is not None
        state = ModelState.READY if serving else ModelState.UNAVAILABLE
        return ReloadPlan(entry.name, (), (), {}, config_error=str(entry.error), state=state)
    wanted = entry.config.version_policy.select(list(entry.versions))
    steps: list[VersionStep] = []
    seen_now: dict[int, Fingerprint] = {}
    for v in wanted:
        files = entry.versions[v]
        old = serving.get(v)
        has_old = old is not None
        same_files = old is not None and old.fingerprint == files.fingerprint
        if old is not None and same_files and old.config_digest == entry.config_digest:
            steps.append(VersionStep(v, Action.KEEP, True))
            continue
        stable = seen.get(v) == files.fingerprint
        seen_now[v] = files.fingerprint
        failure = failed.get(v)
        if (
            not force
            and failure is not None
            and (failure.fingerprint, failure.config_digest) == (files.fingerprint, entry.config_digest)
        ):
            steps.append(VersionStep(v, Action.SKIP_FAILED, has_old, failure.reason))
            continue
        # Same files under a changed config need no settling time: only the config changed.
        if not (force or stable or same_files):
            steps.append(VersionStep(v, Action.WAIT, has_old))
            continue
        steps.append(VersionStep(v, Action.LOAD, has_old))
    wanted_set = set(wanted)
    retire = tuple(sorted(v for v in serving if v not in wanted_set))
    idle = "no version to serve" if entry.versions else "no version directory with a model file"
    return ReloadPlan(entry.name, tuple(steps), retire, seen_now, idle_reason=idle)


def settle(
    plan: ReloadPlan,
    loaded: Collection[int],
    failures: Mapping[int, FailedLoad],
) -> Settlement:
    """``loaded``: the LOAD steps whose build succeeded; ``failures``: those whose build failed."""
    assert plan.config_error is None, "an invalid config settles in the plan"
    keep_old: list[int] = []
    use_new: list[int] = []
    retire: list[int] = []
    problems: list[str] = []
    for step in plan.steps:
        if step.action is Action.LOAD and step.version in loaded:
            use_new.append(step.version)
            if step.has_old:
                retire.append(step.version)
            continue
        if step.action is Action.SKIP_FAILED:
            problems.append(step.reason)
        elif step.action is Action.LOAD:
            problems.append(failures[step.version].reason)
        if step.has_old:
            keep_old.append(step.version)
    serving_wanted = len(keep_old) + len(use_new)
    if serving_wanted < len(plan.steps):
        # A wanted version is still being written or failed to load: what served before
        # keeps serving until its replacement is up.
        keep_old += plan.retire
        drop: tuple[int, ...] = ()
    else:
        retire += plan.retire
        drop = plan.retire
    if keep_old or use_new:
        state, reason = ModelState.READY, "; ".join(problems)
    else:
        state, reason = ModelState.UNAVAILABLE, "; ".join(problems) or plan.idle_reason
    return Settlement(
        keep_old=tuple(keep_old),
        use_new=tuple(use_new),
        retire=tuple(sorted(retire)),
        drop_status=drop,
        state=state,
        reason=reason,
        failed=dict(failures),
        cleared=tuple(use_new),
    )
