"""The locustfiles of loadtests/ run headless against a real gateway and write their reports:
every locust command of the README, as written there, against the example repository."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import make_models
from daemons import ROOT, Gateway, copy_model, launch

LOCUST = [sys.executable, "-m", "locust"]
pytestmark = pytest.mark.slow  # each run pays locust's ~4 s start-up
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def gw(tiny_llm_model, tmp_path_factory):
    """The README's repository: examples/models' set, where the first model of GET /v1/models
    (alphabetical) is minilm, an embedding model."""
    import embedding_model

    root = tmp_path_factory.mktemp("loadtests") / "models"
    make_models.write_repository(str(root))
    copy_model(tiny_llm_model.parent, root, tiny_llm_model.name)
    embedding_model.write_minilm(root)
    g = launch(root)
    yield g
    g.terminate()


def readme_locust_commands() -> list[list[str]]:
    """The locust commands of the README's load-test block, each optional ``[...]`` part both left
    out and put in (a placeholder in capitals becomes the example chat model)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Load tests"):]
    block = block[block.index("```sh") + 5 : block.index("```", block.index("```sh") + 5)]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not re.match(r"(\S*/)?locust\b", line):
            continue
        variants = [line]
        for optional in re.findall(r"\[[^\]]*\]", line):
            variants = [v.replace(optional, "") for v in variants] + [
                v.replace(optional, optional[1:-1].replace("NAME", "tiny-gpt")) for v in variants]
        commands += [shlex.split(v) for v in variants]
    return commands


README_COMMANDS = readme_locust_commands()


def short_run(argv: list[str], gw: Gateway, out: Path) -> list[str]:
    """The README's command, shortened (2 users, 3 s) and pointed at this test's daemon and folder."""
    swap = {"-u": "2", "-r": "2", "-t": "3s"}
    cmd, args = [*LOCUST], argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a in swap:
            cmd += [a, swap[a]]
            i += 2
            continue
        if a == "--host":
            cmd += [a, f"http://{gw.http_url}" if args[i + 1].startswith("http") else gw.grpc_url]
            i += 2
            continue
        if a in ("--csv", "--html"):
            cmd += [a, str(out / Path(args[i + 1]).name)]
            i += 2
            continue
        if a == "-f":
            cmd += [a, str(ROOT / args[i + 1])]
            i += 2
            continue
        cmd.append(a)
        i += 1
    return cmd + ["--only-summary"]


def test_the_readme_documents_a_command_per_locustfile():
    files = {Path(c[c.index("-f") + 1]).name for c in README_COMMANDS}
    assert files == {p.name for p in (ROOT / "loadtests").glob("*.py") if p.name != "common.py"}


def _id(argv: list[str]) -> str:
    skip = {"--host", "--headless", "--csv", "--html"}
    return " ".join([Path(argv[argv.index("-f") + 1]).stem] + [a for a in argv if a.startswith("--") and a not in skip])


@pytest.fixture(scope="module")
def runs(gw, tmp_path_factory):
    """Every locust run of this module, started at once: each one is mostly locust's start-up and
    its fixed 3 s of load, so together they take about as long as one (each test then reads its
    own run's exit status, output and reports)."""
    started = {}
    for argv in README_COMMANDS:
        out = tmp_path_factory.mktemp("locust")
        started[_id(argv)] = (argv, out, _start(short_run(argv, gw, out), out))
    out = tmp_path_factory.mktemp("locust-errors")
    errors = [*LOCUST, "-f", str(ROOT / "loadtests" / "v2_http.py"), "--host", f"http://{gw.http_url}", "--headless",
              "-u", "1", "-r", "1", "-t", "2s", "--only-summary", "--model", "no_such_model"]
    started["server errors"] = (errors, out, _start(errors, out))
    yield started
    for _, _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(cwd))


def _finished(proc: subprocess.Popen) -> tuple[int, str]:
    """(exit status, the tail of stdout and stderr) of one run, waited for at most RUN_TIMEOUT_S."""
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    return proc.returncode, stdout[-3000:] + stderr[-3000:]


@pytest.mark.parametrize("argv", README_COMMANDS, ids=_id)
def test_readme_locust_command_runs_without_a_failure(runs, argv):
    _, out, proc = runs[_id(argv)]
    returncode, output = _finished(proc)
    assert returncode == 0, output  # locust exits non-zero when any request failed
    csv_prefix = out / Path(argv[argv.index("--csv") + 1]).name
    with open(f"{csv_prefix}_stats.csv", newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, output
    assert rows and all(int(r["Failure Count"]) == 0 for r in rows.values()), rows
    if "openai_chat" in argv[argv.index("-f") + 1]:
        assert int(rows["chat"]["Request Count"]) > 0 and int(rows["chat stream"]["Request Count"]) > 0
    html = out / Path(argv[argv.index("--html") + 1]).name
    assert html.stat().st_size > 0


def test_locust_counts_server_errors_as_failures(runs):
    returncode, output = _finished(runs["server errors"][2])
    assert returncode != 0  # locust exits non-zero when any request failed
    assert "no_such_model" in output
