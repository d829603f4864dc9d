"""A model file's signature (input and output tensors) read from the file, without a runtime:
what ``gateway check`` validates a config against. The executors report the same specs once
loaded (``onnxruntime``'s view of the graph); both name datatypes through ``datatypes.from_onnx``."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core import datatypes
from gateway.core.types import TensorSpec


@dataclass(frozen=True, slots=True)
class GraphSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _spec(value_info) -> TensorSpec:
    import onnx

    tensor = value_info.type.tensor_type
    type_name = f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})"
    # As onnxruntime reports it: symbolic or unknown dims are dynamic.
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(value_info.name, datatypes.from_onnx(type_name), shape)


def onnx_signature(path: str) -> GraphSignature:
    """Blocking (parses the whole file); raises on a file that is not a readable ONNX model or
    has a tensor type the gateway does not serve."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}  # graph inputs with a default are not fed
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return GraphSignature(inputs, tuple(_spec(v) for v in model.graph.output))
