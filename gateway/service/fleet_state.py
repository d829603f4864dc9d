"""Routing control state shared by the workers of one host (``gateway serve --workers N``).

Each worker has its own routers; what must be one truth for the host lives in
files under the supervisor's shared directory (``WorkerRole.stats_dir``)::

    routing/model-<name>.json   the fleet's record for one model: the admin config in
                                force (or none), the rolled-back canaries (reason, time)
                                and the reset requests, with a version number that only
                                grows. Written by the worker that took the admin request
                                or whose guard tripped, under an flock, by read-modify-write
                                and an atomic replace.
    routing/worker-<i>.json     what worker i publishes: per model, the record version it
                                has applied, its rollback-guard window counts per canary
                                and its routing counters.

Every worker reads both kinds every ``POLL_INTERVAL_S``: it applies each newer
record once, in order of versions (a record is the whole state, so a worker
that skipped one, or has just restarted, is brought to the current state), and
sums the other workers' window counts into its guard, so a canary's verdict is
on the whole host's traffic.

Why files: the standard library gives them, they outlive a worker (a restarted
one reads the state in force), the supervisor already makes and removes the
directory, and readers never see half a record (``os.replace``). A record
changes on operator actions and trips only; the poll costs a few small reads.
Without ``--workers`` none of this exists: the routers are the only state.

Across replicas (several processes or hosts, ``state_url``) the same records and
documents live in Redis instead (gateway.service.fleet_redis). Both stores are a
``FleetChannel``: traffic.py does not know which one runs.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote

from gateway.core.routing_config import RoutingConfig
from gateway.core.tasks import cancel_and_wait
from gateway.routing.guard import WindowCounts
from gateway.routing.router import Router, Trip

_log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.1
_RECORD_PREFIX, _WORKER_PREFIX = "model-", "worker-"


def _boot_id() -> str:
    """Which kernel's CLOCK_MONOTONIC a trip time was read on (one per host, containers included)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return f"pid-{os.getpid()}"  # unknown: only this process trusts its own monotonic times


BOOT_ID = _boot_id()


def fingerprint(cfg: RoutingConfig | None) -> dict | None:
    """The model.yaml routing section a record belongs to: a changed file voids the record."""
    return cfg.model_dump(mode="json") if cfg is not None else None


@dataclass(slots=True)
class RoutingRecord:
    """The fleet's routing state of one model. ``trips`` and ``resets`` carry the record version
    that made them; a reset removes the trip it undoes, so a trip present is a trip in force."""

    version: int = 0
    file: dict | None = None
    admin: dict | None = None
    trips: dict[str, dict] = field(default_factory=dict)  # canary -> {reason, at_ns, at_unix, record}
    resets: dict[str, int] = field(default_factory=dict)  # canary -> record version of its last reset
    written_by: int = -1
    written_at: float = 0.0  # unix time, for the propagation delay in the logs
    writer: str = ""  # the channel member that wrote it ("worker 1", "replica host/pid/id"), for the logs

    def to_json(self) -> dict:
        return {"version": self.version, "file": self.file, "admin": self.admin, "trips": self.trips,
                "resets": self.resets, "written_by": self.written_by, "written_at": self.written_at,
                "writer": self.writer}

    @classmethod
    def from_json(cls, doc: dict) -> RoutingRecord:
        return cls(int(doc["version"]), doc.get("file"), doc.get("admin"), dict(doc.get("trips") or {}),
                   {k: int(v) for k, v in (doc.get("resets") or {}).items()},
                   int(doc.get("written_by", -1)), float(doc.get("written_at", 0.0)), str(doc.get("writer", "")))

    # -- changes (made under the lock, on the record read there) --------------------------

    def voided_for(self, file: dict | None) -> None:
        """Start afresh when the record was made for another model.yaml routing section."""
        if self.file != file:
            self.file, self.admin, self.trips, self.resets = file, None, {}, {}

    def set_admin(self, cfg: RoutingConfig | None) -> None:
        self.admin = cfg.model_dump(mode="json") if cfg is not None else None

    def add_trip(self, version: str, trip: Trip) -> bool:
        if version in self.trips:
            return False  # another worker's guard said it first: its reason stands
        at_unix = time.time() - (time.monotonic_ns() - trip.at_ns) / 1e9
        self.trips[version] = {"reason": trip.reason, "at_ns": trip.at_ns, "at_unix": at_unix,
                               "boot": BOOT_ID, "record": self.version + 1}
        return True

    def reset(self, versions: list[str] | None) -> None:
        for v in list(self.trips) if versions is None else versions:
            self.trips.pop(v, None)
            self.resets[v] = self.version + 1


