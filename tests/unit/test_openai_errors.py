"""OpenAI-shaped errors: every error code has a type, statuses come from the one table."""

from __future__ import annotations

import json

from gateway.api.errors import HTTP_STATUS
from gateway.api.openai.errors import OPENAI_TYPE, error_document, error_response, sse_error_event
from gateway.core.errors import ErrorCode, InvalidInputError, ModelNotFoundError, QueueFullError


def test_every_error_code_has_an_openai_type():
    assert set(OPENAI_TYPE) == set(ErrorCode)


def test_field_error_names_its_param():
    status, doc = error_document(InvalidInputError("temperature must be between 0 and 2, got 3", param="temperature"))
    assert status == 400
    assert doc == {"error": {"message": "temperature must be between 0 and 2, got 3",
                             "type": "invalid_request_error", "param": "temperature", "code": None}}


def test_unknown_model_and_overload_codes():
    status, doc = error_document(ModelNotFoundError("model 'x' not found"))
    assert (status, doc["error"]["code"]) == (404, "model_not_found")
    status, doc = error_document(QueueFullError("full"))
    assert (status, doc["error"]["type"]) == (HTTP_STATUS[ErrorCode.RESOURCE_EXHAUSTED], "rate_limit_error")


def test_a_bug_is_a_500_server_error_without_leaking_a_traceback():
    resp = error_response(RuntimeError("boom"))
    doc = json.loads(resp.body)
    assert resp.status == 500 and doc["error"]["type"] == "server_error"
    assert "Traceback" not in doc["error"]["message"]


def test_stream_error_event_is_one_sse_data_line():
    event = sse_error_event(QueueFullError("full"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["message"] == "full"
