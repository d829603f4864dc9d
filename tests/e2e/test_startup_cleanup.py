"""The composition root (gateway.daemon.started), in this process: a start that fails half-way
stops what had started, and a normal exit leaves no port, task or thread behind."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

import pytest

from gateway.core.settings import ServerSettings
from gateway.daemon import started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _settings(repository, grpc_port: int, http_port: int) -> ServerSettings:
    return ServerSettings(
        model_repository=str(repository), host="127.0.0.1", grpc_port=grpc_port, http_port=http_port,
        repository_poll_s=0.2, grace_period_s=2,
    )


def _gateway_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread()}


def test_a_start_failing_half_way_leaves_nothing_running(model_repo):
    before = _gateway_threads()
    grpc_port = _free_port()
    with socket.socket() as taken:  # the HTTP port is taken: the gRPC server has started by then
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]

        async def main() -> list[asyncio.Task]:
            with pytest.raises(OSError):
                async with started(_settings(model_repo, grpc_port, http_port)):
                    pytest.fail("started() yielded although the HTTP port was taken")
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        left_tasks = asyncio.run(main())
    assert left_tasks == []
    assert _refused(grpc_port), "the gRPC server started before the failure is still listening"
    leaked = {t for t in _gateway_threads() - before if t.is_alive()}
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"


def test_a_served_daemon_stops_cleanly(model_repo):
    before = _gateway_threads()

    async def main() -> tuple[int, int, bytes, list[asyncio.Task]]:
        async with started(_settings(model_repo, 0, 0)) as running:
            url = f"http://127.0.0.1:{running.http_port}/v2/models/mlp/ready"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert running.service.ready
            ports = running.grpc_port, running.http_port
        assert not running.service.accepting
        assert running.service.models.serving == {}, "the models were not unloaded"
        return (*ports, body, [t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    grpc_port, http_port, body, left_tasks = asyncio.run(main())
    assert b'"ready": true' in body
    assert left_tasks == []
    assert _refused(grpc_port) and _refused(http_port)
    leaked = {t for t in _gateway_threads() - before if t.is_alive()}
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"
