"""A small asynchronous client of MLflow's REST API: the registry calls and the artifact proxy.

Only what the sidecar needs: resolve an alias to a model version, find where its
artifacts live, list and download them through the tracking server's artifact
proxy (``/api/2.0/mlflow-artifacts/artifacts``), and log metrics and tags.
Nothing here retries: the caller owns the schedule (backoff, jitter).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from urllib.parse import quote, urlparse

import aiohttp

from gateway.core.secrets import redact_url

API = "/api/2.0/mlflow"
ARTIFACTS_ROUTE = "/api/2.0/mlflow-artifacts/artifacts"
# Error codes MLflow answers for "no such alias / model / version": not a failure of the registry.
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(Exception):
    """The registry could not be used: unreachable, too slow, or an answer we cannot use.

    ``outage`` is true when the registry itself is down, slow or overloaded (connection
    refused, timeout, 5xx, 429): polls back off. Otherwise it is a problem of one
    model (bad artifacts, refused access) and the other models go on.
    """

    def __init__(self, message: str, *, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage
        self.operation = ""  # what the client was doing: poll, download, report (set by the caller)


class RegistryAbsentError(RegistryError):
    """The registry answered that the named thing does not exist."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    name: str
    version: int
    source: str
    run_id: str
    status: str
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArtifactLocation:
    """A folder (or file) behind a tracking server's artifact proxy."""

    route: str  # http(s)://host:port/api/2.0/mlflow-artifacts/artifacts
    path: str  # relative to the proxy's root, no leading slash

    def child(self, name: str) -> ArtifactLocation:
        return ArtifactLocation(self.route, posixpath.join(self.path, name) if self.path else name)


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    path: str  # relative to the listed folder
    size: int


