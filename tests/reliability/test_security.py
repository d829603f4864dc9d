"""Security: TLS and mutual TLS on both ports, the admin token, model names that try to leave
the repository, and no secrets in the daemon's log."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from certs import make_certs
from reliability_helpers import ADMIN_TOKEN, AUTH
from tritonclient.utils import InferenceServerException

import make_models
from gateway.core.errors import ConfigError
from gateway.core.secrets import redact_url
from gateway.core.settings import load_settings

JSON = {"Content-Type": "application/json"}
SIMPLE_BODY = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]}).encode()


def simple_inputs(module):
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        inp = module.InferInput(name, [1, 16], "INT32")
        inp.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        inputs.append(inp)
    return inputs


def https(gw, context: ssl.SSLContext, path: str = "/v2/models/simple/infer", body: bytes | None = SIMPLE_BODY):
    req = urllib.request.Request(f"https://{gw.http_url}{path}", data=body, headers=JSON if body else {},
                                 method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple"])
    return root


def tls_args(certs, mutual: bool = False) -> tuple[str, ...]:
    args = ("--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key))
    return args + (("--tls-ca-file", str(certs.ca)) if mutual else ())


# ------------------------------------------------------------------------------ TLS


def test_tls_on_both_ports(repo, start_gateway, certs):
    gw = start_gateway(repo, *tls_args(certs))
    # gRPC: tritonclient with the CA as root certificate.
    client = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(certs.ca))
    assert client.infer("simple", simple_inputs(grpcclient)).as_numpy("OUTPUT0").shape == (1, 16)
    client.close()
    # A client that does not trust the server's CA, or speaks plaintext, gets nothing.
    for bad in (grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(certs.other_ca)),
                grpcclient.InferenceServerClient(gw.grpc_url)):
        with pytest.raises(InferenceServerException) as err:
            bad.infer("simple", simple_inputs(grpcclient), client_timeout=10)
        assert err.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
        bad.close()
    # HTTPS: tritonclient.http and the standard library.
    hclient = httpclient.InferenceServerClient(gw.http_url, ssl=True, ssl_options={"ca_certs": str(certs.ca)})
    assert hclient.infer("simple", simple_inputs(httpclient)).as_numpy("OUTPUT1").shape == (1, 16)
    hclient.close()
    status, body = https(gw, ssl.create_default_context(cafile=str(certs.ca)))
    assert status == 200 and json.loads(body)["outputs"][0]["name"] == "OUTPUT0"
    with pytest.raises(urllib.error.URLError):
        https(gw, ssl.create_default_context(cafile=str(certs.other_ca)))
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn = http.client.HTTPConnection(gw.http_url, timeout=10)
        conn.request("GET", "/v2/health/live")
        conn.getresponse().read()


def test_mutual_tls_requires_a_client_certificate(repo, start_gateway, certs):
    gw = start_gateway(repo, *tls_args(certs, mutual=True))
    client = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(certs.ca),
                                              private_key=str(certs.client_key), certificate_chain=str(certs.client_cert))
    assert client.infer("simple", simple_inputs(grpcclient)).as_numpy("OUTPUT0").shape == (1, 16)
    client.close()
    anonymous = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(certs.ca))
    with pytest.raises(InferenceServerException) as err:
        anonymous.infer("simple", simple_inputs(grpcclient), client_timeout=10)
    assert err.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
    anonymous.close()

    with_cert = ssl.create_default_context(cafile=str(certs.ca))
    with_cert.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    assert https(gw, with_cert)[0] == 200
    hclient = httpclient.InferenceServerClient(gw.http_url, ssl=True, ssl_options={
        "ca_certs": str(certs.ca), "certfile": str(certs.client_cert), "keyfile": str(certs.client_key)})
    assert hclient.infer("simple", simple_inputs(httpclient)).as_numpy("OUTPUT0").shape == (1, 16)
    hclient.close()
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        https(gw, ssl.create_default_context(cafile=str(certs.ca)))


def test_tls_settings_are_checked_at_load(certs, tmp_path):
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load_settings(overrides={"tls_cert_file": str(certs.server_cert)})
    with pytest.raises(ConfigError, match="mutual TLS"):
        load_settings(overrides={"tls_ca_file": str(certs.ca)})
    with pytest.raises(ConfigError, match="not a readable file"):
        load_settings(overrides={"tls_cert_file": str(tmp_path / "missing.pem"), "tls_key_file": str(certs.server_key)})


# ------------------------------------------------------------------------------ admin token

ADMIN_ROUTES = [("GET", "/v2/admin/models/simple/routing"), ("GET", "/v2/admin/debug/state"),
                ("DELETE", "/v2/admin/models/simple/routing"), ("POST", "/v2/admin/models/simple/routing/reset")]


def test_admin_endpoints_are_off_without_a_token(repo, start_gateway):
    gw = start_gateway(repo)
    for method, path in ADMIN_ROUTES:
        status, _, body = gw.http(method, path, b"{}" if method == "POST" else None, AUTH)
        assert status == 404 and b"admin endpoints are off" in body, (method, path, status)
    assert gw.http("GET", "/v2/models/simple/routing")[0] not in (401, 403)  # the public status needs no token


def test_admin_endpoints_need_the_token(repo, start_gateway):
    gw = start_gateway(repo, "--admin-token", ADMIN_TOKEN)
    for method, path in ADMIN_ROUTES:
        body = b"{}" if method == "POST" else None
        assert gw.http(method, path, body)[0] == 401, (method, path)
        assert gw.http(method, path, body, {"Authorization": "Basic " + ADMIN_TOKEN})[0] == 401
        assert gw.http(method, path, body, {"Authorization": "Bearer wrong-" + ADMIN_TOKEN})[0] == 403
        assert gw.http(method, path, body, {"Authorization": "Bearer " + ADMIN_TOKEN[:-1]})[0] == 403
    for method, path in ADMIN_ROUTES:
        status, _, body = gw.http(method, path, b"{}" if method == "POST" else None, AUTH)
        assert status in (200, 404) and (status == 200 or b"routing" in body), (method, path, status, body)
    assert gw.http("GET", "/v2/admin/debug/state", None, AUTH)[0] == 200


# ------------------------------------------------------------------------------ path traversal

TRAVERSALS = [
    "..", "../outside", "../outside/evil", "..%2Foutside%2Fevil", "%2E%2E%2Foutside%2Fevil", "%2e%2e",
    "..%5Coutside%5Cevil", "....%2F%2Foutside", "simple%2F..%2F..%2Foutside%2Fevil", "%252E%252E%252Foutside",
    "%2Fetc%2Fpasswd", "evil", ".evil", "simple%00", "%00", "~", "simple%2F1",
]


def _raw_http(gw, method: str, path: str) -> int:
    """The status for a path sent exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection(gw.http_url, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_model_names_cannot_leave_the_repository(tmp_path, start_gateway):
    repo = tmp_path / "models"
    make_models.write_repository(str(repo), ["simple"])
    outside = tmp_path / "outside"
    make_models.write_repository(str(outside), ["simple"])
    shutil.move(str(outside / "simple"), str(outside / "evil"))  # a valid model, just not in the repository
    gw = start_gateway(repo, "--repository-poll-s", "0")
    absolute = urllib.parse.quote(str(outside / "evil"), safe="")
    for name in TRAVERSALS + [absolute]:
        for method, template in [
            ("POST", "/v2/repository/models/{}/load"), ("POST", "/v2/repository/models/{}/unload"),
            ("GET", "/v2/models/{}"), ("GET", "/v2/models/{}/ready"), ("GET", "/v2/models/{}/config"),
            ("GET", "/v2/models/{}/stats"), ("POST", "/v2/models/{}/infer"), ("GET", "/v2/models/{}/versions/1"),
        ]:
            status = _raw_http(gw, method, template.format(name))
            assert status in (400, 404, 405, 503), (method, template, name, status)
        for raw in ("/v2/repository/models/../../outside/evil/load", "/v2/repository/models/../outside/evil/load"):
            assert _raw_http(gw, "POST", raw) in (400, 404)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    for name in ["..", "../outside/evil", "../../outside/evil", str(outside / "evil"), "evil", "simple/../../outside/evil",
                 "simple\x00", "./simple"]:
        for call in (client.load_model, client.unload_model, client.get_model_metadata, client.get_model_config):
            with pytest.raises(InferenceServerException) as err:
                call(name)
            assert err.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"), (call, name)
    names = {m["name"] for m in client.get_model_repository_index(as_json=True).get("models", [])}
    assert names == {"simple"}
    assert client.is_model_ready("simple")
    client.close()
    assert "evil" not in gw.log() and "outside" not in gw.log()


# ------------------------------------------------------------------------------ secrets in logs


def test_no_secrets_in_the_log(tmp_path, start_gateway, certs):
    from redis_server import free_port

    password = "redis-SECRET-pw-4711"
    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--requirepass", password, "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        repo = tmp_path / "models"
        make_models.write_repository(str(repo), ["simple"])
        (repo / "simple" / "model.yaml").write_text("max_batch_size: 8\ncache:\n  exact: true\n")
        cache_url = f"redis://:{password}@127.0.0.1:{port}/0"
        gw = start_gateway(repo, "--admin-token", ADMIN_TOKEN, "--cache-url", cache_url, "--cache-timeout-ms", "500",
                           "--log-level", "debug", "--log-format", "json", *tls_args(certs))
        context = ssl.create_default_context(cafile=str(certs.ca))
        for _ in range(3):
            assert https(gw, context)[0] == 200
        stats = json.loads(https(gw, context, "/v2/cache/stats", None)[1])
        assert password not in json.dumps(stats) and stats["shared"]["url"] == redact_url(cache_url)
        for token in (ADMIN_TOKEN, "wrong-token-value-123"):
            req = urllib.request.Request(f"https://{gw.http_url}/v2/admin/debug/state",
                                         headers={"Authorization": f"Bearer {token}"})
            try:
                urllib.request.urlopen(req, timeout=30, context=context).read()
            except urllib.error.HTTPError as err:
                assert err.code == 403
        redis.kill()  # the cache logs its outage, naming the server
        redis.wait(30)
        for _ in range(6):
            body = json.loads(SIMPLE_BODY)
            body["inputs"][0]["data"] = list(range(1, 17))
            assert https(gw, context, body=json.dumps(body).encode())[0] == 200
        gw.wait_for_log(re.compile(r"shared cache .* failed"), timeout=60)
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait(30)
    gw.terminate()
    log = gw.log()
    key_body = "".join(line for line in certs.server_key.read_text().splitlines() if "PRIVATE KEY" not in line)
    assert str(certs.server_key) in log  # the path is fine to log ...
    for secret in (ADMIN_TOKEN, password, "wrong-token-value-123", key_body[:40], key_body[-40:]):
        assert secret not in log, f"secret {secret[:6]}... appears in the log"
    assert "127.0.0.1:%d" % port in log  # the outage line is there, without the password


def test_redact_url():
    assert redact_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert redact_url("rediss://user:pw@host/1") == "rediss://***@host/1"
    assert redact_url("redis://host:6379/0?password=pw&db=1") == "redis://host:6379/0?password=***&db=1"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


# ------------------------------------------------------------------------------ model control and API keys

GRPC_TRANSPORTS = ["native", "grpcio"]


def _grpc_status(call, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as err:
        call(*args, **kwargs)
    return err.value.status()


@pytest.mark.parametrize("transport", GRPC_TRANSPORTS)
def test_model_control_needs_the_admin_token_when_one_is_set(repo, start_gateway, transport):
    gw = start_gateway(repo, "--admin-token", ADMIN_TOKEN, "--grpc-transport", transport, "--repository-poll-s", "0")
    wrong = {"Authorization": "Bearer wrong-" + ADMIN_TOKEN}
    for path in ("/v2/repository/index", "/v2/repository/models/simple/load", "/v2/repository/models/simple/unload"):
        status, _, body = gw.http("POST", path, b"{}")
        assert status == 401 and "admin_token" in json.loads(body)["error"], (path, status, body)
        status, _, body = gw.http("POST", path, b"{}", wrong)
        assert status == 403 and json.loads(body) == {"error": "wrong admin token"}, (path, status, body)
    assert gw.http("POST", "/v2/repository/models/simple/unload", b"{}", AUTH)[0] == 200
    status, _, body = gw.http("POST", "/v2/repository/index", b"{}", AUTH)
    assert status == 200 and [r["state"] for r in json.loads(body) if r["name"] == "simple"] == ["UNAVAILABLE"]
    assert gw.http("POST", "/v2/repository/models/simple/load", b"{}", AUTH)[0] == 200

    hclient = httpclient.InferenceServerClient(gw.http_url)
    with pytest.raises(InferenceServerException, match="admin_token"):
        hclient.load_model("simple")
    hclient.load_model("simple", headers=AUTH)
    assert hclient.infer("simple", simple_inputs(httpclient)).as_numpy("OUTPUT0").shape == (1, 16)  # inference stays open
    hclient.close()

    client = grpcclient.InferenceServerClient(gw.grpc_url)
    grpc_auth = {"authorization": AUTH["Authorization"]}
    grpc_wrong = {"authorization": wrong["Authorization"]}
    for call in (client.get_model_repository_index, lambda **kw: client.load_model("simple", **kw),
                 lambda **kw: client.unload_model("simple", **kw)):
        assert _grpc_status(call) == "StatusCode.UNAUTHENTICATED"
        assert _grpc_status(call, headers={"authorization": "Basic " + ADMIN_TOKEN}) == "StatusCode.UNAUTHENTICATED"
        assert _grpc_status(call, headers=grpc_wrong) == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("simple")  # refused calls changed nothing
    client.unload_model("simple", headers=grpc_auth)
    assert not client.is_model_ready("simple")
    client.load_model("simple", headers=grpc_auth)
    assert {m["name"] for m in client.get_model_repository_index(headers=grpc_auth, as_json=True)["models"]} == {"simple"}
    assert client.infer("simple", simple_inputs(grpcclient)).as_numpy("OUTPUT0").shape == (1, 16)
    client.close()
    assert ADMIN_TOKEN not in gw.log() and "wrong-" not in gw.log()


def _raw_status(gw, method: str, path: str, authorization: bytes, body: bytes = b"{}") -> tuple[int, dict]:
    """One request whose Authorization header carries exactly these bytes (no client-side encoding)."""
    host, port = gw.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nAuthorization: " + authorization
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


KEYS = ("key-one-4f1c9a", "key-two-8e2d7b")
HASHED = "sha256:" + hashlib.sha256(KEYS[1].encode()).hexdigest()


def test_non_ascii_authorization_answers_401_or_403_with_json_never_500(repo, start_gateway):
    gw = start_gateway(repo, "--admin-token", ADMIN_TOKEN, "--api-keys", f"{KEYS[0]},{HASHED}")
    routes = [*ADMIN_ROUTES, ("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/simple/load"),
              ("POST", "/v2/repository/models/simple/unload"), ("POST", "/v2/models/simple/infer"),
              ("GET", "/v1/models"), ("POST", "/v1/completions")]
    for authorization in (b"Bearer \xff", b"Bearer " + ADMIN_TOKEN.encode() + b"\xc3\xa9", b"\xff\xfe",
                          b"Bearer " + KEYS[0].encode() + b"\x80", b"Bearer \xed\xa0\x80"):
        for method, path in routes:
            status, doc = _raw_status(gw, method, path, authorization)
            assert status in (401, 403), (authorization, path, status, doc)
            error = doc["error"]
            assert (error["type"] in ("authentication_error", "permission_error")) if path.startswith("/v1") else \
                isinstance(error, str), (path, doc)
    assert "Traceback" not in gw.log() and "UnicodeEncodeError" not in gw.log()
    assert gw.proc.poll() is None


@pytest.mark.parametrize("transport", GRPC_TRANSPORTS)
def test_api_keys_guard_inference_on_both_protocols(repo, start_gateway, transport):
    import openai
    import queue

    gw = start_gateway(repo, "--api-keys", f"{KEYS[0]},{HASHED}", "--admin-token", ADMIN_TOKEN,
                       "--grpc-transport", transport, "--log-level", "debug")
    gw.wait_for_log(re.compile(r"inference needs an API key \(2 configured\)"), timeout=10)
    infer = "/v2/models/simple/infer"
    # HTTP: the key in 'Authorization: Bearer', plain or matched through its sha256 entry.
    for key in KEYS:
        assert gw.http("POST", infer, SIMPLE_BODY, {**JSON, "Authorization": f"Bearer {key}"})[0] == 200
        assert gw.http("POST", "/v2/models/simple/versions/1/infer", SIMPLE_BODY,
                       {**JSON, "Authorization": f"bearer  {key}"})[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS[0]},
                    {"Authorization": f"Bearer {HASHED}"},  # the digest is not the key
                    {"Authorization": f"Bearer {HASHED[7:]}"}, {"x-api-key": KEYS[0]},
                    AUTH):  # the admin token is not an API key
        status, resp_headers, body = gw.http("POST", infer, SIMPLE_BODY, {**JSON, **headers})
        assert status == 401 and resp_headers.get("WWW-Authenticate") == "Bearer", (headers, status)
        assert "API key" in json.loads(body)["error"]
    # What probes, scrapers and clients' set-up read stays open.
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/simple", "/v2/models/simple/ready",
                 "/v2/models/simple/config", "/metrics"):
        assert gw.http("GET", path)[0] == 200, path

    hclient = httpclient.InferenceServerClient(gw.http_url)
    result = hclient.infer("simple", simple_inputs(httpclient), headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert result.as_numpy("OUTPUT0").shape == (1, 16)
    with pytest.raises(InferenceServerException, match="API key"):
        hclient.infer("simple", simple_inputs(httpclient))
    assert hclient.is_server_ready() and hclient.get_model_metadata("simple")["name"] == "simple"
    hclient.close()

    # gRPC: metadata 'authorization', on ModelInfer and ModelStreamInfer.
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    good = {"authorization": f"Bearer {KEYS[0]}"}
    assert client.infer("simple", simple_inputs(grpcclient), headers=good).as_numpy("OUTPUT0").shape == (1, 16)
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": AUTH["Authorization"]}):
        assert _grpc_status(client.infer, "simple", simple_inputs(grpcclient), headers=headers) == "StatusCode.UNAUTHENTICATED"
    assert client.is_server_ready() and client.get_model_metadata("simple").name == "simple"
    for headers, expect_ok in ((good, True), (None, False)):
        results: queue.Queue = queue.Queue()
        client.start_stream(lambda result, error: results.put((result, error)), headers=headers)
        try:
            client.async_stream_infer("simple", simple_inputs(grpcclient), request_id="s1")
        except InferenceServerException:  # the stream was refused at its start, before this request
            assert not expect_ok
        result, error = results.get(timeout=30)
        client.stop_stream()
        if expect_ok:
            assert error is None and result.as_numpy("OUTPUT0").shape == (1, 16)
        else:
            assert result is None and error.status() == "StatusCode.UNAUTHENTICATED", error
    client.close()

    # /v1: the official client, and OpenAI's error envelope.
    base = f"http://{gw.http_url}/v1"
    assert openai.OpenAI(base_url=base, api_key=KEYS[0]).models.list().data == []  # no OpenAI-served model here
    with pytest.raises(openai.NotFoundError):  # past the key check: the tensor model is not an OpenAI model
        openai.OpenAI(base_url=base, api_key=KEYS[1], max_retries=0).models.retrieve("simple")
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"
    assert err.value.body["code"] == "invalid_api_key"
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/no-such-route"):
        status, resp_headers, body = gw.http("POST", path, b"{}", JSON)
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error", (path, status, body)
    # Shared-memory regions are an inference client's business: a key too.
    assert gw.http("GET", "/v2/systemsharedmemory/status")[0] == 401
    assert gw.http("GET", "/v2/systemsharedmemory/status", headers={"Authorization": f"Bearer {KEYS[0]}"})[0] == 200

    gw.terminate()
    log = gw.log()
    for secret in (*KEYS, ADMIN_TOKEN):
        assert secret not in log, f"secret {secret[:6]}... appears in the log"


def test_api_key_settings_are_validated_and_never_echoed(tmp_path):
    secret = "s3cret-key-value"
    assert load_settings(overrides={"api_keys": f" {secret} , {HASHED.upper().replace('SHA256', 'sha256')}"}) \
        .api_key_entries == (secret, HASHED)
    settings = load_settings(overrides={"api_keys": secret})
    assert secret not in repr(settings) and secret not in str(settings)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"api_keys:\n  - {secret}\n  - {HASHED}\n")
    assert load_settings(str(config)).api_key_entries == (secret, HASHED)
    for bad, reason in ((f"{secret},,other", "entry 2 is empty"), (f"sha256:{secret}", "64 hex digits"),
                        (f"{secret}\u00e9", "printable ASCII"), (f"{secret} tail", "printable ASCII")):
        with pytest.raises(ConfigError, match=reason) as err:
            load_settings(overrides={"api_keys": bad})
        assert secret not in str(err.value)
    with pytest.raises(ConfigError, match="admin_token"):
        load_settings(overrides={"admin_token": "two words"})
