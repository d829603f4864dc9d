"""The reload planner, driven by hand: repository entries and manager memory as plain data."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.core.errors import ConfigError
from gateway.core.model_config import ModelConfig, VersionPolicy
from gateway.core.model_state import ModelState
from gateway.core.repository import ModelEntry, VersionFiles
from gateway.service.reload_plan import (
    Action,
    FailedLoad,
    ServingVersion,
    VersionStep,
    plan_reload,
    settle,
)

A = (100, 1)  # a model file's (size, mtime_ns)
B = (120, 2)  # the same file rewritten
DIGEST = "cfg-1"


def entry(versions: dict[int, tuple[int, int]], *, digest: str = DIGEST, policy: dict | None = None) -> ModelEntry:
    cfg = ModelConfig(name="m", version_policy=VersionPolicy.model_validate(policy or {"latest": 1}))
    files = {v: VersionFiles(v, f"/repo/m/{v}/model.onnx", fp) for v, fp in versions.items()}
    return ModelEntry("m", "/repo/m", cfg, None, digest, files)


def broken(versions: dict[int, tuple[int, int]]) -> ModelEntry:
    error = ConfigError("/repo/m/model.yaml", "max_batch_size", "must be >= 0")
    files = {v: VersionFiles(v, f"/repo/m/{v}/model.onnx", fp) for v, fp in versions.items()}
    return ModelEntry("m", "/repo/m", None, error, "cfg-bad", files)


def serving(**versions: tuple[tuple[int, int], str]) -> dict[int, ServingVersion]:
    return {int(v[1:]): ServingVersion(fp, digest) for v, (fp, digest) in versions.items()}


def actions(plan) -> dict[int, Action]:
    return {s.version: s.action for s in plan.steps}


# --- plan_reload ------------------------------------------------------------


def test_new_version_waits_until_two_scans_agree():
    plan = plan_reload(entry({1: A}), {}, {}, {}, force=False)
    assert actions(plan) == {1: Action.WAIT}
    assert plan.seen == {1: A}  # remembered, so the next scan can call it stable
    assert plan.loads == ()
    out = settle(plan, {}, {})
    assert (out.state, out.reason) == (ModelState.UNAVAILABLE, "no version to serve")
    assert out.keep_old == out.use_new == out.retire == ()


def test_first_scan_or_explicit_load_builds_at_once():
    plan = plan_reload(entry({1: A}), {}, {}, {}, force=True)
    assert plan.loads == (VersionStep(1, Action.LOAD, has_old=False),)
    out = settle(plan, {1}, {})
    assert (out.use_new, out.state, out.reason, out.retire) == ((1,), ModelState.READY, "", ())


def test_stable_files_load():
    plan = plan_reload(entry({1: A}), {}, {1: A}, {}, force=False)
    assert actions(plan) == {1: Action.LOAD}


def test_files_that_changed_since_last_scan_wait():
    plan = plan_reload(entry({1: B}), {}, {1: A}, {}, force=False)
    assert actions(plan) == {1: Action.WAIT}
    assert plan.seen == {1: B}


def test_unchanged_serving_version_is_kept_and_not_re_seen():
    plan = plan_reload(entry({1: A}), serving(v1=(A, DIGEST)), {1: A}, {}, force=True)
    assert actions(plan) == {1: Action.KEEP}
    assert plan.seen == {}  # a kept version leaves the scan memory as it was
    out = settle(plan, {}, {})
    assert (out.keep_old, out.use_new, out.retire, out.state) == ((1,), (), (), ModelState.READY)


def test_rewritten_file_of_a_serving_version_waits_and_the_old_build_serves():
    plan = plan_reload(entry({1: B}), serving(v1=(A, DIGEST)), {1: A}, {}, force=False)
    assert plan.steps == (VersionStep(1, Action.WAIT, has_old=True),)
    out = settle(plan, {}, {})
    assert (out.keep_old, out.retire, out.state, out.reason) == ((1,), (), ModelState.READY, "")


def test_rewritten_file_once_stable_replaces_the_old_build():
    plan = plan_reload(entry({1: B}), serving(v1=(A, DIGEST)), {1: B}, {}, force=False)
    assert plan.steps == (VersionStep(1, Action.LOAD, has_old=True),)
    out = settle(plan, {1}, {})
    assert (out.use_new, out.keep_old, out.retire, out.cleared) == ((1,), (), (1,), (1,))


def test_config_digest_change_reloads_same_files_without_waiting():
    # The files did not move, so there is nothing to settle: only model.yaml changed.
    plan = plan_reload(entry({1: A}, digest="cfg-2"), serving(v1=(A, DIGEST)), {}, {}, force=False)
    assert plan.steps == (VersionStep(1, Action.LOAD, has_old=True),)


def test_failed_files_are_not_retried_and_report_the_old_reason():
    failed = {1: FailedLoad(A, DIGEST, "model.onnx: failed to load: bad graph")}
    plan = plan_reload(entry({1: A}), {}, {1: A}, failed, force=False)
    assert plan.steps == (VersionStep(1, Action.SKIP_FAILED, False, "model.onnx: failed to load: bad graph"),)
    out = settle(plan, {}, {})
    assert (out.state, out.reason) == (ModelState.UNAVAILABLE, "model.onnx: failed to load: bad graph")


def test_failed_new_files_keep_the_old_build_serving():
    failed = {1: FailedLoad(B, DIGEST, "bad")}
    plan = plan_reload(entry({1: B}), serving(v1=(A, DIGEST)), {1: B}, failed, force=False)
    assert actions(plan) == {1: Action.SKIP_FAILED}
    out = settle(plan, {}, {})
    assert (out.keep_old, out.retire, out.state, out.reason) == ((1,), (), ModelState.READY, "bad")


@pytest.mark.parametrize(
    ("failure", "force"),
    [
        (FailedLoad(A, DIGEST, "bad"), True),  # an explicit load retries
        (FailedLoad(B, DIGEST, "bad"), False),  # other files: a fix
        (FailedLoad(A, "cfg-0", "bad"), False),  # other config: a fix
    ],
)
def test_a_failure_is_retried_when_forced_or_when_files_or_config_changed(failure, force):
    plan = plan_reload(entry({1: A}), {}, {1: A}, {1: failure}, force=force)
    assert actions(plan) == {1: Action.LOAD}


def test_version_dropped_by_the_policy_retires_once_the_new_one_serves():
    plan = plan_reload(entry({1: A, 2: A}), serving(v1=(A, DIGEST)), {2: A}, {}, force=False)
    assert actions(plan) == {2: Action.LOAD}  # latest: 1 wants only version 2
    assert plan.retire == (1,)
    out = settle(plan, {2}, {})
    assert (out.use_new, out.keep_old, out.retire, out.drop_status) == ((2,), (), (1,), (1,))
    assert out.state == ModelState.READY


def test_version_dropped_by_the_policy_keeps_serving_while_the_new_one_fails():
    plan = plan_reload(entry({1: A, 2: A}), serving(v1=(A, DIGEST)), {2: A}, {}, force=False)
    out = settle(plan, set(), {2: FailedLoad(A, DIGEST, "v2 is broken")})
    assert (out.use_new, out.keep_old, out.retire, out.drop_status) == ((), (1,), (), ())
    assert (out.state, out.reason) == (ModelState.READY, "v2 is broken")
    assert out.failed == {2: FailedLoad(A, DIGEST, "v2 is broken")} and out.cleared == ()


def test_version_dropped_by_the_policy_keeps_serving_while_the_new_one_is_written():
    plan = plan_reload(entry({1: A, 2: B}), serving(v1=(A, DIGEST)), {2: A}, {}, force=False)
    assert actions(plan) == {2: Action.WAIT}
    out = settle(plan, {}, {})
    assert (out.keep_old, out.retire, out.state) == ((1,), (), ModelState.READY)


def test_all_policy_plans_every_version_and_reports_each_failure_in_order():
    plan = plan_reload(entry({1: A, 2: A, 3: A}, policy={"all": True}), {}, {}, {}, force=True)
    assert actions(plan) == {1: Action.LOAD, 2: Action.LOAD, 3: Action.LOAD}
    out = settle(plan, {2}, {1: FailedLoad(A, DIGEST, "one"), 3: FailedLoad(A, DIGEST, "three")})
    assert (out.use_new, out.state, out.reason) == ((2,), ModelState.READY, "one; three")


def test_invalid_config_with_a_serving_version_keeps_it():
    plan = plan_reload(broken({1: A}), serving(v1=(A, DIGEST)), {1: A}, {}, force=False)
    assert plan.steps == () and plan.retire == () and plan.seen == {}
    assert plan.state == ModelState.READY
    assert plan.config_error is not None and "max_batch_size" in plan.config_error
    with pytest.raises(AssertionError):
        settle(plan, {}, {})


def test_invalid_config_with_nothing_serving_is_unavailable():
    plan = plan_reload(broken({1: A}), {}, {}, {}, force=True)
    assert plan.state == ModelState.UNAVAILABLE and plan.loads == ()


def test_no_version_directory_says_so():
    out = settle(plan_reload(entry({}), {}, {}, {}, force=True), {}, {})
    assert (out.state, out.reason) == (ModelState.UNAVAILABLE, "no version directory with a model file")


def test_plans_are_frozen_and_the_state_is_a_plain_string():
    plan = plan_reload(entry({1: A}), {}, {}, {}, force=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.retire = (1,)  # type: ignore[misc]
    assert ModelState.READY == "READY" and f"{ModelState.UNAVAILABLE}" == "UNAVAILABLE"
