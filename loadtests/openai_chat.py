"""locust: OpenAI-compatible chat completions, streamed (SSE) and not.

    locust -f loadtests/openai_chat.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s \
        --csv reports/openai_chat --html reports/openai_chat.html [--chat-model NAME] [--max-tokens 32]

Half the users' calls stream: for those the report also has "chat stream: first token"
(time to the first content chunk) next to the whole stream's time, and a stream that
ends without ``data: [DONE]`` or with an error chunk counts as a failure. Without
--chat-model the first model of GET /v1/models whose ``capabilities`` include
``chat.completions`` is used (servers that list no capabilities: the first model).
"""

from __future__ import annotations

import json
import time

from common import refresh_gevent_clock
from locust import FastHttpUser, events, task

PROMPTS = [
    "Summarise the plot of a film about a robot learning to paint.",
    "List three uses of a paperclip.",
    "What is the capital of the country that hosts the Louvre?",
    "Write a haiku about latency.",
]


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--chat-model", default="", help="model id (default: the first chat model of GET /v1/models)")
    parser.add_argument("--max-tokens", type=int, default=32)


def chat_model(models: list[dict]) -> str:
    """The first model that says it answers chat completions; with no model saying what it can
    do (another OpenAI-compatible server), the first model."""
    if not any("capabilities" in m for m in models):
        return models[0]["id"] if models else ""
    return next((m["id"] for m in models if "chat.completions" in m.get("capabilities", ())), "")


class ChatUser(FastHttpUser):
    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.chat_model
        if not self.model:
            with self.client.get("/v1/models", name="models", catch_response=True) as resp:
                models = resp.json().get("data") if resp.status_code == 200 else None
                self.model = chat_model(models or [])
                if not self.model:
                    resp.failure(f"no chat model: {resp.status_code} {resp.text[:300]}")
                    raise RuntimeError("GET /v1/models listed no model that answers chat completions")
        self.max_tokens = opts.max_tokens
        self.turn = 0

    def _body(self, stream: bool) -> dict:
        self.turn += 1
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPTS[self.turn % len(PROMPTS)]}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    @task
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=self._body(False), name="chat", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            doc = resp.json()
            if not doc.get("choices") or "usage" not in doc:
                resp.failure(f"answer without choices or usage: {resp.text[:200]}")

    @task
    def chat_stream(self) -> None:
        start = time.perf_counter()
        first_token_ms = None
        with self.client.post("/v1/chat/completions", json=self._body(True), name="chat stream",
                              stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            done, buffer = False, b""
            for chunk in resp.iter_content(chunk_size=4096, decode_content=False):
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if not event.strip():
                        continue
                    data = event.removeprefix(b"data: ").strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    doc = json.loads(data)
                    if "error" in doc:
                        resp.failure(f"error chunk: {doc['error']}")
                        return
                    if first_token_ms is None and any(c.get("delta", {}).get("content") for c in doc.get("choices", [])):
                        first_token_ms = (time.perf_counter() - start) * 1000
            if not done:
                resp.failure("stream ended without data: [DONE]")
                return
        if first_token_ms is not None:
            self.environment.events.request.fire(
                request_type="SSE", name="chat stream: first token", response_time=first_token_ms,
                response_length=0, exception=None, context={},
            )


refresh_gevent_clock()
