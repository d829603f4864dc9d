"""A small onnxruntime runtime for MLServer: one InferenceSession, first input in, first output out.

Loaded by MLServer from model-settings.json (implementation "mlserver_onnx.OnnxModel");
parameters.uri is the .onnx file, parameters.extra.intra_op_threads the ORT thread count.
MLServer's adaptive batching (max_batch_size / max_batch_time) concatenates requests before
predict and splits the answer after it.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int((params.extra or {}).get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(params.uri, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self._session.run([self._output], {self._input: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(self._output, y)])
