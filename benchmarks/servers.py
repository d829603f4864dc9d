"""A server under test in a subprocess: free ports, readiness by HTTP, logs to a file, clean stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from benchmarks.machine import tree_cpu_by_pid


class StartError(RuntimeError):
    """The server could not start; the message says why (and ends with its log's last lines)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout_s: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class ServerProcess:
    """One server process (and its children), in its own process group."""

    def __init__(self, name: str, cmd: list[str], *, log_path: str, env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_by_pid(self) -> dict[int, float]:
        return tree_cpu_by_pid(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                text = fh.read()[-8000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_ready(self, urls: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(urls)
        while pending:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if http_ok(pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} not ready after {timeout_s:.0f} s ({pending[0]}):\n{self.log_tail()}")
            time.sleep(0.2)  # polling a server we do not control; bounded by the deadline above

    def start_or_stop(self, ready_urls: list[str], timeout_s: float, *, log_pattern: str | None = None,
                      grace_s: float = 10) -> ServerProcess:
        """Wait until the server is ready (its log matched log_pattern first, if given); stop it if it never is."""
        try:
            if log_pattern:
                self.wait_log(log_pattern, timeout_s)
            self.wait_ready(ready_urls, timeout_s)
        except BaseException:
            self.stop(grace_s)
            raise
        return self

    def wait_port(self, port: int, timeout_s: float) -> ServerProcess:
        """Until the server accepts TCP connections on port (for servers with no HTTP/1.1 probe)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(f"{self.name}: nothing listens on {port} after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)  # polling a server we do not control; bounded by the deadline above

    def wait_log(self, pattern: str, timeout_s: float) -> None:
        """Until a line of the server's log matches pattern (e.g. the gateway's ' ready: ' once all workers are)."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            with open(self.log_path, "rb") as fh:
                if regex.search(fh.read().decode("utf-8", "replace")):
                    return
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{self.name}: no log line matching {pattern!r} after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)  # polling a log file; bounded by the deadline above

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM the process group we created; SIGKILL it after grace_s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of the group is left (workers, Triton's stub processes)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()
