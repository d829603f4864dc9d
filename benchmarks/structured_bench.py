"""Constrained decoding's cost: generation tokens/s with a JSON schema vs without, in process
on examples/tiny_llm.py's model (the engine, no HTTP: the mask is what is measured).

    .venv/bin/python benchmarks/structured_bench.py [--streams 8] [--tokens 96] [--rounds 5]

Each round submits ``--streams`` requests at once (greedy, max_tokens ``--tokens``) and
waits for all; tokens/s = generated tokens / wall time, best of the rounds. The schema (an
array of short strings, long enough that outputs reach max_tokens) makes both runs
generate about as many tokens; the rounds alternate. Also printed, per masked token: the
time computing masks (llguidance, in a thread beside the model's step), applying them to the
step's rows (numpy) and advancing the matcher.
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
from gateway.scheduler.generation import engine as engine_module  # noqa: E402
from gateway.service.generation import build_generation_engine  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"words": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 40, "maxItems": 60}},
    "required": ["words"],
    "additionalProperties": False,
}


class _Timed:
    """Sums the time of computing masks (llguidance, in a thread beside the model's step), of
    applying them to a step's rows (numpy, on the step's thread) and of advancing the matchers."""

    fill_ns = apply_ns = advance_ns = masked_rows = advances = 0

    @classmethod
    def install(cls) -> None:
        fill, advance = constraints.ConstraintFactory.fill_pending, constraints.Constraint.advance
        apply = engine_module.mask_rows

        def timed_fill(self):
            t = time.perf_counter_ns()
            fill(self)
            cls.fill_ns += time.perf_counter_ns() - t

        def timed_apply(cs, rows):
            t = time.perf_counter_ns()
            out = apply(cs, rows)
            cls.apply_ns += time.perf_counter_ns() - t
            cls.masked_rows += len(rows)
            return out

        def timed_advance(self, token):
            t = time.perf_counter_ns()
            advance(self, token)
            cls.advance_ns += time.perf_counter_ns() - t
            cls.advances += 1

        constraints.ConstraintFactory.fill_pending = timed_fill
        engine_module.mask_rows = timed_apply
        constraints.Constraint.advance = timed_advance


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
        results = {"no schema": 0.0, "json schema": 0.0}
        for _ in range(args.rounds):  # interleaved: both see the same machine noise
            for label, constraint in (("no schema", None), ("json schema", spec)):
                n, wall = await _round(engine, args.streams, args.tokens, constraint)
                results[label] = max(results[label], n / wall)
        for label, tps in results.items():
            print(f"{label:>12}: {tps:8.0f} tokens/s  ({args.streams} streams, max_tokens {args.tokens}, best of {args.rounds})")
        print(f"       ratio: {results['json schema'] / results['no schema']:.2f}x")
        per = max(_Timed.masked_rows, 1)
        print(f"  per masked token: compute {_Timed.fill_ns / per / 1e3:.1f} us (beside the model), "
              f"apply {_Timed.apply_ns / per / 1e3:.1f} us, advance {_Timed.advance_ns / max(_Timed.advances, 1) / 1e3:.1f} us "
              f"({_Timed.masked_rows} masked tokens)")
        await engine.drain(5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(ap.parse_args()))
