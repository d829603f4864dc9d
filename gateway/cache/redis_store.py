"""Shared tier on a Redis server: every wait bounded, a breaker, reconnects by itself.

A slow or dead Redis must cost a request at most ``timeout_s``, and only
while it is being probed: after ``failure_threshold`` failures in a row the
tier is skipped (``TierDown``) for a back-off that doubles while probes keep
failing; the first request after the back-off probes again with a fresh
connection. One failure alone does not switch the tier off: on a busy event
loop a few-ms bound is sometimes missed with Redis perfectly healthy. Callers
turn both exceptions into a miss; a request never fails because of the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from gateway.core.secrets import redact_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

_log = logging.getLogger(__name__)

T = TypeVar("T")


class TierError(Exception):
    """An operation on the shared tier failed or timed out."""


class TierDown(Exception):
    """The shared tier is backing off after a failure; nothing was sent."""


class RedisStore:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        *,
        retry_min_s: float = 0.2,
        retry_max_s: float = 2.0,
        max_connections: int = 32,
        failure_threshold: int = 3,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)  # what logs and errors show: never the password
        self.timeout_s = timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        # redis is imported here, by the daemons that use it: half a second of every start otherwise.
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError, TimeoutError)
        # The connection pool waits for a free connection no longer than an operation may take.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # one try: a retry would double the bounded wait
            health_check_interval=0,
        )
        self.client = Redis(connection_pool=pool)
        self.up = True
        self._down_until = 0.0
        self._backoff_s = retry_min_s
        self._probing = False
        self.failure_threshold = failure_threshold
        self._failures_in_row = 0
        self.failures = 0
        self.recoveries = 0

    async def call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one operation (one round trip) under the time bound and the breaker."""
        probe = False
        if not self.up:
            if self._probing or time.monotonic() < self._down_until:
                raise TierDown(self.display_url)
            self._probing = probe = True
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await op(self.client)
        except self._errors as exc:
            self._failed(exc, probe)
            raise TierError(f"{type(exc).__name__}: {exc}") from None
        finally:
            if probe:
                self._probing = False
        self._failures_in_row = 0
        if not self.up:
            self.up = True
            self._backoff_s = self.retry_min_s
            self.recoveries += 1
            _log.warning("shared cache %s is reachable again", self.display_url)
        return result

    def _failed(self, exc: BaseException, probe: bool) -> None:
        self.failures += 1
        self._failures_in_row += 1
        if self.up:
            if self._failures_in_row < self.failure_threshold:
                return
            self.up = False
            self._backoff_s = self.retry_min_s
            _log.warning("shared cache %s failed (%s: %s); answering without it, retrying in %.1fs",
                         self.display_url, type(exc).__name__, exc, self._backoff_s)
        elif probe:
            self._backoff_s = min(self._backoff_s * 2, self.retry_max_s)
        self._down_until = time.monotonic() + self._backoff_s

    async def close(self) -> None:
        await self.client.aclose()
