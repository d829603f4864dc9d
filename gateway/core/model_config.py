"""Per-model configuration (``models/<name>/model.yaml``), validated at load.

Every field has a default that serves. Unknown keys are rejected so that a
typo in an operator's file is an error naming the field, not a silent no-op.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gateway.core import datatypes
from gateway.core.errors import ConfigError
from gateway.core.field_path import field_path
from gateway.core.drift_config import DriftConfig
from gateway.core.registry_config import RegistryModelConfig
from gateway.core.routing_config import RoutingConfig, internal_problems, unserved_versions

CONFIG_FILENAME = "model.yaml"
# Label files are read at every repository scan: big enough for any class list, small enough to re-read.
MAX_LABEL_FILE_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str = Field(min_length=1)
    datatype: str
    # Shape without the batch dim when max_batch_size > 0; -1 = any size.
    shape: tuple[int, ...]
    # Requests whose trailing dims differ are padded to the batch's largest
    # with pad_value instead of being batched apart.
    ragged: bool = False
    pad_value: float = 0.0
    # Outputs only: a file in the model's directory, one class label per line (line i = index i),
    # used by the classification extension ("score:index:label"), as Triton's label_filename.
    label_filename: str = ""
    _labels: tuple[str, ...] = PrivateAttr(default=())

    @property
    def labels(self) -> tuple[str, ...]:
        """The label file's lines, read when the config was loaded from its directory."""
        return self._labels

    @field_validator("label_filename")
    @classmethod
    def _plain_filename(cls, v: str) -> str:
        if v and (v in (".", "..") or "/" in v or "\\" in v or "\x00" in v):
            raise ValueError(f"'{v}' must be a file name in the model's directory, without a path")
        return v

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if not datatypes.is_valid(v):
            raise ValueError(f"unknown datatype '{v}' (expected one of {', '.join(datatypes.DATATYPES)})")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for d in v:
            if d < -1 or d == 0:
                raise ValueError(f"dimension {d} is invalid: use a positive size or -1 for any")
        return v


class DynamicBatchingConfig(_Strict):
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = Field(default=0, ge=0, le=10_000_000)
    max_queue_size: int = Field(default=1024, ge=1, le=1_000_000)
    priority_levels: int = Field(default=1, ge=1, le=16)
    default_priority: int = Field(default=1, ge=1)
    default_timeout_us: int = Field(default=0, ge=0)
    timeout_action: Literal["reject", "delay"] = "reject"
    allow_timeout_override: bool = True
    # Size the wait from observed arrivals, answers coming back and execute time,
    # capped by max_queue_delay_us (gateway.scheduler.adaptive). On by default: a
    # fixed window taxes every request at low load by the whole window (mlp c=1:
    # 391 vs 2,061 infer/s) and the adaptive one keeps c=32-128 within a few percent
    # of it; false gives Triton's fixed-window semantics.
    adaptive_delay: bool = True

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in v):
            raise ValueError("batch sizes must be >= 1")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _priority_in_range(self) -> DynamicBatchingConfig:
        if self.default_priority > self.priority_levels:
            raise ValueError(
                f"default_priority {self.default_priority} exceeds priority_levels {self.priority_levels}"
            )
        return self


class VersionPolicy(_Strict):
    """Exactly one of: serve the latest N versions, all versions, or the listed ones."""

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    @field_validator("specific")
    @classmethod
    def _versions_positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError("list at least one version, each >= 1")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        kinds = sum([self.latest is not None, self.all, self.specific is not None])
        if kinds > 1:
            raise ValueError("set only one of latest, all, specific")
        return self

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


class TensorRTConfig(_Strict):
    """Engine build settings for ``backend: tensorrt`` and the ONNX Runtime ``tensorrt`` provider."""

    fp16: bool = False
    # INT8 needs a graph quantized with Q/DQ nodes (explicit quantization); no calibration here.
    int8: bool = False
    workspace_mib: int = Field(default=1024, ge=16, le=1_048_576)
    # Serialized engines are cached here, keyed by GPU, TensorRT version, model hash and these
    # settings; "" = $GATEWAY_ENGINE_CACHE_DIR or ~/.cache/gateway/tensorrt.
    engine_cache_dir: str = ""


