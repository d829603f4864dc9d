"""The naive server most teams start with: FastAPI + pydantic JSON + onnxruntime, one process.

    python fastapi_server.py --port P --model mlp=/path/mlp.onnx [--model cnn=...]

POST /predict {"model": str, "shape": [int], "data": [float]} -> {"shape": [...], "data": [...]}.
A plain `def` endpoint: FastAPI runs it in its thread pool. Access logs are off (they would
only make this peer slower).
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI()
sessions: dict[str, ort.InferenceSession] = {}


class PredictRequest(BaseModel):
    model: str
    shape: list[int]
    data: list[float]


@app.get("/health")
def health() -> dict:
    return {"status": "ok", "models": sorted(sessions)}


@app.post("/predict")
def predict(req: PredictRequest) -> dict:
    session = sessions.get(req.model)
    if session is None:
        raise HTTPException(404, f"unknown model {req.model}")
    x = np.asarray(req.data, dtype=np.float32).reshape(req.shape)
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    return {"shape": list(y.shape), "data": y.ravel().tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    ap.add_argument("--intra-op-threads", type=int, default=1)
    args = ap.parse_args()
    for spec in args.model:
        name, path = spec.split("=", 1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.intra_op_threads
        sessions[name] = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
