"""A gateway daemon inside the test process: ``gateway.daemon.started`` on a uvloop event loop of
its own, in a background thread.

It costs no interpreter start, no imports and no model-library load per daemon (a subprocess
takes 2.5-3 s to say "ready"), and it has the subprocess ``Gateway``'s interface: ports, HTTP
helpers, the log as text lines, ``terminate()`` returning 0 on a clean stop.

What stays process-wide, and so is NOT done here (tests that depend on it start a subprocess):
``configure_logging`` (it replaces the root handlers), ``settings.apply_to_interpreter()``
(switch interval, gc thresholds), ``gc.freeze()``, signal handlers, OpenTelemetry's global
providers, ``--workers``, and environment variables given to the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import io
import json
import logging
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

import uvloop

from gateway.cli import _add_setting_flags, _settings
from gateway.core.settings import ServerSettings
from gateway.monitoring.logs import (
    RATE_LIMITED_LOGGERS,
    TEXT_FORMAT,
    WIRE_LOGGERS,
    RateLimitFilter,
    RequestContextFilter,
    _TextWithRequest,
    json_formatter,
)

# Flags whose effect is process-wide, so a daemon given one runs as a subprocess: the interpreter
# (switch interval, gc), OpenTelemetry's global providers, several processes, the stderr format, and
# --log-level, the root level of every library's logger (the secret-redaction tests read what any
# library writes at debug; in-process capture follows the "gateway" loggers and --log-levels only).
PROCESS_FLAGS = frozenset({
    "--workers", "--gil-switch-interval-us", "--gc-threshold", "--tracing", "--trace-sample-ratio",
    "--log-format", "--log-level",
})

BASE_FLAGS = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0")


def base_args(repository: Path) -> list[str]:
    """The flags every test daemon starts with, whichever way it runs."""
    return [*BASE_FLAGS, "--model-repository", str(repository), "--repository-poll-s", "0.2", "--grace-period-s", "10"]


def needs_process(extra: tuple[str, ...], env: dict[str, str] | None) -> bool:
    return bool(env) or any(flag.split("=", 1)[0] in PROCESS_FLAGS for flag in extra)


class GatewayClient:
    """What a test does with a daemon, however it runs: its log lines and HTTP requests.

    Subclasses set ``repository``, ``grpc_url``, ``http_url``, ``lines`` and ``_changed`` (a
    Condition notified on each new line) and say when the daemon has ended (``_ended``)."""

    repository: Path
    grpc_url: str
    http_url: str
    lines: list[str]
    _changed: threading.Condition

    def _ended(self) -> bool:
        raise NotImplementedError

    def _exit_status(self):
        raise NotImplementedError

    def wait_for_log(self, pattern: re.Pattern, timeout: float, start: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = start
            while True:
                for line in self.lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._ended():
                    raise AssertionError(
                        f"gateway log never matched {pattern.pattern!r}; exit={self._exit_status()}; log:\n"
                        + "".join(self.lines[-60:])
                    )
                self._changed.wait(min(left, 0.5))

    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one HTTP request."""
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def http_json(self, method: str, path: str, doc=None):
        body = None if doc is None else json.dumps(doc).encode()
        status, _, raw = self.http(method, path, body, {"Content-Type": "application/json"} if body else None)
        return status, (json.loads(raw) if raw else None)

    def wait_until(self, predicate, timeout: float = 30, what: str = "condition"):
        """Poll a predicate (repository changes are seen at the next scan)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n" + "".join(self.lines[-40:]))
            time.sleep(0.05)


def settings_from_flags(args: list[str]) -> ServerSettings:
    """ServerSettings exactly as ``gateway serve ARGS`` builds them (flags > environment > file)."""
    parser = argparse.ArgumentParser(prog="gateway serve", exit_on_error=False)
    _add_setting_flags(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            settings = _settings(parser.parse_args(args))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise AssertionError(f"gateway serve {' '.join(args)}: {exc} {err.getvalue()}") from None
    if settings is None:
        raise AssertionError(f"gateway serve {' '.join(args)}: {err.getvalue().strip()}")
    return settings


# The in-process daemon whose event loop (and the threads asyncio.to_thread started from it) is running.
_current: contextvars.ContextVar[InProcessGateway | None] = contextvars.ContextVar("inprocess_gateway", default=None)


class _LoggingState:
    """Logger levels and rate-limit filters the live in-process daemons need, as ``configure_logging``
    would set them in a daemon process; the test process's own settings come back when the last stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: dict[InProcessGateway, dict[str, int]] = {}
        self._saved: dict[str, int] = {}
        self._filters: list[tuple[logging.Logger, RateLimitFilter]] = []

    def add(self, gw: InProcessGateway, levels: dict[str, int]) -> None:
        with self._lock:
            if not self._wanted:
                for name in RATE_LIMITED_LOGGERS:
                    logger, f = logging.getLogger(name), RateLimitFilter()
                    logger.addFilter(f)
                    self._filters.append((logger, f))
            self._wanted[gw] = levels
            self._apply()

    def remove(self, gw: InProcessGateway) -> None:
        with self._lock:
            if self._wanted.pop(gw, None) is None:
                return
            self._apply()
            if not self._wanted:
                for logger, f in self._filters:
                    logger.removeFilter(f)
                self._filters.clear()

    def _apply(self) -> None:
        wanted: dict[str, int] = {}
        for levels in self._wanted.values():
            for name, level in levels.items():
                wanted[name] = min(level, wanted.get(name, level))
        for name in set(self._saved) | set(wanted):
            logger = logging.getLogger(name)
            if name in wanted:
                self._saved.setdefault(name, logger.level)
                logger.setLevel(wanted[name])
            else:
                logger.setLevel(self._saved.pop(name))