class SemanticCacheConfig(_Strict):
    """Prompt cache for text generation: answers a prompt close enough to a cached one."""

    enabled: bool = False
    # Cosine similarity of the prompt embeddings needed for a hit (README: why this default).
    threshold: float = Field(default=0.92, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    # Entries kept per model (local index and, with Redis, per scope in Redis); oldest go first.
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    # Serve requests with temperature > 0 or n > 1 too (their answers are meant to vary).
    allow_sampling: bool = False


class CacheConfig(_Strict):
    """Response caching of one model; off unless `exact` or `semantic.enabled` is set."""

    exact: bool = False
    ttl_s: float = Field(default=300.0, gt=0, le=30 * 86400)
    # Bound of the in-process tier (0 = none; with cache_url set, only Redis is used).
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=1 << 40)
    semantic: SemanticCacheConfig = SemanticCacheConfig()


class GenerationConfig(_Strict):
    """Text generation (``/v1/completions``, ``/v1/chat/completions``) on a decoder with a KV cache.

    The version directory holds ``tokenizer.json`` and ``tokenizer_config.json`` (chat
    template, eos token) beside the model file.
    """

    # Prompt plus completion tokens one sequence may reach (the model's position limit).
    context_length: int = Field(default=2048, ge=2, le=1_048_576)
    # Completion tokens when a request names no max_tokens (capped by what the context leaves).
    default_max_tokens: int = Field(default=256, ge=1, le=1_048_576)
    # Sequences decoded together, one batched model call per step.
    max_sequences: int = Field(default=32, ge=1, le=4096)
    # Sequences admitted but not yet joined; beyond this a request is refused at once (429).
    max_waiting_sequences: int = Field(default=256, ge=0, le=1_000_000)
    # KV-cache slots the decode batch may hold: sequences x padded length, each sequence
    # counted at its prompt + max_tokens (the padded layout's real footprint, see README).
    max_kv_tokens: int = Field(default=131_072, ge=2, le=1 << 34)
    # A sequence that cannot join the decode batch within this long fails with 504 (0 = waits).
    queue_timeout_s: float = Field(default=0.0, ge=0, le=86400)
    # Token ids that end a sequence, besides the tokenizer's eos_token and generation_config.json's eos_token_id.
    stop_token_ids: tuple[int, ...] = ()
    # Where the KV cache lives between steps: "device" keeps it in the session's memory (IO binding;
    # ONNX Runtime only), "host" as numpy arrays fed in and read back each step; "auto" = device on
    # the cuda/tensorrt providers, host on cpu (measured, README "Text generation").
    kv_cache: Literal["auto", "host", "device"] = "auto"
    # How often, at least, the tokens of a running batch reach their streams (milliseconds). A
    # step always completes; with a fast model, several run back to back in the worker thread and
    # their tokens leave together (each still its own SSE chunk), saving a thread hand-off per
    # token; past the interval the worker hands them over and goes on (it stops there instead
    # while a sequence waits for a place). A request that arrives and a client that leaves end
    # the run at once; a sequence that finishes leaves in the worker while others run and nothing
    # waits (else it ends the run too). 0 = hand off after every step.
    stream_interval_ms: float = Field(default=2.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _fits(self) -> GenerationConfig:
        if self.max_kv_tokens < self.context_length:
            raise ValueError(
                f"max_kv_tokens {self.max_kv_tokens} is below context_length {self.context_length}: "
                "a sequence of full context could never be admitted"
            )
        return self


class EmbeddingConfig(_Strict):
    """A sentence-embedding model served on ``POST /v1/embeddings`` (tokenizer.json beside model.onnx)."""

    # How token vectors become one vector: mean over real tokens, the first ([CLS]) or the last.
    # Ignored when the model's output is already one vector per input ([batch, dim]).
    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True
    # Longest input accepted, in tokens (special tokens included); longer ones get a 400.
    max_tokens: int = Field(default=512, ge=1, le=1_000_000)
    # The output holding the token (or pooled) vectors; "" = the model's first output.
    output: str = ""
    # The model was trained so that a prefix of its vector is itself an embedding (Matryoshka):
    # clients may ask for fewer ``dimensions``. Otherwise only the model's own size is accepted.
    matryoshka: bool = False


class ModelConfig(_Strict):
    name: str
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    # onnxruntime execution providers in order of preference.
    providers: tuple[Literal["cpu", "cuda", "tensorrt"], ...] = ("cpu",)
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    # None: batch when every input of the graph has a dynamic leading dim.
    max_batch_size: int | None = Field(default=None, ge=0, le=65536)
    dynamic_batching: DynamicBatchingConfig = DynamicBatchingConfig()
    instances: int = Field(default=1, ge=1, le=64)
    # One intra-op thread by default: on small hosts a 2-thread pool collapses
    # as soon as the front end wants the second core (REFERENCE.md).
    intra_op_threads: int = Field(default=1, ge=0, le=256)
    version_policy: VersionPolicy = VersionPolicy()
    default_model_filename: str = "model.onnx"
    # CUDA device for the cuda/tensorrt providers and the tensorrt backend.
    gpu_device: int = Field(default=0, ge=0)
    tensorrt: TensorRTConfig = TensorRTConfig()
    routing: RoutingConfig | None = None
    cache: CacheConfig = CacheConfig()
    generation: GenerationConfig | None = None
    embedding: EmbeddingConfig | None = None
    drift: DriftConfig | None = None
    # Which registered model this is and what its aliases mean (used only with registry_url set).
    registry: RegistryModelConfig | None = None
    # A batch still running after this long fails its requests (DEADLINE_EXCEEDED) and its
    # instance is asked to abort; 0 = no limit. See README "Reliability".
    execute_timeout_s: float = Field(default=0.0, ge=0, le=86_400)
    # A lone request on an idle model runs on the event loop itself when the model's measured
    # time for one request is below this, and so does a batch of several when batches measured
    # below it: for tiny models the two thread hand-offs cost more (~0.1-0.2 ms) than the run.
    # 0 = always in an executor thread. See README "Performance".
    inline_execute_us: int = Field(default=200, ge=0, le=1000)

    @field_validator("providers")
    @classmethod
    def _providers_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one provider is required")
        return v


def cross_field_problems(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(field, reason) for rules spanning several fields."""
    problems = []
    mbs = cfg.max_batch_size
    if mbs is not None and mbs > 0:
        too_big = [s for s in cfg.dynamic_batching.preferred_batch_sizes if s > mbs]
        if too_big:
            problems.append(
                ("dynamic_batching.preferred_batch_sizes", f"sizes {too_big} exceed max_batch_size {mbs}")
            )
    for i, t in enumerate(cfg.inputs):
        if t.label_filename:
            problems.append((f"inputs[{i}].label_filename", "labels belong to outputs (classification), not inputs"))
    for kind, tensors in (("inputs", cfg.inputs), ("outputs", cfg.outputs)):
        names = [t.name for t in tensors]
        for i, n in enumerate(names):
            if n in names[:i]:
                problems.append((f"{kind}[{i}].name", f"duplicate name '{n}'"))
    if cfg.generation is not None and cfg.generation.kv_cache == "device" and cfg.backend != "onnxruntime":
        # Keeping the cache on the device uses ONNX Runtime's IO binding; other backends take "host" or "auto".
        problems.append(("generation.kv_cache", f"'device' needs backend onnxruntime (this model's is {cfg.backend})"))
    if cfg.routing is not None:
        problems += [(f"routing.{f}", r) for f, r in internal_problems(cfg.routing)]
    if cfg.drift is not None:
        problems += drift_problems(cfg)
    return problems


def drift_problems(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(field, reason) for drift streams that name a tensor the config declares not to have,
    or that share a name. Streams over undeclared tensors are checked at load, against the graph."""
    assert cfg.drift is not None
    problems = []
    declared = {"inputs": {t.name for t in cfg.inputs}, "outputs": {t.name for t in cfg.outputs}}
    seen: dict[str, str] = {}
    for kind, key, entries in (("features", "input", cfg.drift.features), ("outputs", "output", cfg.drift.outputs)):
        known = declared["inputs" if kind == "features" else "outputs"]
        for i, e in enumerate(entries):
            tensor = getattr(e, key)
            if known and tensor not in known:
                problems.append((f"drift.{kind}[{i}].{key}", f"'{tensor}' is not among the declared {kind if kind == 'outputs' else 'inputs'} {sorted(known)}"))
            names = e.names or ((f"{tensor}_argmax",) if getattr(e, "argmax", False) else
                                tuple(f"{tensor}_{c}" for c in e.columns) if e.columns else ())
            for n in names:
                if n in seen:
                    problems.append((f"drift.{kind}[{i}].names", f"stream name '{n}' is also used by {seen[n]}"))
                seen.setdefault(n, f"drift.{kind}[{i}]")
    ph = cfg.drift.page_hinkley
    if ph is not None and declared["outputs"] and ph.output not in declared["outputs"]:
        problems.append(("drift.page_hinkley.output", f"'{ph.output}' is not among the declared outputs {sorted(declared['outputs'])}"))
    return problems


def describe_policy(policy: VersionPolicy) -> str:
    if policy.all:
        return "{all: true}"
    if policy.specific is not None:
        return "{specific: %s}" % list(policy.specific)
    return "{latest: %d}" % (policy.latest or 1)


def routing_version_problems(cfg: ModelConfig, available: list[int]) -> list[tuple[str, str]]:
    """(field, reason) for each version the routing section names that the version policy does not serve."""
    if cfg.routing is None:
        return []
    served = cfg.version_policy.select(available)
    return unserved_versions(cfg.routing, served, describe_policy(cfg.version_policy))


def validate_model_config(raw: Any, *, file: str, default_name: str) -> tuple[ModelConfig | None, list[ConfigError]]:
    """The config of a parsed YAML document and every problem in it (the config is None when a
    field is invalid; cross-field problems come with the config they were found in)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [ConfigError(file, "(file)", f"expected a mapping at the top level, got {type(raw).__name__}")]
    raw = dict(raw)
    raw.setdefault("name", default_name)
    errors: list[ConfigError] = []
    if raw["name"] != default_name:
        errors.append(ConfigError(file, "name", f"'{raw['name']}' must match the model's directory '{default_name}'"))
        raw["name"] = default_name
    try:
        cfg = ModelConfig.model_validate(raw)
    except ValidationError as exc:
        return None, errors + _to_config_errors(exc, file)
    return cfg, errors + [ConfigError(file, f, r) for f, r in cross_field_problems(cfg)]


def parse_model_config(raw: Any, *, file: str, default_name: str) -> ModelConfig:
    """Validate a parsed YAML document; the first problem is raised, naming the file and the field."""
    cfg, errors = validate_model_config(raw, file=file, default_name=default_name)
    if errors:
        raise errors[0]
    assert cfg is not None
    return cfg


def _to_config_errors(exc: ValidationError, file: str) -> list[ConfigError]:
    out = []
    for err in exc.errors():
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        out.append(ConfigError(file, field_path(tuple(err["loc"])) or "(file)", reason))
    return out


def _read_raw(model_dir: str) -> tuple[str, str, Any]:
    """(directory name, config path, parsed YAML or None when there is no file)."""
    name = os.path.basename(os.path.normpath(model_dir))
    path = os.path.join(model_dir, CONFIG_FILENAME)
    if not os.path.exists(path):
        return name, path, None
    try:
        with open(path, encoding="utf-8") as fh:
            return name, path, yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, "(file)", f"not valid YAML: {exc}") from None


def load_model_config(model_dir: str) -> ModelConfig:
    name, path, raw = _read_raw(model_dir)
    cfg = parse_model_config(raw, file=path, default_name=name)
    for field, reason in attach_labels(cfg, model_dir):
        raise ConfigError(path, field, reason)
    return cfg


def _read_labels(path: str) -> tuple[str, ...]:
    """The file's lines without their line ends; raises ValueError saying what is wrong."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LABEL_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read '{os.path.basename(path)}': {exc.strerror}") from None
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"'{os.path.basename(path)}' is larger than {MAX_LABEL_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"'{os.path.basename(path)}' is not UTF-8 text") from None
    labels = tuple(text.splitlines())
    if not labels:
        raise ValueError(f"'{os.path.basename(path)}' is empty")
    return labels


def attach_labels(cfg: ModelConfig, model_dir: str) -> list[tuple[str, str]]:
    """Read each output's label_filename into its ``labels``; (field, reason) for those that fail."""
    problems = []
    for i, t in enumerate(cfg.outputs):
        if not t.label_filename:
            continue
        try:
            t._labels = _read_labels(os.path.join(model_dir, t.label_filename))
        except ValueError as exc:
            problems.append((f"outputs[{i}].label_filename", str(exc)))
    return problems


def all_errors(model_dir: str) -> list[ConfigError]:
    """Every problem in a model directory's config (for ``gateway check``): what
    ``load_model_config`` raises first, and the rest, and routed versions the policy does not serve."""
    try:
        name, path, raw = _read_raw(model_dir)
    except ConfigError as exc:
        return [exc]
    cfg, errors = validate_model_config(raw, file=path, default_name=name)
    if cfg is None:
        return errors
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit() and int(v) >= 1 and os.path.isdir(os.path.join(model_dir, v))]
    # Cross-field problems come with validate_model_config already.
    problems = routing_version_problems(cfg, versions) + attach_labels(cfg, model_dir)
    return errors + [ConfigError(path, f, r) for f, r in problems]
