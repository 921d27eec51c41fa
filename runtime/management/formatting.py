"""Rendering values for people and for JSON lines: dates, durations, ids, tables."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId, json_util
from bson.json_util import RELAXED_JSON_OPTIONS


def iso(value: datetime.datetime | None) -> str:
    """A date as ISO-8601 UTC (``2024-05-17T10:42:13.250Z``); ``-`` for none."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def duration(seconds: float) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``, ``3 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def relative(value: datetime.datetime | None, now: datetime.datetime) -> str:
    """``in 3.0 s`` / ``3.0 s ago`` relative to ``now``; ``-`` for none."""
    if value is None:
        return "-"
    delta = (value - now).total_seconds()
    return f"in {duration(delta)}" if delta > 0 else f"{duration(delta)} ago"


def jsonable(value: Any) -> Any:
    """A JSON-compatible form: dates ISO-8601, ObjectIds as strings, enums by value,
    dataclasses as objects; other BSON types in relaxed Extended JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime.datetime):
        return iso(value)
    if isinstance(value, ObjectId):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return json.loads(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


def json_line(value: Any) -> str:
    """One JSON object on one line (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), ensure_ascii=False, sort_keys=False)


def compact(value: Any, width: int = 0) -> str:
    """A value in one line of JSON (ids and dates as in :func:`jsonable`), cut to ``width``
    characters if given."""
    text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
    text = " ".join(text.split())
    if width and len(text) > width:
        return text[:max(1, width - 1)] + "…"
    return text


def display_id(value: Any, width: int = 0) -> str:
    """An id for tables: an ObjectId as its hex, a string as itself unless it would read as
    JSON (``"42"`` is shown quoted, unlike the number 42), anything else as compact JSON."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        try:
            json_util.loads(value)
        except ValueError:
            return compact(value, width)
        return compact(json.dumps(value, ensure_ascii=False), width)
    return compact(value, width)


def source_id_argument(value: Any) -> str:
    """How to write a source id on the ``runtime`` command line (shell-quoted): plain text for
    a string that is not JSON, else its (Extended) JSON."""
    if isinstance(value, str):
        try:
            json_util.loads(value)
        except ValueError:
            return shlex.quote(value)
    return shlex.quote(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns under a header line (the last column is not padded)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
