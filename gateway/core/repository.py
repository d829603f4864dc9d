"""What the model repository on disk holds: models, their configs, their versions.

Layout (Triton-like): ``<root>/<model>/model.yaml`` and
``<root>/<model>/<version>/model.onnx``. A scan is a pure snapshot; deciding
what to load from it is the model manager's job.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from gateway.core.errors import ConfigError
from gateway.core.model_config import CONFIG_FILENAME, ModelConfig, load_model_config, routing_version_problems

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class VersionFiles:
    version: int
    model_file: str
    # (size, mtime_ns): a version is loaded once this is stable across two scans.
    fingerprint: tuple[int, int]


@dataclass(slots=True)
class ModelEntry:
    name: str
    directory: str
    config: ModelConfig | None
    error: ConfigError | None
    config_digest: str
    versions: dict[int, VersionFiles] = field(default_factory=dict)


def is_valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and name not in (".", "..")


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return ""


def scan_model(root: str, name: str) -> ModelEntry | None:
    directory = os.path.join(root, name)
    if not is_valid_model_name(name) or not os.path.isdir(directory):
        return None
    digest = _digest(os.path.join(directory, CONFIG_FILENAME))
    try:
        config, error = load_model_config(directory), None
    except ConfigError as exc:
        config, error = None, exc
    entry = ModelEntry(name, directory, config, error, digest)
    filename = config.default_model_filename if config else "model.onnx"
    for child in os.listdir(directory):
        if not child.isdigit() or int(child) < 1:
            continue
        model_file = os.path.join(directory, child, filename)
        try:
            st = os.stat(model_file)
        except FileNotFoundError:
            continue
        entry.versions[int(child)] = VersionFiles(int(child), model_file, (st.st_size, st.st_mtime_ns))
    if config is not None:
        # A routed version the policy does not serve makes the whole config invalid:
        # the previous good config keeps serving, as for any other bad field.
        for field, reason in routing_version_problems(config, list(entry.versions))[:1]:
            entry.config, entry.error = None, ConfigError(os.path.join(directory, CONFIG_FILENAME), field, reason)
    return entry


def scan_repository(root: str) -> dict[str, ModelEntry]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"model repository '{root}' is not a directory")
    entries = {}
    for name in sorted(os.listdir(root)):
        entry = scan_model(root, name)
        if entry is not None:
            entries[name] = entry
    return entries
