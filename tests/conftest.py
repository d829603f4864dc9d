"""Shared fixtures: example model repositories and real gateway daemons (in this process by
default, tests/inprocess.py; a subprocess where a test needs one).

gateway._proto keeps its descriptors in a pool of its own, so the test process may import the
gateway's servicer and tritonclient's stubs (which define the same protobuf symbols) together.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import make_models  # noqa: E402
from inprocess import GatewayClient, InProcessGateway, base_args, needs_process, stop_leftovers  # noqa: E402

_LISTENING = re.compile(r"listening grpc=([\d.]+):(\d+) http=([\d.]+):(\d+)")


class Gateway(GatewayClient):
    """A gateway daemon in a subprocess, on ephemeral loopback ports. Tests that need a process
    (signals, exit codes, stderr, --workers, environment variables, its pid) use this one;
    ``launch`` picks the in-process daemon otherwise."""

    process = True

    def __init__(self, repository: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.repository = repository
        cmd = [sys.executable, "-m", "gateway", "serve", *base_args(repository), *extra]
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

    def _ended(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def _exit_status(self):
        return self.proc.poll()

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


def launch(
    repository: Path, *extra: str, env: dict[str, str] | None = None, process: bool = False
) -> Gateway | InProcessGateway:
    """A daemon serving ``repository``: in this process unless ``process`` is set or the daemon
    needs one (environment variables, --workers, flags whose effect is process-wide)."""
    if process or needs_process(extra, env):
        return Gateway(repository, *extra, env=env)
    return InProcessGateway(repository, *extra)  # a failed start stops what it had started


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_models.write_repository(str(root))
    return root


@pytest.fixture
def start_gateway():
    started: list[Gateway] = []

    def start(
        repository: Path, *extra: str, env: dict[str, str] | None = None, process: bool = False
    ) -> Gateway | InProcessGateway:
        gw = launch(repository, *extra, env=env, process=process)
        started.append(gw)
        return gw

    yield start
    _terminate_all(started)


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory):
    """One daemon on the example repository for read-mostly tests of a module."""
    root = tmp_path_factory.mktemp("shared") / "models"
    make_models.write_repository(str(root))
    gw = launch(root)
    yield gw
    gw.terminate()


def _terminate_all(daemons) -> None:
    """Stop every daemon, even when stopping one fails; then report the first failure."""
    errors = []
    for gw in daemons:
        try:
            gw.terminate()
        except Exception as exc:  # noqa: BLE001 - the others still have to stop
            errors.append(exc)
    if errors:
        raise errors[0]


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


def pytest_sessionfinish(session, exitstatus):
    """Every fixture terminates the daemons it started; one still running here was leaked."""
    leaked = stop_leftovers()
    if leaked:
        print(f"\nin-process gateway daemons left running (stopped now): {', '.join(leaked)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    """Soak tests take minutes: they run only when selected (-m soak)."""
    if "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: select it with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
