"""One log line per event, with ``key=value`` fields (reactor, task, source, attempt, ...)."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

FIELDS = ("event", "reactor", "task_id", "source_id", "attempt", "outcome", "duration_ms",
          "instance")


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the known fields first."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = getattr(record, "fields", None)
        if not isinstance(extras, dict) or not extras:
            return base
        ordered = [k for k in FIELDS if k in extras] + sorted(k for k in extras
                                                              if k not in FIELDS)
        return base + " " + " ".join(f"{k}={_render(extras[k])}" for k in ordered)


def _render(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or "=" in text or not text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and the fields
    (values that JSON cannot hold are written as text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        extras = getattr(record, "fields", None)
        if isinstance(extras, dict):
            for key, value in extras.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Send runtime logs to stderr, as ``key=value`` text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured fields."""
    logger.log(level, message, extra={"fields": fields})
