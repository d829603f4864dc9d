"""Constrained decoding's cost: generation tokens/s with a JSON schema vs without, in process
on examples/tiny_llm.py's model (the engine, no HTTP: the mask is what is measured).

    .venv/bin/python benchmarks/structured_bench.py [--streams 8] [--tokens 96] [--rounds 5]

Each round submits ``--streams`` requests at once (greedy, max_tokens ``--tokens``) and
waits for all; tokens/s = generated tokens / wall time, best of the rounds. The schema (an
array of short strings, long enough that outputs reach max_tokens) makes both runs
generate about as many tokens. Also printed: the mean cost of a mask (llguidance's
bitmask, unpacked and applied to the logits row) and of advancing the matcher, per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import tiny_llm  # noqa: E402

from gateway.core.generation import GenerationRequest, OutputConstraint, SamplingParams  # noqa: E402
from gateway.core.model_config import GenerationConfig  # noqa: E402
from gateway.executors.onnxruntime import OnnxRuntimeExecutor  # noqa: E402
from gateway.scheduler.generation import constraints  # noqa: E402
from gateway.service.generation import build_generation_engine  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"words": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 40, "maxItems": 60}},
    "required": ["words"],
    "additionalProperties": False,
}


class _Timed:
    """Wraps Constraint.mask/advance to sum their time (worker thread only: no locks needed)."""

    mask_ns = advance_ns = masks = advances = 0

    @classmethod
    def install(cls) -> None:
        mask, advance = constraints.Constraint.mask, constraints.Constraint.advance

        def timed_mask(self, row):
            t = time.perf_counter_ns()
            out = mask(self, row)
            cls.mask_ns += time.perf_counter_ns() - t
            cls.masks += 1
            return out

        def timed_advance(self, token):
            t = time.perf_counter_ns()
            advance(self, token)
            cls.advance_ns += time.perf_counter_ns() - t
            cls.advances += 1

        constraints.Constraint.mask, constraints.Constraint.advance = timed_mask, timed_advance


async def _round(engine, streams: int, tokens: int, constraint: OutputConstraint | None) -> tuple[int, float]:
    async def one(i):
        stream = engine.submit(GenerationRequest("tiny", SamplingParams(max_tokens=tokens, temperature=0),
                                                 prompt=f"Tell me a story number {i}", constraint=constraint))
        n = 0
        async for event in stream:
            n += len(event.token_ids)
        return n

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts), time.perf_counter() - start


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_llm.write_tiny_llm(tmp)
        model_file = str(model_dir / "1" / "model.onnx")
        engine = build_generation_engine("tiny", "1", GenerationConfig(context_length=256, max_sequences=32),
                                         OnnxRuntimeExecutor(model_file), model_file)
        spec = OutputConstraint(json.dumps(SCHEMA), "bench")
        await _round(engine, 1, 4, spec)  # builds the llguidance tokenizer and compiles the schema once
        _Timed.install()
        results = {}
        for label, constraint in (("no schema", None), ("json schema", spec)) * 1:
            best = 0.0
            for _ in range(args.rounds):
                n, wall = await _round(engine, args.streams, args.tokens, constraint)
                best = max(best, n / wall)
            results[label] = best
        for label, tps in results.items():
            print(f"{label:>12}: {tps:8.0f} tokens/s  ({args.streams} streams, max_tokens {args.tokens}, best of {args.rounds})")
        print(f"       ratio: {results['json schema'] / results['no schema']:.2f}x")
        print(f"  mask/token: {_Timed.mask_ns / max(_Timed.masks, 1) / 1e3:.1f} us   "
              f"advance/token: {_Timed.advance_ns / max(_Timed.advances, 1) / 1e3:.1f} us   ({_Timed.masks} masks)")
        await engine.drain(5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(ap.parse_args()))
