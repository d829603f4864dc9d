"""Shared fixtures: example model repositories and a real gateway daemon subprocess.

gateway._proto keeps its descriptors in a pool of its own, so the test process may import the
gateway's servicer and tritonclient's stubs (which define the same protobuf symbols) together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import make_models  # noqa: E402

_LISTENING = re.compile(r"listening grpc=([\d.]+):(\d+) http=([\d.]+):(\d+)")


class Gateway:
    """A gateway daemon in a subprocess, on ephemeral loopback ports."""

    def __init__(self, repository: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.repository = repository
        cmd = [
            sys.executable, "-m", "gateway", "serve",
            "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
            "--model-repository", str(repository),
            "--repository-poll-s", "0.2", "--grace-period-s", "10",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, cwd=str(ROOT),
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_for_log(_LISTENING, timeout=60)
        self.grpc_url = f"127.0.0.1:{match.group(2)}"
        self.http_url = f"127.0.0.1:{match.group(4)}"
        # Text or JSON log lines. With --workers N, each worker logs its own "ready:" line
        # before the supervisor has seen them all: wait for the supervisor's.
        ready = r"ready: \d+ workers" if "--workers" in extra else r"[ \"]ready: "
        self.wait_for_log(re.compile(ready), timeout=60)

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, pattern: re.Pattern, timeout: float, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = start
            while True:
                for line in self.lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"gateway log never matched {pattern.pattern!r}; exit={self.proc.poll()}; log:\n"
                        + "".join(self.lines[-60:])
                    )
                self._changed.wait(min(left, 0.5))

    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one HTTP request."""
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def http_json(self, method: str, path: str, doc=None):
        body = None if doc is None else json.dumps(doc).encode()
        status, _, raw = self.http(method, path, body, {"Content-Type": "application/json"} if body else None)
        return status, (json.loads(raw) if raw else None)

    def wait_until(self, predicate, timeout: float = 30, what: str = "condition"):
        """Poll a predicate (repository changes are seen at the next scan)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n" + "".join(self.lines[-40:]))
            time.sleep(0.05)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        return self.proc.returncode


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_models.write_repository(str(root))
    return root


@pytest.fixture
def start_gateway():
    started: list[Gateway] = []

    def start(repository: Path, *extra: str, env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway(repository, *extra, env=env)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.terminate()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory):
    """One daemon on the example repository for read-mostly tests of a module."""
    root = tmp_path_factory.mktemp("shared") / "models"
    make_models.write_repository(str(root))
    gw = Gateway(root)
    yield gw
    gw.terminate()


def copy_model(src_root: Path, dst_root: Path, name: str) -> None:
    shutil.copytree(src_root / name, dst_root / name)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on 127.0.0.1 and a free port; killed at the end."""
    from redis_server import RedisServer

    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedder():
    """all-MiniLM-L6-v2 on onnxruntime; the built ONNX file is kept in .cache/ between runs."""
    from gateway.cache.semantic.embedder import Embedder

    return Embedder(cache_dir=ROOT / ".cache" / "embedder")


@pytest.fixture(scope="session")
def tiny_llm_model(tmp_path_factory) -> Path:
    """examples/tiny_llm.py's tiny-gpt (decoder + tokenizer), built once per session; copy it
    into a test repository with ``copy_model(path.parent, repo, path.name)``."""
    import tiny_llm

    return tiny_llm.write_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def minilm_model(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 as an embedding model directory (examples/embedding_model.py), built once;
    its ONNX file is kept in .cache/ between runs."""
    import embedding_model

    return embedding_model.write_minilm(tmp_path_factory.mktemp("embedding"))


def pytest_collection_modifyitems(config, items):
    """Soak tests take minutes: they run only when selected (-m soak)."""
    if "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: select it with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
