"""Each peer server gets its own virtual environment, made once and cached.

A venv lives at <cache>/venvs/<name>-<hash>, where the hash covers the requirements file,
the pins the benchmark adds (the gateway's own onnxruntime version, so every system runs
the same runtime) and the interpreter. A venv is used only once its `.complete` marker is
written; a half-made one is rebuilt. uv makes them in seconds; plain venv + pip otherwise.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "gateway-bench")


class VenvError(RuntimeError):
    pass


def base_python() -> str:
    """The interpreter behind the running venv (peers get a venv of their own from it)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _uv() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    return beside if os.access(beside, os.X_OK) else shutil.which("uv")


def ensure(name: str, requirements: str, pins: list[str], cache_dir: str = DEFAULT_CACHE,
           timeout_s: float = 900) -> str:
    """Path of the python of a venv holding requirements (a file in benchmarks/) plus pins."""
    req_path = os.path.join(HERE, requirements)
    with open(req_path, "rb") as fh:
        spec = fh.read() + "\n".join(pins).encode() + base_python().encode()
    key = hashlib.sha256(spec).hexdigest()[:12]
    root = os.path.join(cache_dir, "venvs")
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, f"{name}-{key}")
    python = os.path.join(target, "bin", "python")
    marker = os.path.join(target, ".complete")
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs never build the same venv at once
        if os.path.exists(marker):
            return python
        shutil.rmtree(target, ignore_errors=True)
        log_path = target + ".log"
        uv = _uv()
        if uv:
            steps = [[uv, "venv", "-q", "--python", base_python(), target],
                     [uv, "pip", "install", "-q", "--python", python, "-r", req_path, *pins]]
        else:
            steps = [[base_python(), "-m", "venv", target],
                     [python, "-m", "pip", "install", "-q", "-r", req_path, *pins]]
        with open(log_path, "w") as log:
            for cmd in steps:
                try:
                    res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise VenvError(f"{name}: '{' '.join(cmd[:3])} …' took over {timeout_s:.0f} s") from None
                if res.returncode != 0:
                    with open(log_path) as fh:
                        tail = fh.read()[-1500:]
                    raise VenvError(f"{name}: {' '.join(cmd[:3])} … failed ({res.returncode}):\n{tail}")
        with open(marker, "w") as fh:
            fh.write(" ".join(pins) + "\n")
    return python


def versions(python: str, dists: list[str]) -> dict[str, str | None]:
    """Installed versions of dists in another venv."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = None\n"
            "print(json.dumps(out))")
    res = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True, timeout=60)
    return json.loads(res.stdout) if res.returncode == 0 else {d: None for d in dists}
