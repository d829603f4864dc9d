"""``gateway serve --workers N``: N worker processes on the same ports, kept alive.

Each worker is a whole daemon (its own uvloop, servers and executors) bound
with SO_REUSEPORT, so the kernel spreads connections across them. The
supervisor only starts workers, restarts one that dies, and on SIGTERM/SIGINT
passes the signal on and waits for every worker to drain.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from gateway.api.limits import concurrency_shares
from gateway.core.settings import ServerSettings
from gateway.monitoring.logs import configure_logging

_log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300
RESTART_BACKOFF_S = (0.1, 0.5, 1, 2, 5)


def _worker_main(settings_doc: dict, index: int, count: int, stats_dir: str, ready) -> None:
    import uvloop

    from gateway.daemon import WorkerRole, serve, setup_logging

    settings = ServerSettings.model_validate(settings_doc)
    setup_logging(settings, role=f"worker {index}")
    settings.apply_to_interpreter()
    uvloop.run(serve(settings, WorkerRole(index, stats_dir, ready, count)))


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """A free port, held (bound, not listening) so nothing else takes it before the workers bind."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock, sock.getsockname()[1]


class Supervisor:
    def __init__(self, settings: ServerSettings) -> None:
        self.held: list[socket.socket] = []
        grpc_port, http_port = settings.grpc_port, settings.http_port
        if grpc_port == 0:
            sock, grpc_port = _reserve_port(settings.host)
            self.held.append(sock)
        if http_port == 0:
            sock, http_port = _reserve_port(settings.host)
            self.held.append(sock)
        self.settings = settings.model_copy(update={"grpc_port": grpc_port, "http_port": http_port, "workers": 1})
        self.count = settings.workers
        self.stats_dir = tempfile.mkdtemp(prefix="gateway-workers-")
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.pipes: dict[int, Connection] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False

    def start_worker(self, index: int) -> None:
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker_main,
            args=(self.settings.model_dump(), index, self.count, self.stats_dir, send),
            name=f"gateway-worker-{index}",
        )
        proc.start()
        send.close()
        self.procs[index] = proc
        self.pipes[index] = receive

    def log_limits(self) -> None:
        """max_concurrent_requests holds for the host: say how it is split between the workers."""
        limit = self.settings.max_concurrent_requests
        if not limit:
            return
        shares = concurrency_shares(limit, self.count)
        _log.info("max_concurrent_requests %d for the host, per protocol: worker shares %s", limit,
                  "+".join(str(n) for n in shares))
        if sum(shares) > limit:
            _log.warning("max_concurrent_requests %d is below --workers %d: each worker admits 1, the host up to %d",
                         limit, self.count, sum(shares))

    def wait_ready(self, indices: list[int]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = {self.pipes[i]: i for i in indices}
        while pending and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for conn in wait(list(pending), timeout=min(left, 1.0)):
                assert isinstance(conn, Connection)  # wait() hands back the pipes it was given
                index = pending.pop(conn)
                try:
                    conn.recv()
                except EOFError:
                    _log.error("worker %d exited before it was ready", index)
                    return False
        return not pending

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.log_limits()
        for i in range(self.count):
            self.start_worker(i)
        if not self.wait_ready(list(range(self.count))):
            _log.error("workers did not become ready; stopping")
            self.stop()
            return 1
        for sock in self.held:
            sock.close()
        s = self.settings
        _log.info("listening grpc=%s:%d http=%s:%d (%d workers)", s.host, s.grpc_port, s.host, s.http_port, self.count)
        _log.info("ready: %d workers", self.count)
        while not self.stopping:
            sentinels = {p.sentinel: i for i, p in self.procs.items()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                assert isinstance(sentinel, int)  # wait() hands back the sentinels it was given
                if self.stopping:
                    break
                self._restart(sentinels[sentinel])
        return self.stop()

    def _restart(self, index: int) -> None:
        proc = self.procs[index]
        proc.join(0)
        n = self.restarts.get(index, 0)
        self.restarts[index] = n + 1
        delay = RESTART_BACKOFF_S[min(n, len(RESTART_BACKOFF_S) - 1)]
        _log.error("worker %d (pid %s) exited with %s; restarting in %.1fs", index, proc.pid, proc.exitcode, delay)
        time.sleep(delay)  # the supervisor has nothing else to do meanwhile
        self.start_worker(index)
        if self.wait_ready([index]):
            _log.info("worker %d is back", index)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def stop(self) -> int:
        self.stopping = True
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid is not None:  # alive: started, so it has a pid
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period_s + 10
        code = 0
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                _log.error("worker %s did not stop in time; killing it", proc.name)
                proc.kill()
                proc.join(5)
                code = 1
        shutil.rmtree(self.stats_dir, ignore_errors=True)
        _log.info("stopped")
        return code


def supervise(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.module_levels, role="supervisor")
    code = Supervisor(settings).run()
    if code:
        raise SystemExit(code)