class MlflowClient:
    def __init__(self, base_url: str, *, timeout_s: float, token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        # What logs, errors and status pages show: the URL without its user:password.
        self.display_url = redact_url(self.base_url)
        self._userinfo = urlparse(self.base_url).netloc.rpartition("@")[0]
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never shows the token nor the URL's password
        return f"MlflowClient({self.display_url!r})"

    def _redact(self, text: str) -> str:
        """An error message with the registry's credentials taken out (artifact routes and some
        aiohttp errors carry the whole URL)."""
        if self._userinfo:
            text = text.replace(self._userinfo + "@", "***@")
        return text

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, *, params: dict | None = None, body: dict | None = None) -> dict:
        url = path if path.startswith("http") else self.base_url + path
        try:
            async with self._http().request(
                method, url, params=params, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RegistryError(self._redact(f"{method} {path}: {type(exc).__name__}: {exc or 'timed out'}"),
                                outage=True) from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        if status >= 400:
            code = doc.get("error_code", "") if isinstance(doc, dict) else ""
            message = doc.get("message", "") if isinstance(doc, dict) else ""
            if status in (400, 404) and code in _ABSENT:
                raise RegistryAbsentError(self._redact(f"{method} {path}: {code}: {message}"))
            raise RegistryError(self._redact(f"{method} {path}: HTTP {status} {code} {message}".rstrip()),
                                outage=status >= 500 or status == 429)
        if not isinstance(doc, dict):
            raise RegistryError(self._redact(f"{method} {path}: expected a JSON object"))
        return doc

    # -- registry ------------------------------------------------------------------------

    async def alias_version(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points at; None when the model or the alias does not exist."""
        try:
            doc = await self._call("GET", f"{API}/registered-models/alias", params={"name": name, "alias": alias})
        except RegistryAbsentError:
            return None
        mv = doc.get("model_version")
        if not isinstance(mv, dict) or not str(mv.get("version", "")).isdigit():
            raise RegistryError(f"alias {name}@{alias}: answer without a model version")
        return ModelVersion(
            name=mv.get("name", name),
            version=int(mv["version"]),
            source=mv.get("source", ""),
            run_id=mv.get("run_id", ""),
            status=mv.get("status", "READY"),
            aliases=tuple(mv.get("aliases", ())),
        )

    async def download_uri(self, name: str, version: int) -> str:
        doc = await self._call(
            "GET", f"{API}/model-versions/get-download-uri", params={"name": name, "version": str(version)}
        )
        uri = doc.get("artifact_uri")
        if not uri:
            raise RegistryError(f"{name} version {version}: no artifact_uri")
        return uri

    async def resolve(self, uri: str) -> ArtifactLocation:
        """Turn a model version's download URI into a place behind the artifact proxy."""
        for _ in range(4):  # runs:/ and models:/ point at other URIs; a few hops at most
            parsed = urlparse(uri)
            if parsed.scheme == "runs":
                run_id, _, sub = (parsed.netloc + parsed.path).lstrip("/").partition("/")
                doc = await self._call("GET", f"{API}/runs/get", params={"run_id": run_id})
                root = doc.get("run", {}).get("info", {}).get("artifact_uri", "")
                uri = f"{root.rstrip('/')}/{sub}" if sub else root
            elif parsed.scheme == "models":
                ref = (parsed.netloc + parsed.path).lstrip("/")
                if ref.startswith("m-") and "/" not in ref:
                    doc = await self._call("GET", f"{API}/logged-models/{quote(ref)}")
                    uri = doc.get("model", {}).get("info", {}).get("artifact_uri", "")
                else:
                    name, _, version = ref.rpartition("/")
                    if not version.isdigit():
                        raise RegistryError(f"cannot resolve '{uri}': only models:/<name>/<version> and models:/m-<id>")
                    uri = await self.download_uri(name, int(version))
            elif parsed.scheme == "mlflow-artifacts":
                host = f"{urlparse(self.base_url).scheme}://{parsed.netloc}" if parsed.netloc else self.base_url
                return ArtifactLocation(host + ARTIFACTS_ROUTE, parsed.path.strip("/"))
            elif parsed.scheme in ("http", "https") and ARTIFACTS_ROUTE in parsed.path:
                before, _, after = uri.partition(ARTIFACTS_ROUTE)
                return ArtifactLocation(before + ARTIFACTS_ROUTE, after.strip("/"))
            else:
                raise RegistryError(
                    f"artifacts at '{uri}' are not served by the tracking server: run `mlflow server` with "
                    "proxied artifacts (--artifacts-destination, the default --serve-artifacts)"
                )
            if not uri:
                raise RegistryError("the registry gave an empty artifact location")
        raise RegistryError(f"artifact location '{uri}' does not resolve")

    # -- artifacts -------------------------------------------------------------------------

    async def list_files(self, where: ArtifactLocation) -> list[ArtifactFile]:
        """Every file under a folder, recursively, with paths relative to it."""
        out: list[ArtifactFile] = []
        pending = [""]
        while pending:
            rel = pending.pop()
            doc = await self._call("GET", where.route, params={"path": where.child(rel).path if rel else where.path})
            for f in doc.get("files", ()):
                name = posixpath.basename(f.get("path", ""))
                if not name or name in (".", ".."):
                    continue
                sub = posixpath.join(rel, name) if rel else name
                if f.get("is_dir"):
                    pending.append(sub)
                else:
                    out.append(ArtifactFile(sub, int(f.get("file_size") or 0)))
        return out

    async def download(self, where: ArtifactLocation, dest: str) -> int:
        """Stream one file to ``dest``; returns its size."""
        url = f"{where.route}/{quote(where.path)}"
        size = 0
        # A big model may take longer than one call's bound: bound the connect and each read instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        try:
            async with self._http().get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise RegistryError(f"GET {where.path}: HTTP {resp.status}",
                                        outage=resp.status >= 500 or resp.status == 429)
                with open(dest, "wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        fh.write(chunk)
                        size += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(self._redact(f"GET {where.path}: {type(exc).__name__}: {exc or 'timed out'}"),
                                outage=True) from None
        return size

    # -- reporting -------------------------------------------------------------------------

    async def experiment_id(self, name: str) -> str:
        try:
            doc = await self._call("GET", f"{API}/experiments/get-by-name", params={"experiment_name": name})
            return doc["experiment"]["experiment_id"]
        except RegistryAbsentError:
            pass
        try:
            doc = await self._call("POST", f"{API}/experiments/create", body={"name": name})
            return doc["experiment_id"]
        except RegistryAbsentError:  # created meanwhile by another replica
            doc = await self._call("GET", f"{API}/experiments/get-by-name", params={"experiment_name": name})
            return doc["experiment"]["experiment_id"]

    async def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str], start_ms: int) -> str:
        doc = await self._call("POST", f"{API}/runs/create", body={
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        })
        return doc["run"]["info"]["run_id"]

    async def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
        items = [{"key": k, "value": v, "timestamp": timestamp_ms, "step": step} for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's log-batch takes at most 1000 metrics
            await self._call("POST", f"{API}/runs/log-batch", body={"run_id": run_id, "metrics": items[i:i + 1000]})

    async def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        await self._call("POST", f"{API}/model-versions/set-tag",
                         body={"name": name, "version": str(version), "key": key, "value": value})


def safe_join(root: str, rel: str) -> str:
    """``root/rel``, refusing paths that would leave ``root`` (an artifact named ../x)."""
    dest = os.path.normpath(os.path.join(root, *rel.split("/")))
    if os.path.commonpath([dest, os.path.normpath(root)]) != os.path.normpath(root):
        raise RegistryError(f"artifact path '{rel}' leaves the version folder")
    return dest
