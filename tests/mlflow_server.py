"""A real ``mlflow server`` (sqlite backend, proxied artifacts in a temp dir) on 127.0.0.1, and the REST
calls a training pipeline makes to register a model version and move an alias.

Registration goes through MLflow's REST API (runs/create, the artifact proxy's PUT,
model-versions/create, registered-models/alias), as any client would; importing the
mlflow package in the test process costs tens of seconds on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 180  # a cold start imports a lot: 11-30 s measured, slower on a busy 2-core host


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_binary() -> str | None:
    candidate = Path(sys.executable).parent / "mlflow"
    return str(candidate) if candidate.exists() else shutil.which("mlflow")


class MlflowServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "mlflow.log"

    # -- process ------------------------------------------------------------------------

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Starts the process without waiting for it (``wait_ready`` does)."""
        binary = mlflow_binary()
        assert binary, "mlflow is not installed (it is in the test extra: scripts/setup.sh test)"
        cmd = [
            binary, "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.workdir), start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": self.url},
        )
        log.close()

    def wait_ready(self) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mlflow server not ready within {START_TIMEOUT_S}s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, timeout: float = 30) -> None:
        """Stop the server and its workers (a process group); SIGKILL if SIGTERM is not enough."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGCONT)  # in case a test left it paused
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._wait_port_free(timeout)

    def kill(self) -> None:
        """An abrupt outage: the whole server group dies at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._wait_port_free(30)

    def pause(self) -> None:
        """A hung registry: the server keeps its port but answers nothing (SIGSTOP)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    # -- REST -----------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        url = f"{self.url}/api/2.0/mlflow/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def upload(self, path: str, data: bytes) -> None:
        req = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}", data=data, method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    def register_version(self, name: str, files: dict[str, bytes]) -> int:
        """A run with the files logged under ``model/``, registered as a new version of ``name``."""
        run = self.api("POST", "runs/create", {"experiment_id": "0", "run_name": f"train {name}"})["run"]["info"]
        root = run["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
        for fname, data in files.items():
            self.upload(f"{root}/model/{fname}", data)
        try:
            self.api("POST", "registered-models/create", {"name": name})
        except urllib.error.HTTPError as err:
            if b"RESOURCE_ALREADY_EXISTS" not in err.read():
                raise
        mv = self.api("POST", "model-versions/create",
                      {"name": name, "source": f"runs:/{run['run_id']}/model", "run_id": run["run_id"]})["model_version"]
        return int(mv["version"])

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.api("POST", "registered-models/alias", {"name": name, "alias": alias, "version": str(version)})

    def version_tags(self, name: str, version: int) -> dict[str, str]:
        mv = self.api("GET", "model-versions/get", params={"name": name, "version": str(version)})["model_version"]
        return {t["key"]: t["value"] for t in mv.get("tags", [])}

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        return self.api("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": key}).get("metrics", [])

    def metric_keys(self, run_id: str) -> set[str]:
        run = self.api("GET", "runs/get", params={"run_id": run_id})["run"]
        return {m["key"] for m in run.get("data", {}).get("metrics", [])}


# -- one server started while the session's other tests run ------------------------------------
# Its cold start is ~20 s of imports and migrations, nearly all on one core; conftest launches it
# when collection finds a test that needs it, and the first such test takes it (ready by then).
_early: MlflowServer | None = None


def launch_early(workdir: Path) -> None:
    global _early
    if _early is None:
        _early = MlflowServer(workdir)
        _early.launch()


def take_early() -> MlflowServer | None:
    """The early server, now ready (once: the taker owns it), or None when none was launched."""
    global _early
    server, _early = _early, None
    if server is not None:
        server.wait_ready()
    return server


def stop_early() -> None:
    """At the session's end: an early server nobody took (its tests were deselected or skipped)."""
    global _early
    if _early is not None:
        _early.stop()
        shutil.rmtree(_early.workdir, ignore_errors=True)
        _early = None
