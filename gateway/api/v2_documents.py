"""The v2 model-configuration and statistics documents, built from core types for both protocols.

Over HTTP they are JSON the way Triton writes them: counts, sizes and dims are JSON numbers
(protobuf's own JSON mapping turns every 64-bit integer into a string) and every field is
present, zeros and empty lists included. perf_analyzer reads the statistics with rapidjson's
``GetUint64`` and takes garbage from a string or an error from a missing field. gRPC sends the
same content as protobuf messages; ``grpc_server`` turns these documents into them.

``loaded`` below is the service's loaded model version (name, version, platform, config,
max_batch_size, inputs, outputs), as ``InferenceService.loaded`` and ``.statistics`` return it.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway._proto import model_config_pb2 as mc
from gateway.core.stats import Duration, ModelStats

# -- model configuration ----------------------------------------------------------------------


def model_config_message(loaded) -> mc.ModelConfig:
    """The model's configuration as Triton's ModelConfig protobuf."""
    cfg = loaded.config
    db = cfg.dynamic_batching

    def tensors(specs, cls):
        return [cls(name=s.name, data_type=mc.DataType.Value("TYPE_STRING" if s.datatype == "BYTES" else "TYPE_" + s.datatype),
                    dims=s.shape) for s in specs]

    msg = mc.ModelConfig(
        name=loaded.name,
        platform=loaded.platform,
        backend=cfg.backend,
        max_batch_size=loaded.max_batch_size,
        input=tensors(loaded.inputs, mc.ModelInput),
        output=tensors(loaded.outputs, mc.ModelOutput),
        instance_group=[mc.ModelInstanceGroup(name=f"{loaded.name}_0", count=cfg.instances, kind=mc.ModelInstanceGroup.KIND_CPU)],
        default_model_filename=cfg.default_model_filename,
    )
    # Runtime settings without a field of their own, as Triton's ORT backend does.
    msg.parameters["intra_op_threads"].string_value = str(cfg.intra_op_threads)
    msg.parameters["adaptive_delay"].string_value = str(db.adaptive_delay).lower()
    msg.response_cache.enable = cfg.cache.exact
    policy = cfg.version_policy
    if policy.all:
        msg.version_policy.all.SetInParent()
    elif policy.specific is not None:
        msg.version_policy.specific.versions.extend(policy.specific)
    else:
        msg.version_policy.latest.num_versions = policy.latest or 1
    if loaded.max_batch_size > 0:
        dbm = msg.dynamic_batching
        dbm.preferred_batch_size.extend(db.preferred_batch_sizes)
        dbm.max_queue_delay_microseconds = db.max_queue_delay_us
        dbm.priority_levels = db.priority_levels if db.priority_levels > 1 else 0
        dbm.default_priority_level = db.default_priority if db.priority_levels > 1 else 0
        q = dbm.default_queue_policy
        q.timeout_action = mc.ModelQueuePolicy.REJECT if db.timeout_action == "reject" else mc.ModelQueuePolicy.DELAY
        q.default_timeout_microseconds = db.default_timeout_us
        q.allow_timeout_override = db.allow_timeout_override
        q.max_queue_size = db.max_queue_size
    return msg


_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
})


def _int64_as_numbers(desc: Descriptor, doc: dict) -> dict:
    """Turn protobuf-JSON's 64-bit integer strings back into numbers, in place (map keys stay strings)."""
    for f in desc.fields:
        value = doc.get(f.name)
        if value is None:
            continue
        sub = f.message_type
        if sub is not None and sub.GetOptions().map_entry:
            value_field = sub.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in value.values():
                    _int64_as_numbers(value_field.message_type, item)
            elif value_field.type in _INT64_TYPES:
                doc[f.name] = {k: int(v) for k, v in value.items()}
        elif sub is not None:
            for item in (value if f.is_repeated else (value,)):
                _int64_as_numbers(sub, item)
        elif f.type in _INT64_TYPES:
            doc[f.name] = [int(v) for v in value] if f.is_repeated else int(value)
    return doc


def model_config_document(loaded) -> dict:
    """``GET /v2/models/{m}/config`` as Triton answers it: the ModelConfig's JSON with field names
    as in the proto, every scalar and list present (defaults included) and 64-bit integers as
    numbers (``"dims": [64]``, not ``["64"]``)."""
    msg = model_config_message(loaded)
    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _int64_as_numbers(msg.DESCRIPTOR, doc)


# -- statistics -------------------------------------------------------------------------------

def _duration(d: Duration) -> dict:
    return {"count": d.count, "ns": d.ns}


_INFERENCE_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_STATS = ("compute_input", "compute_infer", "compute_output")


def statistics_document(loaded, stats: ModelStats) -> dict:
    """One ``$model_stat`` of Triton's statistics extension: every field, numbers as numbers.

    ``response_stats`` (per-response statistics of decoupled models) and ``memory_usage``
    (device memory measured at load) are empty: we have neither. ``queue`` counts cache hits, as
    Triton's does (they wait 0 ns): perf_analyzer finds the version it measures by its queue count
    growing, and with every request a hit it would find none.
    """
    inference_stats = {k: _duration(getattr(stats, k)) for k in _INFERENCE_STATS}
    inference_stats["queue"]["count"] += stats.cache_hit.count
    return {
        "name": loaded.name,
        "version": loaded.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": inference_stats,
        "response_stats": {},
        "batch_stats": [
            {"batch_size": size, **{k: _duration(getattr(stats.batches[size], k)) for k in _BATCH_STATS}}
            for size in sorted(stats.batches)
        ],
        "memory_usage": [],
    }