def apply_record(router: Router, record: RoutingRecord, applied: int) -> bool:
    """Bring ``router`` (which has applied records up to ``applied``) to ``record``'s state.
    Only uses the router's public operations; returns whether anything changed."""
    changed = False
    admin = RoutingConfig.model_validate(record.admin) if record.admin is not None else None
    if fingerprint(admin) != fingerprint(router.admin_config):
        router.set_admin_config(admin)
        changed = True
    # Resets newer than what this router has seen, then the trips in force (a reset removed
    # the trips it undid, so what is left happened after it).
    newer_resets = [v for v, at in record.resets.items() if at > applied]
    if newer_resets and router.reset(newer_resets):
        changed = True
    for v, doc in record.trips.items():
        trip = Trip(str(doc["reason"]), trip_time_ns(doc))
        if v not in router.tripped:
            router.trip(v, trip.reason, trip.at_ns, announce=False)
            changed = True
        elif router.tripped[v] != trip:
            # Two workers' guards tripped it at once: the first written is the fleet's (one rollback).
            router.tripped[v] = trip
            changed = True
    return changed


def trip_time_ns(doc: dict) -> int:
    """A record's trip time on this process's monotonic clock. CLOCK_MONOTONIC is one clock for the
    whole host, so a trip made on this host keeps its exact time in every process; one made on
    another host (a replica) is placed by its wall-clock time."""
    if doc.get("boot", BOOT_ID) == BOOT_ID:
        return int(doc["at_ns"])
    ago_ns = int((time.time() - float(doc["at_unix"])) * 1e9)
    return time.monotonic_ns() - max(0, ago_ns)


