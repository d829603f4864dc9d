"""Log set-up: text or JSON lines, each carrying the request id (and trace id) of the request being served."""

from __future__ import annotations

import logging
import sys

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
    for name, lvl in module_levels.items():
        logging.getLogger(name).setLevel(lvl.upper())
