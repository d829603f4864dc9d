"""Gateway daemons for tests: ``Gateway`` (a subprocess) and ``launch`` (in this process unless the
test needs a process), plus the repository root and ``copy_model``. conftest.py builds its
fixtures on these; tests import them from here (never from conftest)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from inprocess import GatewayClient, InProcessGateway, base_args, needs_process

ROOT = Path(__file__).resolve().parent.parent

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



def copy_model(src_root: Path, dst_root: Path, name: str) -> None:
    shutil.copytree(src_root / name, dst_root / name)


# The context of conftest's ``long_tiny_llm_model``.
LONG_CONTEXT = 4096


def endless_stream(model_dir: Path) -> dict:
    """Request fields that keep a stream of ``long_tiny_llm_model`` generating for thousands of
    tokens (seconds, however fast the engine): nearly the whole context, its end-of-text tokens
    biased away. A test that must act while the sequence still runs cancels it long before."""
    config = json.loads((model_dir / "1" / "generation_config.json").read_text())
    return {"max_tokens": LONG_CONTEXT - 64, "temperature": 0, "stream": True,
            "logit_bias": {str(t): -100 for t in config["eos_token_id"]}}
