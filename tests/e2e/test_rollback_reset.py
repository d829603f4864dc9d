"""The admin rollback reset names only served canaries: anything else is a 400 naming the field."""

from __future__ import annotations

import json

import pytest

import make_models

TOKEN = "reset-admin-token"
RESET = "/v2/admin/models/mlp/routing/reset"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from daemons import Gateway

    root = tmp_path_factory.mktemp("reset") / "models"
    for v in (1, 2, 3, 4):  # 4 is on disk but not served; 3 is served without a weight
        make_models._save(make_models.mlp_graph(v), str(root / "mlp" / str(v) / "model.onnx"))
    (root / "mlp" / "model.yaml").write_text(
        "max_batch_size: 32\nversion_policy: {specific: [1, 2, 3]}\n"
        "routing:\n  weights: {1: 90, 2: 10}\n  champion: 1\n  rollback: {max_error_rate: 0.5}\n"
    )
    g = Gateway(root, env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    yield g
    g.terminate()


def reset(gw, body) -> tuple[int, dict]:
    status, _, raw = gw.http("POST", RESET, json.dumps(body).encode(), AUTH)
    return status, json.loads(raw)


@pytest.mark.parametrize("versions, field, words", [
    ([4], "versions[0]", "not served"),          # on disk, outside the version policy
    ([2, 7], "versions[1]", "not served"),       # no such version at all
    (["two"], "versions[0]", "not served"),
    ([1], "versions[0]", "champion"),
    ([3], "versions[0]", "no weight"),           # served, but not part of the split
])
def test_reset_of_a_version_that_cannot_have_been_rolled_back_is_a_400_naming_it(gw, versions, field, words):
    status, doc = reset(gw, {"versions": versions})
    assert status == 400, doc
    assert doc["error"].startswith(field + ":") and words in doc["error"], doc


def test_reset_of_the_canary_and_of_everything_still_answers_the_status(gw):
    status, doc = reset(gw, {"versions": [2]})
    assert status == 200 and doc["versions"]["2"]["effective_weight"] == 10 and doc["versions"]["2"]["rolled_back"] is None
    status, doc = reset(gw, {})  # no list: every rolled-back version
    assert status == 200 and doc["versions"]["1"]["effective_weight"] == 90
    status, doc = reset(gw, {"versions": []})
    assert status == 200
