"""Routing control state shared by replicas on Redis (``state_url``): the FleetChannel across hosts.

What the directory channel (gateway.service.fleet_state) keeps per host, this one keeps for every
gateway process on one Redis (replicas behind a Service, and the workers of each)::

    gw:routing:model:<model>    one model's RoutingRecord as JSON, version included. Written by
                                read-modify-write under WATCH/MULTI: a concurrent write makes the
                                transaction fail and the change is made again on the newer record,
                                so no change is lost and versions only grow.
    gw:routing:models           the set of models that have a record (for the re-read).
    gw:routing:member:<id>      what member <id> publishes (its guard window counts per canary,
                                its counters, the record version it applied), with a TTL of
                                ``member_ttl_s``, refreshed every ``exchange_s``: a dead
                                replica's counts leave the fleet's windows by themselves.
    gw:routing:members          the set of member ids (pruned of members whose key expired).
    gw:routing:changes          pub/sub channel: {"model": m, "version": v} after every write, in
                                the write's transaction; members fetch that record at once.

Every ``reread_s`` (and after every resubscription) each member re-reads every record, so a
missed announcement heals; a record Redis has lost or holds at an older version than this member
has seen (Redis restarted empty) is written back, so versions never go backwards.

Failure rules (as the shared cache's): serving never touches Redis; every call is bounded by
``timeout_s``; while Redis is slow or down the last known routing stays in force, the rollback
guard judges this member's own window (counted in ``failures``, logged once per outage and at
most once a minute), and a change made here (an admin call, a trip of this member's guard) is in
force here at once, queued, and written when Redis answers again; the admin call is answered
with ``FleetStateUnavailableError`` (HTTP 503) saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from gateway.core.errors import FleetStateUnavailableError
from gateway.core.secrets import redact_url
from gateway.service.fleet_state import Change, RoutingRecord, Snapshot, member_document

_log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_PREFIX = "gw:routing:"
TIMEOUT_S = 0.5  # bound of one Redis call (an admin call waits at most this for the fleet)
EXCHANGE_S = 0.1  # this member's window counts out, the others' in
REREAD_S = 1.0  # every record read again: heals an announcement missed
MEMBER_TTL_S = 3.0  # a member's counts outlive its last refresh this long
LOG_EVERY_S = 60.0  # outages are logged at most this often
MAX_PENDING = 256  # queued changes kept while Redis is down (the oldest go first)
_WRITE_ATTEMPTS = 64  # in practice the call's timeout bounds the attempts


class StoreError(Exception):
    """One call to Redis failed or took longer than its bound."""


class RedisFleetState:
    def __init__(
        self,
        url: str,
        index: int = 0,
        *,
        timeout_s: float = TIMEOUT_S,
        exchange_s: float = EXCHANGE_S,
        reread_s: float = REREAD_S,
        member_ttl_s: float = MEMBER_TTL_S,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)  # logs and the status: never the password
        self.index = index
        self.pid = os.getpid()
        # Unique even for two gateways in one process (tests) or a pid reused by a restart.
        self.member_id = f"{socket.gethostname()}/{self.pid}/{secrets.token_hex(3)}"
        self.member = f"replica {self.member_id}"
        self.timeout_s, self.exchange_s, self.reread_s, self.member_ttl_s = timeout_s, exchange_s, reread_s, member_ttl_s
        self.records: dict[str, RoutingRecord] = {}
        self.peers: list[dict] = []
        self.parts: dict[str, Callable[[], Any]] = {}
        self.pending: list[tuple[str, Change]] = []
        self.reachable = True
        self.failures = 0  # calls that failed or timed out
        self.outages = 0
        self._down_since = 0.0
        self._last_logged = -LOG_EVERY_S
        self._reread_due = True
        self._prefix = prefix
        self._models_key, self._members_key, self._channel = prefix + "models", prefix + "members", prefix + "changes"
        pool = BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=timeout_s, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            # One retry on a fresh connection: after a Redis restart the pooled ones are dead. The
            # call's timeout still bounds both tries.
            retry=Retry(NoBackoff(), 1), health_check_interval=0,
        )
        self.client = Redis(connection_pool=pool)
        self._snapshot: Callable[[], dict] = dict
        self._on_poll: Callable[[Snapshot], None] = lambda _: None
        self._tasks: list[asyncio.Task] = []

    # -- keys ----------------------------------------------------------------------------

    def _record_key(self, model: str) -> str:
        return f"{self._prefix}model:{quote(model, safe='')}"

    def _member_key(self, member_id: str) -> str:
        return f"{self._prefix}member:{member_id}"

    # -- every call bounded, failures counted -----------------------------------------------

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StoreError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if not self.reachable:
            self.reachable = True
            self._reread_due = True
            # The idle pooled connections are to the server that went away.
            await self.client.connection_pool.disconnect(inuse_connections=False)
            _log.warning("fleet routing state %s is reachable again after %.1f s; the guard judges the fleet's "
                         "window again", self.display_url, time.monotonic() - self._down_since)
        return result

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.peers = []  # the guard judges this member's own window until Redis answers
        if not self.reachable:
            return
        self.reachable = False
        self.outages += 1
        now = self._down_since = time.monotonic()
        if now - self._last_logged >= LOG_EVERY_S:
            self._last_logged = now
            _log.warning("fleet routing state %s unreachable (%s: %s): the last known routing stays in force, the "
                         "rollback guard counts this replica's requests only, and changes made here are written "
                         "when it answers again (outage %d; logged at most once a minute)",
                         self.display_url, type(exc).__name__, exc, self.outages)

    # -- records -----------------------------------------------------------------------

    def _take(self, model: str, record: RoutingRecord) -> bool:
        known = self.records.get(model)
        if known is not None and known.version >= record.version:
            return False
        self.records[model] = record
        return True

    async def _read_modify_write(self, model: str, change: Change) -> RoutingRecord:
        key = self._record_key(model)
        async with self.client.pipeline(transaction=True) as pipe:
            for attempt in range(_WRITE_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    record = self._newest(model, _parse(await pipe.get(key)))
                    if change(record) is False:
                        await pipe.unwatch()
                        return record
                    record.version += 1
                    record.written_by, record.written_at, record.writer = self.index, time.time(), self.member
                    self._queue_write(pipe, model, record)
                    await pipe.execute()
                    return record
                except WatchError:
                    # Another member wrote in between: make the change again on its record, after a
                    # random pause (without one, the same writer would win every race on one loop).
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise RedisError(f"the record of model '{model}' changed under {_WRITE_ATTEMPTS} writes in a row")

    def _newest(self, model: str, stored: RoutingRecord | None) -> RoutingRecord:
        """What a change is made on: Redis's record, or this member's when Redis has lost it or holds
        an older one (restarted empty), so a new version is always above every version seen."""
        known = self.records.get(model)
        if known is not None and (stored is None or stored.version < known.version):
            return RoutingRecord.from_json(known.to_json())
        return stored or RoutingRecord()

    def _queue_write(self, pipe, model: str, record: RoutingRecord) -> None:
        pipe.multi()
        pipe.set(self._record_key(model), json.dumps(record.to_json()))
        pipe.sadd(self._models_key, model)
        pipe.publish(self._channel, json.dumps({"model": model, "version": record.version}))

    async def update(self, model: str, change: Change) -> RoutingRecord:
        """The change, written for the fleet; while Redis does not answer it is queued (and in force
        here already: the caller made it on its router first) and FleetStateUnavailableError says so."""
        try:
            if self.pending:
                await self._flush()  # older changes first: the fleet sees them in the order made
            record = await self._call(lambda: self._read_modify_write(model, change))
        except StoreError as exc:
            self._enqueue(model, change)
            raise FleetStateUnavailableError(
                f"the routing change of model '{model}' is in force on this replica only: the fleet's routing "
                f"state at {self.display_url} did not answer ({exc}); it is queued and written there when Redis "
                f"answers again, and the other replicas follow then"
            ) from None
        self._take(model, record)
        return record

    def _enqueue(self, model: str, change: Change) -> None:
        self.pending.append((model, change))
        if len(self.pending) > MAX_PENDING:
            dropped, _ = self.pending.pop(0)
            _log.error("fleet routing state: more than %d changes queued; the oldest (model %s) is dropped",
                       MAX_PENDING, dropped)

    async def _flush(self) -> None:
        while self.pending:
            model, change = self.pending[0]
            record = await self._call(lambda: self._read_modify_write(model, change))
            self.pending.pop(0)
            self._take(model, record)
            _log.warning("fleet routing state: the change of model %s queued while Redis was unreachable is "
                         "written (record %d)", model, record.version)

    async def _read_all(self) -> None:
        """Every record; a record Redis lacks or holds older than seen here is written back."""
        names = {_text(m) for m in await self.client.smembers(self._models_key)} | set(self.records)
        ordered = sorted(names)
        raws = await self.client.mget([self._record_key(m) for m in ordered]) if ordered else []
        behind = []
        for model, raw in zip(ordered, raws):
            stored = _parse(raw)
            if stored is not None:
                self._take(model, stored)
            known = self.records.get(model)
            if known is not None and (stored is None or stored.version < known.version):
                behind.append(model)
        for model in behind:
            await self._write_back(model, self.records[model])

    async def _write_back(self, model: str, record: RoutingRecord) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._record_key(model))
                stored = _parse(await pipe.get(self._record_key(model)))
                if stored is not None and stored.version >= record.version:
                    await pipe.unwatch()
                    return
                self._queue_write(pipe, model, record)
                await pipe.execute()
            except WatchError:
                return  # someone wrote meanwhile: theirs is newer
        _log.warning("fleet routing state: Redis had lost record %d of model %s; written back", record.version, model)

    async def _announced(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
            model, version = str(doc["model"]), int(doc["version"])
        except (ValueError, KeyError, TypeError):
            _log.warning("fleet routing state: unreadable announcement %r ignored", data[:200])
            return
        known = self.records.get(model)
        if known is not None and known.version >= version:
            return  # this member's own write, or already read
        record = _parse(await self._call(lambda: self.client.get(self._record_key(model))))
        if record is not None and self._take(model, record):
            self._on_poll(Snapshot(self.records, self.peers))

    # -- members ----------------------------------------------------------------------------

    async def _exchange(self, doc: dict) -> list[dict]:
        """Publish this member's document (TTL refreshed); read the other members' documents."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._member_key(self.member_id), json.dumps(doc), px=int(self.member_ttl_s * 1000))
            pipe.sadd(self._members_key, self.member_id)
            pipe.smembers(self._members_key)
            *_, members = await pipe.execute()
        others = sorted(_text(m) for m in members if _text(m) != self.member_id)
        if not others:
            return []
        raws = await self.client.mget([self._member_key(m) for m in others])
        gone = [m for m, raw in zip(others, raws) if raw is None]
        if gone:
            await self.client.srem(self._members_key, *gone)  # expired: a member that died
        peers = []
        for raw in raws:
            if raw is not None:
                with contextlib.suppress(ValueError):
                    peers.append(json.loads(raw))
        return peers

    # -- the loops ---------------------------------------------------------------------------

    async def _round(self, full: bool) -> None:
        try:
            if self.pending:
                await self._flush()
            if full or self._reread_due:
                self._reread_due = False
                await self._call(self._read_all)
            doc = {**member_document(self, self._snapshot()), "member": self.member_id}
            self.peers = await self._call(lambda: self._exchange(doc))
        except StoreError:
            self._reread_due = True
        self._on_poll(Snapshot(self.records, self.peers))

    async def start(self, snapshot: Callable[[], dict], on_poll: Callable[[Snapshot], None]) -> None:
        """As FleetState.start: the first reading is done (or has failed, bounded) when this returns."""
        self._snapshot, self._on_poll = snapshot, on_poll
        await self._round(full=True)
        if not self.reachable:
            _log.warning("fleet routing state %s: starting without it; this replica routes by its model.yaml "
                         "until Redis answers", self.display_url)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._exchange_loop(), name="fleet-state-redis"),
                       loop.create_task(self._listen_loop(), name="fleet-state-redis-changes")]

    async def _exchange_loop(self) -> None:
        next_full = time.monotonic() + self.reread_s
        while True:
            await asyncio.sleep(self.exchange_s)
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + self.reread_s
            try:
                await self._round(full)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad record
                _log.exception("fleet routing state: round failed")

    async def _listen_loop(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._call(lambda: pubsub.subscribe(self._channel))
                self._reread_due = True  # what was announced while this member did not listen
                while True:
                    # Bounded: get_message waits at most its timeout for an announcement.
                    message = await self._call_listening(pubsub)
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # redis-py's own read timeout can take a cancellation for its expiry and
                        # return None: the stop asked for must still end this loop.
                        raise asyncio.CancelledError
                    if message is not None and message.get("type") == "message":
                        await self._announced(message["data"])
            except StoreError:
                pass  # counted and logged by _call; the exchange loop notices the outage too
            except Exception:  # noqa: BLE001
                _log.exception("fleet routing state: listening failed")
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout_s):
                        await pubsub.aclose()
            await asyncio.sleep(max(self.exchange_s, 0.2))  # then subscribe again

    async def _call_listening(self, pubsub) -> dict | None:
        try:
            async with asyncio.timeout(self.reread_s + self.timeout_s):
                return await pubsub.get_message(timeout=self.reread_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StoreError(str(exc)) from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.reread_s + 2 * self.timeout_s)
        self._tasks = []
        # This member's counts leave the fleet now rather than at their TTL; a failure here is harmless.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s):
                await self.client.delete(self._member_key(self.member_id))
                await self.client.srem(self._members_key, self.member_id)
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def health(self) -> dict:
        return {"store": "redis", "url": self.display_url, "member": self.member, "reachable": self.reachable,
                "failures": self.failures, "outages": self.outages, "pending_writes": len(self.pending)}


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _parse(raw: bytes | str | None) -> RoutingRecord | None:
    if raw is None:
        return None
    try:
        return RoutingRecord.from_json(json.loads(raw))
    except (KeyError, TypeError, ValueError):
        _log.warning("fleet routing state: an unreadable record in Redis is ignored")
        return None
