"""In-process tier: an LRU bounded by bytes, with a TTL per entry.

Synchronous and lock-free: it is only touched from the event loop. The clock
is passed in (monotonic ns) so tests can step it.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.cache.entry import CachedResponse


class MemoryStore:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, tuple[CachedResponse, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now_ns: int) -> CachedResponse | None:
        item = self._entries.get(key)
        if item is None:
            return None
        entry, expires_ns = item
        if expires_ns <= now_ns:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def remaining_ns(self, key: bytes, now_ns: int) -> int:
        item = self._entries.get(key)
        return 0 if item is None else max(0, item[1] - now_ns)

    def put(self, key: bytes, entry: CachedResponse, ttl_ns: int, now_ns: int) -> bool:
        """False when the entry alone is larger than the bound (it is not kept)."""
        if entry.nbytes > self.max_bytes or ttl_ns <= 0:
            return False
        if key in self._entries:
            self._drop(key)
        self._purge_expired_front(now_ns)
        self._entries[key] = (entry, now_ns + ttl_ns)
        self.bytes += entry.nbytes
        self._shrink(self.max_bytes)
        return True

    def resize(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._shrink(max_bytes)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _shrink(self, limit: int) -> None:
        while self.bytes > limit:
            _, (old, _) = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1

    def _purge_expired_front(self, now_ns: int) -> None:
        # Entries of one model share a TTL, so the least recently used are
        # usually the first to expire: dropping them here keeps dead bytes low
        # without a sweeper task.
        while self._entries:
            key, (_, expires_ns) = next(iter(self._entries.items()))
            if expires_ns > now_ns:
                return
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        entry, _ = self._entries.pop(key)
        self.bytes -= entry.nbytes
