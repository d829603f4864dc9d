"""Polls the local model repository and lets the model manager follow it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.core.tasks import cancel_and_wait
from gateway.service.models import ModelManager

_log = logging.getLogger(__name__)


class RepositoryWatcher:
    """Async context manager running one polling task; a failed scan never stops it."""

    def __init__(self, manager: ModelManager, interval_s: float, on_change: Callable[[], Awaitable[None]]) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self.on_change = on_change
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RepositoryWatcher:
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="repository-watcher")
        return self

    async def __aexit__(self, *exc) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.manager.reconcile()
                await self.on_change()
            except Exception:  # noqa: BLE001 - keep watching whatever one scan hit
                _log.exception("repository scan failed")
