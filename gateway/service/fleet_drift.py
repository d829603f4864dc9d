"""Drift merged over the fleet (``--workers N``: the host's workers; ``state_url``: the replicas).

Rides on the routing state's channel (gateway.service.fleet_state / fleet_redis): this
member's counts go out as the ``drift`` part of its document, and each reading of the
other members' documents is summed into merged windows (gateway.monitoring.drift.fleet).
Every version's report then shows the leader's merged verdict. When the store is out
of reach (Redis down), the merge degrades to this member's own traffic, counted and
logged once per outage, and heals when the store answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from gateway.monitoring.drift import VersionDrift
from gateway.monitoring.drift.fleet import FleetWindow, MemberCounts, leader_of, member_entry, parse_entry
from gateway.monitoring.drift.monitor import FleetView
from gateway.service.fleet_state import FleetChannel, Snapshot
from gateway.service.models import ModelManager

_log = logging.getLogger(__name__)
PART = "drift"


class FleetDrift:
    def __init__(self, manager: ModelManager, channel: FleetChannel) -> None:
        self.manager = manager
        self.channel = channel
        self.windows: dict[tuple[str, str], FleetWindow] = {}
        self.outages = 0  # times the merge fell back to this member's own traffic
        self._alone = False

    def _monitors(self) -> Iterator[tuple[str, str, VersionDrift]]:
        for name, versions in self.manager.serving.items():
            for version, loaded in versions.items():
                if loaded.drift is not None:
                    yield name, version, loaded.drift

    def document(self) -> dict:
        """This member's ``drift`` part: per model and version, its counts and merged verdict."""
        out: dict[str, dict] = {}
        for name, version, monitor in self._monitors():
            entry = member_entry(monitor, self.windows.get((name, version)))
            if entry is not None:
                out.setdefault(name, {})[version] = entry
        return out

    def on_poll(self, snapshot: Snapshot) -> None:
        reachable = self.channel.reachable
        if reachable == self._alone:
            self._alone = not reachable
            if self._alone:
                self.outages += 1
                _log.warning("drift: the fleet's state store is out of reach; each version's drift is judged on "
                             "this member's traffic alone until it answers (outage %d)", self.outages)
            else:
                _log.info("drift: the fleet's state store answers again; drift is merged over the fleet")
        now = time.monotonic_ns()
        live = set()
        for name, version, monitor in self._monitors():
            monitor.alerting = False  # the merged windows alert, once, from the leader
            shared, layout = monitor.shared, monitor.layout
            if monitor.state != "monitoring" or shared is None or layout is None or shared[1].shape != (layout.width,):
                monitor.fleet = None  # not monitoring, or its reference is being replaced right now
                continue
            key = monitor.share_key
            window = self.windows.get((name, version))
            if window is None or window.key != key:
                window = self.windows[(name, version)] = FleetWindow(name, version, monitor.cfg, layout, key, now)
            live.add((name, version))
            me = MemberCounts(self.channel.member, self.channel.index, key, monitor.epoch, shared[0], shared[1],
                              None, 0)
            members = [me]
            if reachable:
                members += self._peers(snapshot.peers, name, version, key, layout.width)
            leader = leader_of(members)
            window.feed(members, now, log_alerts=leader is me)
            verdict, closed = (window.latest, window.windows_closed) if leader is me else (leader.verdict, leader.windows)
            monitor.fleet = FleetView("fleet" if reachable else "process", me.member, leader.member, len(members),
                                      sum(m.rows for m in members), closed, verdict)
        for gone in set(self.windows) - live:
            del self.windows[gone]

    @staticmethod
    def _peers(peers: list[dict], name: str, version: str, key: str, width: int) -> list[MemberCounts]:
        out = []
        for doc in peers:
            entry = ((doc.get(PART) or {}).get(name) or {}).get(version)
            if not isinstance(entry, dict):
                continue
            index = doc.get("index", 0)
            if not isinstance(index, int):
                continue
            parsed = parse_entry(str(doc.get("name") or f"pid {doc.get('pid')}"), index, entry, width)
            if parsed is not None and parsed.key == key:
                out.append(parsed)
        return out

    def leave(self) -> None:
        """Back to per-process drift (the channel stopped)."""
        for _, _, monitor in self._monitors():
            monitor.fleet = None
            monitor.alerting = True
