"""The registry URL's credentials (http://user:password@host) never reach the log: not at start,
not in the outage lines of a dead or a hung registry, not from the registry-sync sidecar.
(The outage behaviour itself, against a real MLflow server, is tests/e2e/test_registry.py.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys

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
    repo = tmp_path / "models"
    make_models.write_repository(str(repo), ["simple"])
    dead_port = free_port()
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:{dead_port}"
    gw = start_gateway(repo, "--registry-url", dead, "--registry-models", "simple", "--log-level", "debug", *FAST)
    gw.wait_for_log(re.compile(r"registry unavailable"), timeout=60)
    assert gw.http("GET", "/v2/health/ready")[0] == 200  # serving what the repository holds
    gw.terminate()
    _assert_redacted(gw.log(), dead, dead_port)

    # A hung registry: it accepts connections and never answers (every call times out).
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/"
        gw = start_gateway(repo, "--registry-url", url, "--registry-models", "simple", "--log-level", "debug",
                           "--log-format", "json", *FAST)
        gw.wait_for_log(re.compile(r"registry unavailable"), timeout=60)
        gw.terminate()
    _assert_redacted(gw.log(), url.rstrip("/"), port)

    # The sidecar process, one pass against the dead registry.
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "registry-sync", "--once", "--registry-url", dead, "--model-repository",
         str(repo), "--registry-models", "simple", "--log-level", "debug", *FAST],
        capture_output=True, text=True, timeout=120,
    )
    out = done.stdout + done.stderr
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
