"""The registry client's writes into the local model repository, each one atomic.

A version is downloaded into a hidden folder beside its final place and renamed
to ``<repo>/<model>/<version>`` once complete, and ``model.yaml`` is replaced by
rename: the repository watcher never sees a half-written version or file
(REFERENCE.md: polling races with writes otherwise).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import tempfile
import time
from typing import Any

import yaml

from gateway.core.errors import ConfigError
from gateway.core.model_config import CONFIG_FILENAME
from gateway.registry.mlflow_client import MlflowClient, ModelVersion, RegistryError, safe_join

MARKER = ".registry.json"  # in a downloaded version folder: where it came from
HEADER = (
    "# version_policy and routing are written by the gateway's registry client from the registry's\n"
    "# aliases (see the registry section); edit the other fields, or registry.routing for routing options.\n"
)


def model_dir(repo: str, model: str) -> str:
    return os.path.join(repo, model)


def version_dir(repo: str, model: str, version: int) -> str:
    return os.path.join(repo, model, str(version))


def read_doc(path: str) -> dict[str, Any]:
    """A YAML mapping from disk; {} when the file is missing or empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, "(file)", f"not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(path, "(file)", "expected a mapping at the top level")
    return doc


def write_doc(path: str, doc: dict[str, Any]) -> None:
    """Replace a YAML file by rename (blocking: call from a thread)."""
    fd, tmp = tempfile.mkstemp(prefix=".model.yaml.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(HEADER)
            yaml.safe_dump(doc, fh, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def config_path(repo: str, model: str) -> str:
    return os.path.join(repo, model, CONFIG_FILENAME)


def _finish(tmp: str, final: str, marker: dict[str, Any]) -> None:
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=1)
    os.rename(tmp, final)  # atomic; fails if a folder with files is already there


def _clear_stale(model_path: str, version: int) -> None:
    """Drop leftovers of an interrupted download of this version."""
    for stale in glob.glob(os.path.join(model_path, f".download-{version}-*")):
        shutil.rmtree(stale, ignore_errors=True)


async def fetch_version(
    client: MlflowClient, repo: str, model: str, mv: ModelVersion, model_filename: str
) -> tuple[str, int]:
    """Download a model version's artifacts into the repository unless they are there.

    Returns the version folder and the bytes downloaded (0 when it was already there).
    """
    final = version_dir(repo, model, mv.version)
    if os.path.isfile(os.path.join(final, model_filename)):
        return final, 0  # downloaded before, or put there by an operator: used as it is
    if os.path.isdir(final):
        raise RegistryError(f"{final} exists without {model_filename}: remove it to let the registry client fill it")
    uri = await client.download_uri(mv.name, mv.version)
    where = await client.resolve(uri)
    files = await client.list_files(where)
    names = {f.path for f in files}
    if model_filename not in names:
        raise RegistryError(
            f"{mv.name} version {mv.version}: no {model_filename} at the root of its artifacts "
            f"({uri}: {sorted(names)[:10] or 'empty'})"
        )
    model_path = model_dir(repo, model)
    await asyncio.to_thread(os.makedirs, model_path, exist_ok=True)
    await asyncio.to_thread(_clear_stale, model_path, mv.version)
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix=f".download-{mv.version}-", dir=model_path)
    total = 0
    try:
        for f in files:
            dest = safe_join(tmp, f.path)
            await asyncio.to_thread(os.makedirs, os.path.dirname(dest), exist_ok=True)
            total += await client.download(where.child(f.path), dest)
        marker = {
            "registered_model": mv.name, "version": mv.version, "source": mv.source, "run_id": mv.run_id,
            "artifact_uri": uri, "files": len(files), "bytes": total, "downloaded_at": time.time(),
        }
        await asyncio.to_thread(_finish, tmp, final, marker)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        raise
    return final, total