_logging_state = _LoggingState()

# Started and not yet terminated: what stop_leftovers finds at the end of the session.
_live: weakref.WeakSet[InProcessGateway] = weakref.WeakSet()


def stop_leftovers() -> list[str]:
    """Terminate every in-process daemon a test left running; their names (a fixture leaked them)."""
    names = []
    for gw in list(_live):
        names.append(f"{gw.repository} ({gw._thread.name})")
        gw.terminate(timeout=10)
    return names


class _CaptureHandler(logging.Handler):
    """One daemon's log lines, formatted as its process would write them to stderr.

    Records logged in the daemon's context (its loop and what asyncio.to_thread runs) are its own;
    a "gateway" record from another thread (a runner pool, the drift worker: threads that do not
    inherit the context) goes to every live in-process daemon, as one test rarely runs two."""

    def __init__(self, gw: InProcessGateway, settings: ServerSettings) -> None:
        super().__init__()
        self.gw = gw
        self.level_of = _level_rule(settings)
        self.addFilter(RequestContextFilter())
        self.setFormatter(json_formatter() if settings.log_format == "json" else _TextWithRequest(TEXT_FORMAT))
        self._test_thread = threading.get_ident()

    def filter(self, record: logging.LogRecord):
        owner = _current.get()
        if owner is None:
            if record.thread == self._test_thread or not record.name.startswith("gateway"):
                return False
        elif owner is not self.gw:
            return False
        if record.levelno < self.level_of(record.name):
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - as logging.Handler.handleError would, but into the lines
            line = f"(unformattable record {record.name} {record.msg!r})"
        self.gw._append(line)


def _level_rule(settings: ServerSettings):
    """The least level a daemon with these settings logs per logger name (configure_logging's rules)."""
    root = logging.getLevelName(settings.log_level.upper())
    levels = {name: max(root, logging.INFO) for name in WIRE_LOGGERS}
    levels.update({name: logging.getLevelName(lvl.upper()) for name, lvl in settings.module_levels.items()})

    def level_of(name: str) -> int:
        while name:
            if name in levels:
                return levels[name]
            name = name.rpartition(".")[0]
        return root

    return level_of


