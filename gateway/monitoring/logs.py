"""Log set-up: text or JSON lines, each carrying the request id (and trace id) of the request being served."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from pythonjsonlogger.json import JsonFormatter

from gateway.core import context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestContextFilter(logging.Filter):
    """Copies the serving task's request id and trace id onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.request_id.get()
        record.trace_id = context.trace_id.get()
        return True


class _RoleFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class _TextWithRequest(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{line} [request_id={rid}]" if rid else line


class _Json(JsonFormatter):
    def process_log_record(self, log_data):
        # Empty request/trace ids are dropped so that start-up lines stay short.
        for key in ("request_id", "trace_id", "role"):
            if not log_data.get(key):
                log_data.pop(key, None)
        return log_data


def json_formatter() -> logging.Formatter:
    return _Json(
        ["asctime", "levelname", "name", "message", "request_id", "trace_id", "role"],
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(level: str, fmt: str, module_levels: dict[str, str], role: str = "") -> None:
    """Root handler on stderr; ``module_levels`` override ``level`` per logger name (and its children).

    ``role`` names the process under ``--workers N`` ("worker 0", "supervisor"): a
    prefix in text lines, a ``role`` field in JSON lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    if fmt == "json":
        formatter = json_formatter()
        if role:
            handler.addFilter(_RoleFilter(role))
    else:
        formatter = _TextWithRequest(TEXT_FORMAT.replace("%(name)s", f"[{role}] %(name)s") if role else TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in WIRE_LOGGERS:
        if name not in module_levels:
            logging.getLogger(name).setLevel(max(logging.getLevelName(level.upper()), logging.INFO))
    for name, lvl in module_levels.items():
        logging.getLogger(name).setLevel(lvl.upper())
    for name in RATE_LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        for stale in [f for f in logger.filters if isinstance(f, RateLimitFilter)]:
            logger.removeFilter(stale)
        logger.addFilter(RateLimitFilter())



# Protocol libraries whose debug lines print every header they decode, credentials included
# ('authorization' metadata): kept at info unless named in log_levels.
WIRE_LOGGERS = ("hpack", "h2")

# Loggers of events a peer can cause at will (malformed requests, wrong tokens): each record is
# one line, and configure_logging rate-limits them so that a flood of bad input cannot flood the log.
RATE_LIMITED_LOGGERS = ("gateway.http.bad_request", "gateway.auth.refused", "gateway.grpc.closed")


class RateLimitFilter(logging.Filter):
    """Passes at most ``limit`` records per ``window_s``; the rest are counted and reported in one
    "suppressed" line when the window ends (a timer on the running loop, else with the next record).

    Attached to a logger, it sees only records logged on that logger itself.
    """

    def __init__(self, limit: int = 10, window_s: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._window_start = -window_s
        self._count = 0
        self._suppressed = 0
        self._logger: logging.Logger | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rate_limit_summary", False):
            return True
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._end_window()
            self._window_start = now
        if self._count < self.limit:
            self._count += 1
            return True
        if not self._suppressed:
            self._logger = logging.getLogger(record.name)
            self._schedule_flush(self._window_start + self.window_s - now)
        self._suppressed += 1
        return False

    def _end_window(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._suppressed and self._logger is not None:
            self._logger.warning("suppressed %d more such lines in the last %.0f s", self._suppressed, self.window_s,
                                 extra={"rate_limit_summary": True})
        self._count = 0
        self._suppressed = 0

    def _schedule_flush(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here: the next record reports the count
            return
        self._flush_handle = loop.call_later(max(delay, 0.0), self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._end_window()
        self._window_start = self._clock()
