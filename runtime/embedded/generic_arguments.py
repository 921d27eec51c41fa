"""The generic fields every command may carry, checked before the command runs.

mongod parses ``maxTimeMS`` and the session fields (``lsid``, ``txnNumber``, ``autocommit``,
``startTransaction``) of every command with the same generated parsers, whatever the command.
These checks run for every command the server receives, so each one first asks whether the
field is there at all: a command without them (most of them) pays a few dictionary look-ups.
"""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands import arguments
from runtime.embedded.errors import CommandError, ErrorCode

_SESSION_FLAGS = ("autocommit", "startTransaction")


def check_generic_arguments(name: str, body: dict[str, Any]) -> None:
    """Type checks of the fields every command may carry (mongod parses them before the
    command runs): ``maxTimeMS``, the session fields."""
    if "maxTimeMS" in body:
        arguments.max_time_ms(name, body)
    lsid = body.get("lsid")
    if lsid is not None and not isinstance(lsid, dict):
        raise arguments.wrong_type("OperationSessionInfo.lsid", lsid, ("object",))
    if "autocommit" in body or "startTransaction" in body:
        for flag in _SESSION_FLAGS:
            value = body.get(flag)
            if value is not None and not isinstance(value, bool):
                raise arguments.wrong_type(f"OperationSessionInfo.{flag}", value, ("bool",))


def txn_number(body: dict[str, Any]) -> int | None:
    """The command's ``txnNumber`` (validated), or None."""
    value = body.get("txnNumber")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise arguments.wrong_type("OperationSessionInfo.txnNumber", value, ("long",))
    if value < 0:
        raise CommandError(ErrorCode.BadValue, f"txnNumber ({value}) must be non-negative")
    return value


def has_time_limit(body: dict[str, Any]) -> bool:
    """Whether the command sets a (positive) ``maxTimeMS``."""
    limit = body.get("maxTimeMS")
    return isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
