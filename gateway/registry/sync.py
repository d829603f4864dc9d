"""The sidecar registry client: follows MLflow aliases into the local model repository.

Each poll resolves every followed model's aliases, downloads versions it does
not have yet (atomically, see ``local_files``), and writes the model's
``version_policy`` and ``routing`` into its ``model.yaml``; the repository
watcher then loads them like any other change. Serving never depends on the
registry: while it is down or slow nothing on disk changes, so what serves keeps
serving; failures are counted and logged once per change of state, and polls back
off exponentially with jitter.

Runs in the daemon (``start``/``stop`` or ``async with``, tasks on its loop) or
alone as ``gateway registry-sync``; the same class does both.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.core.errors import ConfigError
from gateway.core.registry_config import RegistryModelConfig
from gateway.core.repository import is_valid_model_name
from gateway.core.settings import ServerSettings
from gateway.registry import local_files
from gateway.registry.assignment import assign, managed_doc
from gateway.registry.health import Backoff, RegistryHealth
from gateway.registry.mlflow_client import MlflowClient, ModelVersion, RegistryError
from gateway.registry.reporting import Reporter, SnapshotSource

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FollowedModel:
    local: str  # directory name in the repository
    registered: str  # name in the MLflow registry
    config: RegistryModelConfig
    raw: Any  # the registry section as written in model.yaml (None: from the server settings)


class RegistrySync:
    def __init__(
        self,
        settings: ServerSettings,
        snapshots: SnapshotSource | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.repo = settings.model_repository
        self.from_settings = settings.registry_model_names
        token = settings.registry_token or os.environ.get("MLFLOW_TRACKING_TOKEN", "")
        self.client = MlflowClient(settings.registry_url, timeout_s=settings.registry_timeout_s, token=token)
        self.health = RegistryHealth()
        self.backoff = backoff or Backoff(settings.registry_poll_s, settings.registry_backoff_max_s, settings.registry_jitter)
        self.report_s = settings.registry_report_s
        self.followed: dict[str, FollowedModel] = {}
        self.reporter = (
            Reporter(self.client, settings.registry_experiment, snapshots, self._registered_name)
            if snapshots is not None and self.report_s > 0 else None
        )
        self.first_poll = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _log.info("registry: following %s (poll every %.1fs)", self.client.display_url, self.backoff.interval_s)
        self._tasks.append(loop.create_task(self._poll_loop(), name="registry-poll"))
        if self.reporter is not None:
            self._tasks.append(loop.create_task(self._report_loop(), name="registry-report"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.client.close()

    async def __aenter__(self) -> RegistrySync:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_first_poll(self, timeout_s: float) -> bool:
        """Wait (bounded) for the first poll, so a fresh replica starts on the registry's versions."""
        try:
            await asyncio.wait_for(self.first_poll.wait(), timeout_s)
            return True
        except TimeoutError:
            _log.warning("registry: first poll not done within %.1fs; serving what the repository holds", timeout_s)
            return False

    # -- polling ---------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - a bug in one poll must not end the loop
                _log.exception("registry poll failed")
                self.backoff.failed()
            finally:
                self.first_poll.set()
            await asyncio.sleep(self.backoff.next_wait_s())

    async def poll_once(self) -> bool:
        """One pass over every followed model; False when the registry was unavailable."""
        self.health.polls += 1
        self.followed = await asyncio.to_thread(self._discover)
        for model in self.followed.values():
            try:
                await self._sync_model(model)
            except RegistryError as exc:
                if exc.outage:
                    self.health.failed(exc.operation or "poll", str(exc))
                    self.backoff.failed()
                    return False  # the next models would fail alike: wait for the backoff
                self.health.problem(model.local, exc.operation or "poll", str(exc))
            except (ConfigError, OSError) as exc:
                self.health.problem(model.local, "write", str(exc))
        self.health.reached()
        self.backoff.succeeded()
        return True

    def _discover(self) -> dict[str, FollowedModel]:
        """Models whose model.yaml has a registry section, and those named in registry_models."""
        out: dict[str, FollowedModel] = {}
        try:
            names = sorted(os.listdir(self.repo))
        except OSError as exc:
            raise ConfigError(self.repo, "(repository)", str(exc)) from None
        for name in set(names) | set(self.from_settings):
            if not is_valid_model_name(name):
                continue
            path = local_files.config_path(self.repo, name)
            try:
                raw = local_files.read_doc(path).get("registry")
                cfg = RegistryModelConfig.model_validate(raw) if raw is not None else None
            except ConfigError as exc:
                self.health.note(name, str(exc))
                continue
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in ("registry", *err["loc"]))
                self.health.note(name, f"{path}: {field}: {err['msg']}")
                continue
            if cfg is None and name not in self.from_settings:
                continue
            cfg = cfg or RegistryModelConfig()
            registered = cfg.model_name or self.from_settings.get(name) or name
            out[name] = FollowedModel(name, registered, cfg, raw)
        return out

    def _registered_name(self, local: str) -> str | None:
        m = self.followed.get(local)
        return m.registered if m is not None else None

    async def _sync_model(self, model: FollowedModel) -> None:
        versions: dict[str, ModelVersion] = {}
        for alias in model.config.aliases:
            mv = await _tagged("poll", self.client.alias_version(model.registered, alias))
            if mv is None:
                continue
            if mv.status != "READY":
                # Still being registered: come back next poll rather than serve half of it.
                self.health.note(model.local, f"{model.registered}@{alias} -> version {mv.version} is {mv.status}")
                return
            versions[alias] = mv
        resolved = {alias: mv.version for alias, mv in versions.items()}
        plan = assign(model.config, resolved)
        if plan is None:
            self.health.note(
                model.local, f"alias '{model.config.live_alias}' of registered model '{model.registered}' is not set; "
                "nothing changes until it is",
            )
            return
        cfg_path = local_files.config_path(self.repo, model.local)
        current = await asyncio.to_thread(local_files.read_doc, cfg_path)
        filename = current.get("default_model_filename", "model.onnx")
        by_version = {mv.version: mv for mv in versions.values()}
        for v in plan.versions:
            _, size = await _tagged(
                "download", local_files.fetch_version(self.client, self.repo, model.local, by_version[v], filename)
            )
            if size:
                self.health.downloads += 1
                self.health.downloaded_bytes += size
                _log.info("registry: downloaded %s version %d into %s (%d bytes)",
                          model.registered, v, local_files.version_dir(self.repo, model.local, v), size)
        # The live version's own model.yaml, when its artifacts carry one, is the model's config.
        champion_cfg = os.path.join(local_files.version_dir(self.repo, model.local, plan.live), "model.yaml")
        base = await asyncio.to_thread(local_files.read_doc, champion_cfg) or current
        desired = managed_doc(base, model.raw, model.config, plan)
        if desired != current:
            await asyncio.to_thread(local_files.write_doc, cfg_path, desired)
            _log.info("registry: model %s: %s -> serving %s", model.local,
                      ", ".join(f"{a}={v}" for a, v in sorted(resolved.items())), plan.versions)
        for alias, v in resolved.items():
            self.health.assigned[(model.local, alias)] = v
        for alias in model.config.aliases:
            if alias not in resolved:
                self.health.assigned.pop((model.local, alias), None)
        self.health.clear(model.local)

    # -- reporting ---------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        assert self.reporter is not None
        while True:
            await asyncio.sleep(self.report_s)
            await self.report_once()

    async def report_once(self) -> None:
        assert self.reporter is not None
        try:
            await self.reporter.report_once()
        except RegistryError as exc:
            self.health.failed("report", str(exc))
        except Exception:  # noqa: BLE001 - reporting must never end the loop
            _log.exception("registry: report failed")
        else:
            self.health.reported()


async def _tagged(operation: str, call):
    """Await ``call``; a RegistryError it raises is marked with the operation that failed."""
    try:
        return await call
    except RegistryError as exc:
        exc.operation = exc.operation or operation
        raise