def _atomic_write(path: str, doc: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None  # gone (a restart) or not there yet


@dataclass(slots=True)
class Snapshot:
    """One poll's reading of the directory."""

    records: dict[str, RoutingRecord]
    peers: list[dict]  # the other workers' published documents


Change = Callable[[RoutingRecord], bool | None]


class FleetChannel(Protocol):
    """Where the fleet's routing records and the members' documents live, as traffic.py uses it.

    ``records`` is the latest state known of each model's record, ``peers`` the other members'
    latest documents ({"pid", "index", "name", "models": {model: worker_entry(...)}, and one key
    per entry of ``parts``}), both updated before each ``on_poll``. ``parts`` are further parts of
    this member's document (drift counts: gateway.service.fleet_drift), each made on the loop
    before a publication; ``reachable`` says whether the last exchange reached the store. ``update`` is a read-modify-write of one record that never loses a
    concurrent change and only grows the version; it raises ``OSError`` or
    ``FleetStateUnavailableError`` when the change did not reach the store."""

    index: int
    pid: int
    member: str
    records: dict[str, RoutingRecord]
    peers: list[dict]
    parts: dict[str, Callable[[], Any]]
    reachable: bool

    async def start(self, snapshot: Callable[[], dict], on_poll: Callable[[Snapshot], None]) -> None: ...

    async def update(self, model: str, change: Change) -> RoutingRecord: ...

    async def stop(self) -> None: ...

    def health(self) -> dict: ...


class FleetState:
    """The channel: records and worker documents in ``<directory>/routing``. Blocking file work
    runs in a thread; ``start`` runs the poll that hands each reading to ``on_poll`` on the loop."""

    def __init__(self, directory: str, index: int) -> None:
        self.directory = os.path.join(directory, "routing")
        os.makedirs(self.directory, exist_ok=True)
        self.index = index
        self.pid = os.getpid()
        self.member = f"worker {index}"
        self.parts: dict[str, Callable[[], Any]] = {}
        self.reachable = True  # a local directory: always
        self.peers: list[dict] = []
        self.records: dict[str, RoutingRecord] = {}
        self._published: dict | None = None
        self._task: asyncio.Task | None = None

    # -- records -----------------------------------------------------------------------

    def _record_path(self, model: str) -> str:
        return os.path.join(self.directory, _RECORD_PREFIX + quote(model, safe="") + ".json")

    def read_record(self, model: str) -> RoutingRecord:
        doc = _read_json(self._record_path(model))
        return RoutingRecord.from_json(doc) if doc else RoutingRecord()

    def update_blocking(self, model: str, change: Callable[[RoutingRecord], bool | None]) -> RoutingRecord:
        """Read-modify-write of one model's record under an exclusive lock; a change that returns
        False leaves the record as it was (no new version)."""
        with open(os.path.join(self.directory, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = self.read_record(model)
                if change(record) is False:
                    return record
                record.version += 1
                record.written_by, record.written_at, record.writer = self.index, time.time(), self.member
                _atomic_write(self._record_path(model), record.to_json())
                return record
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def update(self, model: str, change: Callable[[RoutingRecord], bool | None]) -> RoutingRecord:
        record = await asyncio.to_thread(self.update_blocking, model, change)
        self.records[model] = record
        return record

    # -- worker documents ----------------------------------------------------------------

    def _poll_blocking(self, doc: dict) -> Snapshot:
        if doc != self._published:
            _atomic_write(os.path.join(self.directory, f"{_WORKER_PREFIX}{self.index}.json"), doc)
            self._published = doc
        records, peers = {}, []
        for entry in os.listdir(self.directory):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.directory, entry)
            if entry.startswith(_RECORD_PREFIX):
                got = _read_json(path)
                if got is not None:
                    try:
                        records[unquote(entry[len(_RECORD_PREFIX):-5])] = RoutingRecord.from_json(got)
                    except (KeyError, TypeError, ValueError):
                        _log.warning("fleet routing record %s is unreadable; ignored", entry)
            elif entry.startswith(_WORKER_PREFIX) and entry != f"{_WORKER_PREFIX}{self.index}.json":
                got = _read_json(path)
                if got is not None:
                    peers.append(got)
        return Snapshot(records, peers)

    async def start(self, snapshot: Callable[[], dict], on_poll: Callable[[Snapshot], None]) -> None:
        """``snapshot`` (on the loop) is this worker's document to publish; ``on_poll`` (on the loop)
        gets each reading. The first reading is done when this returns: a worker that has just
        (re)started routes by the fleet's state from its first request."""

        async def poll() -> None:
            try:
                doc = member_document(self, snapshot())
                got = await asyncio.to_thread(self._poll_blocking, doc)
                self.records, self.peers = got.records, got.peers
                on_poll(got)
            except OSError as exc:
                _log.warning("fleet routing state: %s", exc)
            except Exception:  # noqa: BLE001 - the poll must outlive a bad record
                _log.exception("fleet routing state: poll failed")

        async def loop() -> None:
            while True:
                await asyncio.sleep(POLL_INTERVAL_S)
                await poll()

        await poll()
        self._task = asyncio.get_running_loop().create_task(loop(), name="fleet-state")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def health(self) -> dict:
        return {"store": "directory", "member": self.member}


def member_document(channel: FleetChannel, models: dict) -> dict:
    """What a member publishes: who it is, its routing part and the further ``parts``."""
    doc = {"pid": channel.pid, "index": channel.index, "name": channel.member, "models": models}
    for key, part in channel.parts.items():
        doc[key] = part()
    return doc


def peer_windows(peers: list[dict], model: str, applied: int) -> dict[str, WindowCounts]:
    """The other workers' guard window counts of ``model``, summed per canary: only from workers
    that have applied record ``applied`` or later (counts from before a reset must not re-trip)."""
    out: dict[str, WindowCounts] = {}
    for doc in peers:
        entry = (doc.get("models") or {}).get(model)
        if not entry or int(entry.get("record", 0)) < applied:
            continue
        for v, counts in (entry.get("windows") or {}).items():
            try:
                c = WindowCounts.from_json(counts)
            except (KeyError, TypeError, ValueError):
                continue
            out.setdefault(v, WindowCounts()).add(c)
    return out


COUNTER_FIELDS = ("routed", "succeeded", "failed", "fell_back", "answered_as_fallback")


def peer_counters(peers: list[dict], model: str) -> dict[str, dict[str, int]]:
    """The other workers' routing counters of ``model``, summed per version."""
    out: dict[str, dict[str, int]] = {}
    for doc in peers:
        entry = (doc.get("models") or {}).get(model)
        for v, counters in ((entry or {}).get("counters") or {}).items():
            total = out.setdefault(v, dict.fromkeys(COUNTER_FIELDS, 0))
            for f in COUNTER_FIELDS:
                total[f] += int(counters.get(f, 0))
    return out


def worker_entry(router: Router, applied: int, now_ns: int) -> dict[str, Any]:
    """What this worker publishes about one model's router."""
    return {
        "record": applied,
        "windows": {v: c.to_json() for v, c in router.guard_windows(now_ns).items()},
        "counters": {v: {f: getattr(c, f) for f in COUNTER_FIELDS} for v, c in router.counters.items()},
    }
