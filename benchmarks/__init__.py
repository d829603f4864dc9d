"""Side-by-side benchmark of the gateway, raw ONNX Runtime and peer servers (see run.py)."""
