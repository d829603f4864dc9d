"""/v1 text generation traced through the gateway's real OTLP/HTTP exporter into the test receiver:
a server span continuing the caller's traceparent, with tokenize, queue wait, prefill, one decode
span for all steps (with their count) and detokenize as children."""

from __future__ import annotations

import shutil

import openai
import pytest
from otlp_receiver import OtlpReceiver
from test_tracing import SERVER_KIND, STATUS_ERROR, by_name, otel_env, traceparent

MODEL = "tiny-gpt"
GEN_HOPS = {"read request", "tokenize", "queue wait", "prefill", "decode", "detokenize"}


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(receiver, tiny_llm_model, tmp_path_factory):
    from daemons import Gateway

    root = tmp_path_factory.mktemp("traced-v1") / "models"
    shutil.copytree(tiny_llm_model, root / MODEL)
    (root / MODEL / "model.yaml").write_text("max_batch_size: 0\ngeneration: {context_length: 256, max_sequences: 8}\n")
    gw = Gateway(root, env=otel_env(receiver))
    yield gw
    gw.terminate()


def client(gw, header: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=60,
                         default_headers={"traceparent": header})


def check_generation_spans(spans: dict, root_name: str, caller_span: str, max_tokens: int, extra=frozenset()) -> None:
    root = spans[root_name]
    assert root.parent_span_id == caller_span and root.kind == SERVER_KIND
    assert root.attributes["gateway.model.name"] == MODEL and root.attributes["http.response.status_code"] == 200
    assert root.attributes["gen_ai.usage.output_tokens"] == max_tokens
    assert set(spans) == GEN_HOPS | {root_name} | extra
    for name in GEN_HOPS:
        child = spans[name]
        assert child.parent_span_id == root.span_id, name
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    assert spans["read request"].end_ns <= spans["tokenize"].start_ns <= spans["tokenize"].end_ns
    assert spans["tokenize"].end_ns <= spans["queue wait"].end_ns <= spans["prefill"].start_ns
    assert spans["prefill"].end_ns <= spans["decode"].start_ns
    # The first token comes from the prefill; each further one from a decode step (summarised in one span).
    assert spans["decode"].attributes["gateway.generation.decode_steps"] == max_tokens - 1
    assert spans["detokenize"].attributes["gateway.generation.tokens"] == max_tokens
    assert spans["tokenize"].attributes["gateway.generation.prompt_tokens"] == root.attributes["gen_ai.usage.input_tokens"]


def test_chat_completion_continues_the_callers_trace(traced, receiver):
    header, trace_id, caller_span = traceparent()
    out = client(traced, header).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0)
    n = out.usage.completion_tokens
    assert out.choices[0].finish_reason in ("length", "stop")
    spans = by_name(receiver.trace(trace_id, 1 + len(GEN_HOPS) + 1))
    if n < 2:
        pytest.skip("the random model ended at once: no decode step to trace")
    check_generation_spans(spans, "POST /v1/chat/completions", caller_span, n, {"encode"})
    assert spans["decode"].end_ns <= spans["encode"].start_ns


def test_streamed_completion_is_one_trace_closed_after_the_last_chunk(traced, receiver):
    header, trace_id, caller_span = traceparent()
    chunks = list(client(traced, header).completions.create(
        model=MODEL, prompt="once upon a time", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    n = chunks[-1].usage.completion_tokens
    spans = by_name(receiver.trace(trace_id, 1 + len(GEN_HOPS)))
    if n < 2:
        pytest.skip("the random model ended at once: no decode step to trace")
    check_generation_spans(spans, "POST /v1/completions", caller_span, n)


def test_a_refused_request_is_traced_with_error_status(traced, receiver):
    header, trace_id, caller_span = traceparent()
    with pytest.raises(openai.BadRequestError):
        client(traced, header).completions.create(model=MODEL, prompt=[1] * 300, max_tokens=4)  # context: 256
    spans = by_name(receiver.trace(trace_id, 3))
    assert set(spans) == {"POST /v1/completions", "read request", "tokenize"}
    root = spans["POST /v1/completions"]
    assert root.parent_span_id == caller_span
    assert root.name == "POST /v1/completions" and root.status_code == STATUS_ERROR
    assert root.attributes["http.response.status_code"] == 400
