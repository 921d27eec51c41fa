"""One log line per event, with ``key=value`` fields (reactor, task, source, attempt, ...)."""

from __future__ import annotations

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


def configure(level: str) -> None:
    """Send runtime logs to stderr in the key=value format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured fields."""
    logger.log(level, message, extra={"fields": fields})
