"""The registry URL's credentials (http://user:password@host) never reach the log: not at start,
not in the outage lines of a dead or a hung registry, not from the registry-sync sidecar.
(The outage behaviour itself, against a real MLflow server, is tests/e2e/test_registry.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import make_models
from redis_server import free_port

from gateway.core.secrets import redact_url

USER, PASSWORD = "alice", "registry-SECRET-pw-9917"
FAST = ["--registry-poll-s", "0.3", "--registry-backoff-max-s", "1", "--registry-timeout-s", "1"]


def _assert_redacted(log: str, url: str, port: int) -> None:
    assert PASSWORD not in log, "the registry password appears in the log"
    assert f"{USER}:" not in log
    assert redact_url(url) in log  # the line naming the registry is there, redacted
    assert f"127.0.0.1:{port}" in log


def test_registry_credentials_are_redacted_in_the_log(tmp_path, start_gateway):
    """A daemon against a dead registry, one against a hung registry (it accepts connections and
    never answers: every call times out) and the sidecar's one pass against the dead one, all three
    at once (each waits on its own registry's failures; none writes the repository)."""
    repo = tmp_path / "models"
    make_models.write_repository(str(repo), ["simple"])
    dead_port = free_port()
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{dead_port}"
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "gateway", "registry-sync", "--once", "--registry-url", dead, "--model-repository",
         str(repo), "--registry-models", "simple", "--log-level", "debug", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with socket.socket() as hung:
            hung.bind(("127.0.0.1", 0))
            hung.listen(16)
            port = hung.getsockname()[1]
            url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/"
            flags = [("--registry-url", dead, "--registry-models", "simple", "--log-level", "debug", *FAST),
                     ("--registry-url", url, "--registry-models", "simple", "--log-level", "debug", "--log-format",
                      "json", *FAST)]
            with ThreadPoolExecutor(2) as pool:
                dead_gw, hung_gw = pool.map(lambda extra: start_gateway(repo, *extra), flags)
            for gw in (dead_gw, hung_gw):
                gw.wait_for_log(re.compile(r"registry unavailable"), timeout=60)
            assert dead_gw.http("GET", "/v2/health/ready")[0] == 200  # serving what the repository holds
            dead_gw.terminate()
            hung_gw.terminate()
        _assert_redacted(dead_gw.log(), dead, dead_port)
        _assert_redacted(hung_gw.log(), url.rstrip("/"), port)
        stdout, stderr = sidecar.communicate(timeout=120)
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.communicate()
    out = stdout + stderr
    assert PASSWORD not in out and f"{USER}:" not in out, out[-2000:]
    assert "registry" in out


def test_registry_errors_never_carry_the_credentials():
    """Artifact routes are whole URLs built from registry_url: their errors are redacted too."""
    import asyncio

    import pytest

    from gateway.registry.mlflow_client import ARTIFACTS_ROUTE, ArtifactLocation, MlflowClient, RegistryError

    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    client = MlflowClient(url, timeout_s=5)
    assert PASSWORD not in repr(client) and client.display_url == redact_url(url)

    async def calls():
        try:
            where = ArtifactLocation(url + ARTIFACTS_ROUTE, "model/1")
            for call in (client.list_files(where), client.download(where, "/dev/null"),
                         client.alias_version("m", "champion")):
                with pytest.raises(RegistryError) as info:
                    await call
                assert PASSWORD not in str(info.value) and f"{USER}:" not in str(info.value), str(info.value)
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(calls(), 60))
