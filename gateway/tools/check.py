"""``gateway check``: validate a model repository as ``gateway serve`` would load it, and list
every problem ("file: field: reason") instead of stopping at the first.

The same code paths as the daemon: the repository scan (``scan_model``), the config validation
(``validate_model_config`` through ``all_errors``), and for each version the policy serves, the
cross-checks of config against the model's graph (``plan_version``: declared tensors, batching,
drift streams) and the text-generation layout and tokenizer (``generation_problems``). The graph is
read from the model file's signature, so no runtime (and no GPU) is needed; a prebuilt TensorRT
engine is not inspected.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gateway.core.model_config import all_errors
from gateway.core.repository import is_valid_model_name, scan_model
from gateway.executors.signature import onnx_signature
from gateway.service.embedding import EmbeddingLoadError, load_embedding_tokenizer
from gateway.service.generation import generation_problems
from gateway.service.models import plan_version


def model_problems(root: str, name: str) -> tuple[list[str], int]:
    """(every problem of one model directory, the number of versions it would serve)."""
    directory = os.path.join(root, name)
    if not is_valid_model_name(name):
        return [f"{directory}: invalid model name (letters, digits, '_', '.', '-'; at most 128)"], 0
    config_errors = all_errors(directory)
    entry = scan_model(root, name)
    if config_errors or entry is None or entry.config is None:
        # The daemon refuses the file (and keeps a previous good one): nothing below would load.
        if entry is not None and entry.error is not None and str(entry.error) not in map(str, config_errors):
            config_errors.insert(0, entry.error)
        return [str(e) for e in config_errors], 0
    cfg = entry.config
    if not entry.versions:
        return [f"{directory}: no version directory with a model file (expected {directory}/1/{cfg.default_model_filename})"], 0
    wanted = cfg.version_policy.select(list(entry.versions))
    if not wanted:
        return [f"{directory}/model.yaml: version_policy: selects none of the versions {sorted(entry.versions)}"], 0
    found: dict[str, list[int]] = {}  # problem -> versions that have it, in the order found
    for v in wanted:
        for problem in _version_problems(entry, entry.versions[v].model_file):
            found.setdefault(problem, []).append(v)
    problems = []
    for problem, versions in found.items():
        if len(wanted) > 1:
            problem += f" (version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))})"
        problems.append(problem)
    return problems, len(wanted)


def _version_problems(entry, model_file: str) -> list[str]:
    cfg = entry.config
    if cfg.backend == "tensorrt" and not model_file.endswith(".onnx"):
        return []  # a serialized engine: only the TensorRT runtime can read it
    try:
        graph = onnx_signature(model_file)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsupported file is the problem to report
        return [f"{model_file}: failed to load: {exc}"]
    _, problems = plan_version(entry, graph.inputs, graph.outputs, watch_drift=True)
    if cfg.generation is not None:
        problems += generation_problems(graph, model_file)
    if cfg.embedding is not None:
        try:
            load_embedding_tokenizer(model_file)
        except EmbeddingLoadError as exc:
            problems.append(str(exc))
    return problems


def check_repository(root: str, say: Callable[[str], None] = print) -> int:
    """Prints each problem, or ``ok`` per model; returns the number of problems."""
    total = 0
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        problems, versions = model_problems(root, name)
        for problem in problems:
            say(problem)
        total += len(problems)
        if not problems:
            say(f"{os.path.join(root, name)}: ok ({versions} version(s) served)")
    say(f"{total} problem(s) found")
    return total
