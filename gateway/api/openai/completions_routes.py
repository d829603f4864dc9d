"""``POST /v1/completions`` and ``POST /v1/chat/completions``: JSON in; a JSON object or
Server-Sent Events out (``data: {...}`` chunks, then ``data: [DONE]``).

Admission happens before the response starts, so a bad request, a prompt over the
context limit or an overloaded model gets its status code (400, 404, 429) rather than an
error inside a 200 stream. A client that goes away is noticed at the next write: its
stream is closed and its sequences leave the decode batch at the next step.
"""

from __future__ import annotations

import dataclasses
import time

from aiohttp import web

from gateway.api.errors import HTTP_STATUS, classify
from gateway.api.http_routes import route_template
from gateway.api.routing_http import MODEL_VERSION_HEADER, ROUTE_KEY_HEADER
from gateway.api.openai.completions_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_chat,
    parse_completion,
)
from gateway.api.openai.completions_serving import CHAT, TEXT, CompletionServing
from gateway.api.openai.completions_tools import TOOLS_NONE
from gateway.api.openai.errors import error_response, sse_error_event
from gateway.api.openai.wire import json_bytes, read_json
from gateway.service import InferenceService

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
# Request header keeping one request out of the semantic cache (as the body's "cache": false does).
CACHE_HEADER = "X-Gateway-Cache"
_CACHE_OFF = frozenset({"off", "no", "false", "bypass"})


class _EventStream(web.StreamResponse):
    """An SSE answer whose head leaves with its first events, in one write (aiohttp 3.14's switch,
    as its plain Response uses): the stream has started on the engine already, so the first
    chunk follows the head within a decode step or a prefill."""

    _send_headers_immediately = False


def _cache_headers(stream) -> dict[str, str]:
    """The version that answered (routing may pick it) and, on a semantic-cache hit, how close
    the matched prompt was."""
    headers = {MODEL_VERSION_HEADER: stream.version}
    if stream.cache_similarity is not None:
        headers.update({CACHE_HEADER: "semantic-hit", "X-Gateway-Cache-Similarity": f"{stream.cache_similarity:.4f}"})
    return headers


def _completion_attributes(stream) -> dict:
    return {"http.response.status_code": 200, "gateway.model.version": stream.version,
            "gen_ai.usage.input_tokens": stream.prompt_tokens, "gen_ai.usage.output_tokens": stream.completion_tokens}


def _event(doc: dict) -> bytes:
    return b"data: " + json_bytes(doc) + b"\n\n"



class OpenAICompletionsApi:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.serving = CompletionServing(service)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
        ]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, TEXT)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CHAT)

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        start = time.monotonic_ns()
        model = ""
        telemetry = self.service.telemetry
        trace = None
        if telemetry.tracing is not None:
            route = route_template(request)
            trace = telemetry.tracing.begin("POST " + route, request.headers, start, {
                "http.request.method": "POST", "http.route": route})
        try:
            doc = await read_json(request)
            if isinstance(doc, dict) and isinstance(doc.get("model"), str):
                model = doc["model"]
            parsed: ChatCompletionRequest | CompletionRequest
            if kind == CHAT:
                parsed, gen = parse_chat(doc)
                gens = [gen]
            else:
                parsed, gens = parse_completion(doc)
            if request.headers.get(CACHE_HEADER, "").strip().lower() in _CACHE_OFF:
                gens = [dataclasses.replace(g, cache=False) for g in gens]
            if ROUTE_KEY_HEADER in request.headers:
                gens = [dataclasses.replace(g, route_key=request.headers[ROUTE_KEY_HEADER]) for g in gens]
            if trace is not None:
                trace.span.set_attribute("gateway.model.name", model)
                # One trace per HTTP request: with several prompts it follows the first one's steps.
                gens[0] = dataclasses.replace(gens[0], trace=trace.attach_generation())
            stream = await self.serving.start(gens)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            code, message = classify(exc)
            telemetry.request_done("http", model, "", code.value, start, time.monotonic_ns(), trace, message,
                                   {"http.response.status_code": HTTP_STATUS[code]})
            return error_response(exc)
        want_logprobs = gens[0].sampling.logprobs is not None
        echo = self.serving.echoes(gens, stream)
        tool_mode = parsed.tool_mode if isinstance(parsed, ChatCompletionRequest) else TOOLS_NONE
        tool_names = frozenset(t["function"]["name"] for t in gens[0].tools or ())
        if not parsed.stream:
            try:
                body = await self.serving.complete(kind, model, stream, want_logprobs, tool_mode, tool_names, echo)
            except Exception as exc:  # noqa: BLE001
                code, message = classify(exc)
                telemetry.request_done("http", stream.model, stream.version, code.value, start, time.monotonic_ns(),
                                       trace, message, {"http.response.status_code": HTTP_STATUS[code]})
                return error_response(exc)
            if trace is not None:
                trace.served_ns = time.monotonic_ns()
            answer = web.Response(body=json_bytes(body), content_type="application/json",
                                  headers=_cache_headers(stream))
            telemetry.request_done("http", stream.model, stream.version, "ok", start, time.monotonic_ns(), trace, None,
                                   _completion_attributes(stream))
            return answer
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        response = _EventStream(headers={**_SSE_HEADERS, **_cache_headers(stream)})
        outcome = "ok"
        try:
            await response.prepare(request)
            try:
                # One write per batch of ready chunks: one chunked-encoding frame and one send, not
                # one per token, when the engine hands over several steps' tokens at once.
                async for batch in self.serving.chunks(kind, model, stream, want_logprobs, include_usage,
                                                       tool_mode, tool_names, echo):
                    await response.write(b"".join(map(_event, batch)))
            except ConnectionError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failure mid-stream is one error event, then [DONE]
                outcome = classify(exc)[0].value
                await response.write(sse_error_event(exc))
            await response.write_eof(_DONE)
        except ConnectionError:
            outcome = "cancelled"  # the client went away; its sequences leave at the next step
        finally:
            stream.close()
        error = None if outcome == "ok" else outcome
        telemetry.request_done("http", stream.model, stream.version, outcome, start, time.monotonic_ns(), trace, error,
                               _completion_attributes(stream))
        return response