def _logger_levels(settings: ServerSettings) -> dict[str, int]:
    """Logger levels that let this daemon's records be created at all in the test process."""
    wanted = {"gateway": logging.getLevelName(settings.log_level.upper())}
    wanted.update({name: logging.getLevelName(lvl.upper()) for name, lvl in settings.module_levels.items()})
    return wanted


class _ThreadProcess:
    """``gw.proc`` for tests that ask whether the daemon still runs (``poll() is None``). It has no
    pid: a test that measures the daemon's process needs the subprocess."""

    def __init__(self, gw: InProcessGateway) -> None:
        self._gw = gw

    def poll(self) -> int | None:
        return None if self._gw._thread.is_alive() else self._gw.returncode


class InProcessGateway(GatewayClient):
    """A gateway daemon on its own uvloop event loop in a thread of the test process."""

    process = False

    def __init__(self, repository: Path, *extra: str, start_timeout: float = 60) -> None:
        self.repository = repository
        self.settings = settings_from_flags([*base_args(repository), *extra])
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.returncode: int | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._handler = _CaptureHandler(self, self.settings)
        self._detached = False
        _logging_state.add(self, _logger_levels(self.settings))
        logging.getLogger().addHandler(self._handler)
        self._thread = threading.Thread(target=self._run, name=f"gateway-inprocess-{id(self):x}", daemon=True)
        self.proc = _ThreadProcess(self)
        _live.add(self)
        self._thread.start()
        if not self._ready.wait(start_timeout) or self.error is not None or not self._thread.is_alive():
            error = self.error
            self.terminate(timeout=10)
            raise AssertionError(
                f"in-process gateway did not become ready in {start_timeout}s: {error!r}; log:\n" + "".join(self.lines[-60:])
            ) from error
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"127.0.0.1:{self.http_port}"

    def _append(self, text: str) -> None:
        """One record; a traceback becomes several lines, as on the subprocess's stderr."""
        with self._changed:
            self.lines.extend(part + "\n" for part in text.splitlines())
            self._changed.notify_all()

    def _run(self) -> None:
        _current.set(self)  # the loop's tasks (and asyncio.to_thread) copy this context
        try:
            uvloop.run(self._main())
            self.returncode = 0
        except asyncio.CancelledError:  # terminate() gave up waiting for the drain
            self.returncode = -int(signal.SIGKILL)
        except BaseException as exc:  # noqa: BLE001 - reported by the constructor or terminate()
            self.error = exc
            self.returncode = 1
            logging.getLogger("gateway").error("in-process daemon failed: %r", exc, exc_info=exc)
        finally:
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    async def _main(self) -> None:
        from gateway import native  # imported here: conftest imports this module, unit tests need no daemon
        from gateway.daemon import raise_open_file_limit, started

        self._stop = asyncio.Event()
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        native.log_choice()
        raise_open_file_limit()  # soft up to hard, as the daemon process does: idle-connection tests need it
        async with started(self.settings) as running:
            self.service = running.service
            self.grpc_port, self.http_port = running.grpc_port, running.http_port
            self._ready.set()
            if not self._stopping:
                await self._stop.wait()

    def _ended(self) -> bool:
        return not self._thread.is_alive()

    def _exit_status(self):
        return self.returncode

    def _request_stop(self) -> None:
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)

    def terminate(self, timeout: float = 30) -> int:
        """Stop serving, drain, stop everything; 0 on a clean stop (the subprocess's exit code)."""
        if self._thread.is_alive():
            self._request_stop()
            self._thread.join(timeout)
            if self._thread.is_alive() and self._loop is not None and self._task is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._task.cancel)
                self._thread.join(10)
            if self._thread.is_alive():
                raise AssertionError("in-process gateway did not stop; log:\n" + "".join(self.lines[-40:]))
        _live.discard(self)
        if not self._detached:
            self._detached = True
            logging.getLogger().removeHandler(self._handler)
            _logging_state.remove(self)
        return self.returncode
