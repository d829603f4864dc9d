"""Shared fixtures: example model repositories and real gateway daemons (in this process by
default, tests/inprocess.py; a subprocess where a test needs one).

gateway._proto keeps its descriptors in a pool of its own, so the test process may import the
gateway's servicer and tritonclient's stubs (which define the same protobuf symbols) together.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

import make_models
import mlflow_server
from daemons import LONG_CONTEXT, ROOT, Gateway, launch
from inprocess import InProcessGateway, stop_leftovers

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
def long_tiny_llm_model(tmp_path_factory) -> Path:
    """tiny-gpt with a 4096-token context (model.yaml says so): a stream that must still be running
    when a test acts on it asks for thousands of tokens with the end-of-text tokens biased away."""
    import tiny_llm

    return tiny_llm.write_tiny_llm(tmp_path_factory.mktemp("tiny-llm-long"), max_positions=LONG_CONTEXT)


@pytest.fixture(scope="session")
def minilm_model(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 as an embedding model directory (examples/embedding_model.py), built once;
    its ONNX file is kept in .cache/ between runs."""
    import embedding_model

    return embedding_model.write_minilm(tmp_path_factory.mktemp("embedding"))


def pytest_collection_finish(session):
    """The mlflow server's cold start (~20 s, one core) overlaps the tests that run before its own."""
    if session.config.option.collectonly or mlflow_server.mlflow_binary() is None:
        return
    if any("mlflow" in getattr(item, "fixturenames", ()) for item in session.items):
        mlflow_server.launch_early(Path(tempfile.mkdtemp(prefix="gateway-test-mlflow-")))


def pytest_sessionfinish(session, exitstatus):
    """Every fixture terminates the daemons it started; one still running here was leaked."""
    mlflow_server.stop_early()
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
