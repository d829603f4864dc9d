"""Loaded model versions and the manager that keeps them in step with the repository.

A reload builds the new version completely (executors, scheduler) before it
swaps it in; the old one drains in the background. A bad config or a model
file that fails to load leaves the previous good version serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

from gateway.core.errors import ConfigError, ModelNotFoundError, ModelNotReadyError
from gateway.core.model_config import ModelConfig
from gateway.core.model_state import ModelState
from gateway.core.repository import ModelEntry, VersionFiles, scan_model, scan_repository
from gateway.core.stats import ModelStats
from gateway.core.types import TensorSpec
from gateway.executors.base import Executor, resolve_max_batch_size
from gateway.executors.factory import create_executors
from gateway.monitoring.drift import DriftWorker, VersionDrift, resolve_streams
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.runner import ModelScheduler, SchedulerSpec
from gateway.scheduler.generation.engine import GenerationEngine
from gateway.service.embedding import EmbeddingLoadError, load_embedding_tokenizer
from gateway.service.generation import GenerationLoadError, build_generation_engine
from gateway.service.reload_plan import FailedLoad, Fingerprint, ServingVersion, plan_reload, settle

_log = logging.getLogger(__name__)

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


class ModelLoadError(Exception):
    pass


@dataclass(slots=True)
class LoadedVersion:
    name: str
    version: str
    config: ModelConfig
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]  # without the batch dim
    outputs: tuple[TensorSpec, ...]
    scheduler: ModelScheduler
    stats: ModelStats
    fingerprint: tuple[int, int]
    config_digest: str
    input_index: dict[str, TensorSpec] = field(default_factory=dict)
    output_index: dict[str, TensorSpec] = field(default_factory=dict)
    # The text-generation engine, when model.yaml has a `generation:` section.
    generator: GenerationEngine | None = None
    # The tokenizers.Tokenizer of an embedding model (model.yaml's `embedding:` section).
    embedding_tokenizer: object | None = None
    drift: VersionDrift | None = None

    @property
    def platform(self) -> str:
        return PLATFORMS[self.config.backend]


@dataclass(slots=True)
class ModelStatus:
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""


def _strip_batch(specs: tuple[TensorSpec, ...], batching: bool) -> tuple[TensorSpec, ...]:
    if not batching:
        return specs
    return tuple(TensorSpec(s.name, s.datatype, s.shape[1:]) for s in specs)


def _check_declared(declared, graph: tuple[TensorSpec, ...], kind: str, file: str, problems: list[str]) -> tuple[TensorSpec, ...]:
    """Declared tensors must exist in the graph with the same datatype and rank."""
    by_name = {s.name: s for s in graph}
    out = []
    for i, t in enumerate(declared):
        g = by_name.get(t.name)
        if g is None:
            problems.append(f"{file}: {kind}[{i}].name: '{t.name}' is not in the model (it has {sorted(by_name)})")
        elif g.datatype != t.datatype:
            problems.append(f"{file}: {kind}[{i}].datatype: {t.datatype} but the model says {g.datatype}")
        elif len(g.shape) != len(t.shape):
            problems.append(f"{file}: {kind}[{i}].shape: rank {len(t.shape)} but the model has rank {len(g.shape)}")
        out.append(TensorSpec(t.name, t.datatype, tuple(t.shape)))
    return tuple(out) if declared else graph


@dataclass(frozen=True, slots=True)
class VersionPlan:
    """What a version's config and its graph's signature decide, before any runtime is involved."""

    max_batch_size: int
    inputs: tuple[TensorSpec, ...]  # without the batch dim
    outputs: tuple[TensorSpec, ...]
    streams: list  # drift streams (empty when drift is not watched)


def plan_version(
    entry: ModelEntry, graph_in: tuple[TensorSpec, ...], graph_out: tuple[TensorSpec, ...], watch_drift: bool
) -> tuple[VersionPlan, list[str]]:
    """The cross-checks of config against graph that need no runtime, with every problem found
    ("file: field: reason"); ``build_version`` refuses a version with any, ``gateway check`` lists them."""
    cfg = entry.config
    assert cfg is not None
    cfg_file = f"{entry.directory}/model.yaml"
    problems: list[str] = []
    dynamic_batch = all(s.shape and s.shape[0] == -1 for s in graph_in + graph_out)
    mbs = resolve_max_batch_size(cfg.max_batch_size, dynamic_batch)
    if mbs > 0 and not dynamic_batch:  # set by hand: unset, it would be 0
        problems.append(
            f"{cfg_file}: max_batch_size: {mbs} needs a dynamic leading dim on every "
            f"input and output of the model; set max_batch_size: 0"
        )
        mbs = -1  # the checks below read the graph as it is
    if mbs == 0 and cfg.dynamic_batching.preferred_batch_sizes:
        problems.append(f"{cfg_file}: dynamic_batching.preferred_batch_sizes: set but the model does not batch")
    mbs = max(mbs, 0)
    batching = mbs > 0
    inputs = _check_declared(cfg.inputs, _strip_batch(graph_in, batching), "inputs", cfg_file, problems)
    outputs = _check_declared(cfg.outputs, _strip_batch(graph_out, batching), "outputs", cfg_file, problems)
    streams = []
    if watch_drift and cfg.drift is not None and cfg.drift.enabled:
        drift_problems: list[ConfigError] = []
        streams = resolve_streams(cfg.drift, inputs, outputs, cfg_file, drift_problems)
        problems += [str(e) for e in drift_problems]
    return VersionPlan(mbs, inputs, outputs, streams), problems


def build_version(entry: ModelEntry, files: VersionFiles, drift_worker: DriftWorker | None = None) -> LoadedVersion:
    """Blocking: creates the executors. Call from a worker thread."""
    cfg = entry.config
    assert cfg is not None
    try:
        executors: list[Executor] = create_executors(cfg, files.model_file)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsupported file must not stop the daemon
        raise ModelLoadError(f"{files.model_file}: failed to load: {exc}") from exc
    graph_in, graph_out = executors[0].inputs, executors[0].outputs
    watch = cfg.drift is not None and cfg.drift.enabled and drift_worker is not None
    plan, problems = plan_version(entry, graph_in, graph_out, watch)
    if problems:
        raise ModelLoadError("; ".join(problems))
    mbs, inputs, outputs, streams = plan.max_batch_size, plan.inputs, plan.outputs, plan.streams
    batching = mbs > 0
    db = cfg.dynamic_batching
    policy = BatchingPolicy(
        max_batch_size=mbs,
        preferred_batch_sizes=db.preferred_batch_sizes,
        max_queue_delay_ns=db.max_queue_delay_us * 1000,
        max_queue_size=db.max_queue_size,
        priority_levels=db.priority_levels,
        default_priority=db.default_priority,
        default_timeout_ns=db.default_timeout_us * 1000,
        timeout_action=db.timeout_action,
        allow_timeout_override=db.allow_timeout_override,
    )
    version = str(files.version)
    stats = ModelStats()
    spec = SchedulerSpec(
        name=entry.name,
        version=version,
        batching=batching,
        output_names=tuple(s.name for s in graph_out),
        ragged_inputs={t.name: t.pad_value for t in cfg.inputs if t.ragged},
        adaptive_delay=db.adaptive_delay,
        execute_timeout_s=cfg.execute_timeout_s,
        inline_execute_ns=cfg.inline_execute_us * 1000,
    )
    loaded = LoadedVersion(
        name=entry.name,
        version=version,
        config=cfg,
        max_batch_size=mbs,
        inputs=inputs,
        outputs=outputs,
        scheduler=ModelScheduler(spec, policy, executors, stats),
        stats=stats,
        fingerprint=files.fingerprint,
        config_digest=entry.config_digest,
    )
    loaded.input_index = {s.name: s for s in inputs}
    loaded.output_index = {s.name: s for s in outputs}
    if cfg.generation is not None:
        try:
            loaded.generator = build_generation_engine(entry.name, version, cfg.generation, executors[0], files.model_file)
        except GenerationLoadError as exc:
            raise ModelLoadError(str(exc)) from None
    if cfg.embedding is not None:
        try:
            loaded.embedding_tokenizer = load_embedding_tokenizer(files.model_file)
        except EmbeddingLoadError as exc:
            raise ModelLoadError(str(exc)) from None
    if watch and drift_worker is not None:
        _attach_drift(loaded, files, streams, drift_worker)
    return loaded


def _attach_drift(loaded: LoadedVersion, files: VersionFiles, streams, worker: DriftWorker) -> None:
    drift_cfg = loaded.config.drift
    assert drift_cfg is not None  # build_version attaches drift only to versions that watch it
    reference = os.path.join(os.path.dirname(files.model_file), drift_cfg.reference.file)
    monitor = VersionDrift(loaded.name, loaded.version, drift_cfg, streams, reference)
    worker.register(monitor)
    loaded.drift = monitor
    loaded.scheduler.observer = lambda feeds, outputs: worker.submit(monitor, feeds, outputs)


class ModelManager:
    """Keeps ``serving`` equal to what the repository and version policies ask for."""

    def __init__(self, root: str, *, drain_timeout_s: float = 30.0) -> None:
        self.root = root
        self.drain_timeout_s = drain_timeout_s
        self.serving: dict[str, dict[str, LoadedVersion]] = {}
        self.status: dict[str, ModelStatus] = {}
        self._version_status: dict[tuple[str, str], ModelStatus] = {}
        # Per model and version: the fingerprint the last scan saw, and the files that failed
        # to load (so an unchanged bad file is not retried every scan).
        self._seen: dict[str, dict[int, Fingerprint]] = {}
        self._failed: dict[str, dict[int, FailedLoad]] = {}
        self._unloaded: set[str] = set()  # unloaded by an operator: polling leaves them alone
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task] = set()
        self.loaded_once = False
        self.drift_worker = DriftWorker()

    # -- lookups (hot path) ---------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        versions = self.serving.get(name)
        if not versions:
            if name in self.status:
                raise ModelNotReadyError(f"model '{name}' is not ready: {self.status[name].reason or 'not loaded'}")
            raise ModelNotFoundError(f"unknown model '{name}'")
        if not version:
            return versions[max(versions, key=int)]
        loaded = versions.get(version)
        if loaded is None:
            raise ModelNotFoundError(
                f"model '{name}' has no version '{version}' being served (serving: {', '.join(sorted(versions, key=int))})"
            )
        return loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            loaded = self.get(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return False
        return not loaded.scheduler.wedged

    @property
    def all_ready(self) -> bool:
        return self.loaded_once and all(
            st.state == ModelState.READY for n, st in self.status.items() if n not in self._unloaded
        )

    def index(self) -> list[tuple[str, str, ModelState, str]]:
        """(name, version, state, reason) for every model known, as RepositoryIndex shows."""
        rows: list[tuple[str, str, ModelState, str]] = []
        for name in sorted(self.status):
            versions = [(v, st) for (n, v), st in self._version_status.items() if n == name]
            if not versions:
                rows.append((name, "", self.status[name].state, self.status[name].reason))
            for v, st in sorted(versions, key=lambda x: int(x[0])):
                rows.append((name, v, st.state, st.reason))
        return rows

    # -- reconciliation ------------------------------------------------------------

    async def reconcile(self) -> None:
        async with self._lock:
            first = not self.loaded_once
            try:
                entries = await asyncio.to_thread(scan_repository, self.root)
            except OSError as exc:
                _log.error("cannot scan model repository: %s", exc)
                return
            for name, entry in entries.items():
                if name not in self._unloaded:
                    await self._apply(entry, force=first)
            for name in list(self.serving):
                if name not in entries:
                    await self._unload(name, reason="removed from the repository")
            for name in list(self.status):
                if name not in entries and name not in self.serving:
                    self._forget(name)
            self.loaded_once = True

    async def load(self, name: str) -> None:
        """Explicit load (RepositoryModelLoad): load now, without waiting for a stable poll."""
        async with self._lock:
            entry = await asyncio.to_thread(scan_model, self.root, name)
            if entry is None:
                raise ModelNotFoundError(f"no model '{name}' in the repository")
            self._unloaded.discard(name)
            await self._apply(entry, force=True)
            if not self.serving.get(name):
                raise ModelNotReadyError(f"model '{name}' failed to load: {self.status[name].reason}")

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self.serving and name not in self.status:
                raise ModelNotFoundError(f"unknown model '{name}'")
            self._unloaded.add(name)
            await self._unload(name, reason="unloaded by request")

    async def _apply(self, entry: ModelEntry, *, force: bool) -> None:
        """Runs what ``plan_reload`` decides for one model: builds its LOADs, then swaps."""
        name = entry.name
        status = self.status.setdefault(name, ModelStatus())
        current = {int(k): old for k, old in self.serving.get(name, {}).items()}
        plan = plan_reload(
            entry,
            {v: ServingVersion(old.fingerprint, old.config_digest) for v, old in current.items()},
            self._seen.get(name, {}),
            self._failed.get(name, {}),
            force=force,
        )
        self._seen.setdefault(name, {}).update(plan.seen)
        if plan.config_error is not None:
            if status.reason != plan.config_error:  # once per distinct problem, not every scan
                _log.error("invalid model config, keeping the previous good one: %s", plan.config_error)
            assert plan.state is not None  # a config error decides the model's state
            status.state, status.reason = plan.state, plan.config_error
            return
        built: dict[int, LoadedVersion] = {}
        failures: dict[int, FailedLoad] = {}
        for step in plan.loads:
            v, files = step.version, entry.versions[step.version]
            vstatus = self._version_status.setdefault((name, str(v)), ModelStatus())
            vstatus.state = ModelState.LOADING
            try:
                loaded = await asyncio.to_thread(build_version, entry, files, self.drift_worker)
            except (ModelLoadError, ConfigError) as exc:
                # The old build, if any, keeps serving: the version stays READY with the reason.
                vstatus.state = ModelState.READY if step.has_old else ModelState.UNAVAILABLE
                vstatus.reason = str(exc)
                failures[v] = FailedLoad(files.fingerprint, entry.config_digest, str(exc))
                _log.error("model %s version %s failed to load: %s", name, v, exc)
                continue
            vstatus.state, vstatus.reason = ModelState.READY, ""
            built[v] = loaded
            _log.info("model %s version %s loaded (max_batch_size=%d, instances=%d)",
                      name, v, loaded.max_batch_size, loaded.config.instances)
        result = settle(plan, built, failures)
        failed = self._failed.setdefault(name, {})
        failed.update(result.failed)
        for v in result.cleared:
            failed.pop(v, None)
        serving = {str(v): current[v] for v in result.keep_old}
        serving.update({str(v): built[v] for v in result.use_new})
        for v in result.retire:
            self._retire(current[v])
        for v in result.drop_status:
            self._version_status.pop((name, str(v)), None)
        self.serving[name] = serving
        status.state, status.reason = result.state, result.reason

    async def _unload(self, name: str, *, reason: str) -> None:
        for loaded in self.serving.pop(name, {}).values():
            self._retire(loaded)
        for key in [k for k in self._version_status if k[0] == name]:
            self._version_status[key] = ModelStatus(ModelState.UNAVAILABLE, reason)
        self.status[name] = ModelStatus(ModelState.UNAVAILABLE, reason)
        _log.info("model %s unloaded: %s", name, reason)

    def _forget(self, name: str) -> None:
        self.status.pop(name, None)
        for key in [k for k in self._version_status if k[0] == name]:
            del self._version_status[key]

    def _retire(self, loaded: LoadedVersion, timeout_s: float | None = None) -> None:
        timeout = self.drain_timeout_s if timeout_s is None else timeout_s
        task = asyncio.get_running_loop().create_task(loaded.scheduler.drain(timeout))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        if loaded.generator is not None:
            gen_task = asyncio.get_running_loop().create_task(loaded.generator.drain(timeout))
            self._draining.add(gen_task)
            gen_task.add_done_callback(self._draining.discard)

    async def close(self, timeout_s: float) -> None:
        async with self._lock:
            for name in list(self.serving):
                for loaded in self.serving.pop(name).values():
                    self._retire(loaded, timeout_s)
        if self._draining:
            await asyncio.wait(set(self._draining), timeout=timeout_s + 1)
        await asyncio.to_thread(self.drift_worker.close)
