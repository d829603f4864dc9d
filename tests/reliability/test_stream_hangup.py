"""A streamed chat completion whose client hangs up mid-stream frees its sequence and leaves no
asyncio task behind (tests/e2e/test_openai_generation.py checks the sequence of a plain
completion leaves the batch; this counts the tasks too, over repeated hang-ups)."""

from __future__ import annotations

import json
import socket

from daemons import LONG_CONTEXT, copy_model, endless_stream
from reliability_helpers import ADMIN_TOKEN, debug_state, metric_value

MODEL = "tiny-gpt"
YAML = f"""max_batch_size: 0
generation:
  context_length: {LONG_CONTEXT}
  default_max_tokens: 16
  max_sequences: 8
"""
HANGUPS = 5


def _active(gw) -> float:
    return metric_value(gw, "gateway_generation_active_sequences", model=MODEL)


def _hang_up_mid_stream(gw, model_dir, i: int) -> None:
    # Thousands of tokens: the sequence is still decoding when the client hangs up, however fast the engine.
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"tell me a long story {i}"}],
                       **endless_stream(model_dir)}).encode()
    host, port = gw.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while seen.count(b"data: ") < 2:  # the role chunk and one token: the sequence is decoding
            got = sock.recv(65536)
            assert got, "the server closed the stream early"
            seen += got
        assert b"[DONE]" not in seen
        gw.wait_until(lambda: _active(gw) >= 1, what="a running sequence")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close


def test_chat_stream_hung_up_mid_stream_frees_its_sequence_and_leaks_no_task(tmp_path, start_gateway, long_tiny_llm_model):
    root = tmp_path / "models"
    copy_model(long_tiny_llm_model.parent, root, long_tiny_llm_model.name)
    (root / MODEL / "model.yaml").write_text(YAML)
    gw = start_gateway(root, "--admin-token", ADMIN_TOKEN)
    # One finished stream first, so lazily started tasks (the engine's step loop) exist in the baseline.
    status, _, raw = gw.http("POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    gw.wait_until(lambda: _active(gw) == 0, timeout=30, what="the warm-up sequence to finish")
    baseline = gw.wait_until(lambda: debug_state(gw)["requests_in_progress"] == 0 and debug_state(gw),
                             what="nothing in progress")["asyncio_tasks"]
    cancelled0 = metric_value(gw, "gateway_generation_sequences_total", model=MODEL, reason="cancelled")

    for i in range(HANGUPS):
        _hang_up_mid_stream(gw, long_tiny_llm_model, i)

    gw.wait_until(lambda: _active(gw) == 0, timeout=60, what="the hung-up streams' sequences to leave the batch")
    state = gw.wait_until(lambda: (s := debug_state(gw))["asyncio_tasks"] <= baseline and s, timeout=60,
                          what=f"asyncio tasks back to the baseline {baseline}")
    assert state["requests_in_progress"] == 0
    assert metric_value(gw, "gateway_generation_sequences_total", model=MODEL, reason="cancelled") - cancelled0 == HANGUPS
    # Still serving: a full answer after the hang-ups.
    status, _, raw = gw.http("POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] >= 1
    assert "unexpected error" not in gw.log()
    print(f"\n[stream hang-up] {HANGUPS} chat streams hung up mid-stream; asyncio tasks {baseline} -> "
          f"{state['asyncio_tasks']}; active sequences 0; cancelled +{HANGUPS}")
