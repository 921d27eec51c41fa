"""Duration strings (``500ms``, ``10s``, ``5m``, ``1h``, ``7d``, ``1h30m``) as milliseconds."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> int:
    """Milliseconds in ``text``; raises ValueError for anything else."""
    position = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}; use e.g. 500ms, 10s, 5m, 1h, 7d or 1h30m")
    return round(total)
