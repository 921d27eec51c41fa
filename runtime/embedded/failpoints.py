"""Fault injection for tests (``configureFailPoint``), available only with --enable-test-commands.

Supports the ``failCommand`` fail point (``failCommands``, ``errorCode``, ``closeConnection``,
``errorLabels``, ``blockConnection``/``blockTimeMS``, ``appName``) and
``failGetMoreAfterCursorCheckout``, in modes ``alwaysOn``, ``{times: n}``, ``{skip: n}`` and
``off``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.embedded.errors import RESUMABLE_CHANGE_STREAM_CODES, CommandError

SUPPORTED = ("failCommand", "failGetMoreAfterCursorCheckout")


@dataclass
class FailPoint:
    """One configured fail point."""

    name: str
    times: int | None  # None = always on
    skip: int
    data: dict[str, Any] = field(default_factory=dict)

    def fire(self) -> bool:
        """Whether this activation fails (consuming one of ``times``)."""
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class Injected:
    """What an activated fail point asks the dispatcher to do."""

    close_connection: bool = False
    error: CommandError | None = None
    block_ms: float = 0


class FailPoints:
    """The active fail points."""

    def __init__(self) -> None:
        self.points: dict[str, FailPoint] = {}

    def configure(self, body: dict[str, Any]) -> None:
        """Apply a ``configureFailPoint`` command."""
        name = body.get("configureFailPoint")
        if name not in SUPPORTED:
            raise CommandError(2, f"unknown fail point {name!r}; supported: {', '.join(SUPPORTED)}")
        mode = body.get("mode")
        data = body.get("data") or {}
        if mode == "off":
            self.points.pop(name, None)
            return
        if mode == "alwaysOn":
            self.points[name] = FailPoint(name, None, 0, data)
        elif isinstance(mode, dict) and "times" in mode:
            self.points[name] = FailPoint(name, int(mode["times"]), 0, data)
        elif isinstance(mode, dict) and "skip" in mode:
            self.points[name] = FailPoint(name, None, int(mode["skip"]), data)
        else:
            raise CommandError(9, f"invalid fail point mode {mode!r}")

    def check(self, command: str, app_name: str | None, is_change_stream_get_more: bool) -> Injected | None:
        """The failure to inject into this command, if a fail point applies."""
        point = self.points.get("failCommand")
        if point is not None and command in point.data.get("failCommands", []):
            wanted_app = point.data.get("appName")
            if (wanted_app is None or wanted_app == app_name) and point.fire():
                return self._injected(point, labels_from_data=True)
        point = self.points.get("failGetMoreAfterCursorCheckout")
        if point is not None and command == "getMore" and point.fire():
            injected = self._injected(point, labels_from_data=False)
            if injected.error is not None and is_change_stream_get_more and (
                injected.error.code in RESUMABLE_CHANGE_STREAM_CODES
            ):
                injected.error.labels.append("ResumableChangeStreamError")
            return injected
        return None

    @staticmethod
    def _injected(point: FailPoint, labels_from_data: bool) -> Injected:
        data = point.data
        result = Injected(close_connection=bool(data.get("closeConnection")))
        if data.get("blockConnection"):
            result.block_ms = float(data.get("blockTimeMS", 0))
        if "errorCode" in data:
            labels = list(data.get("errorLabels", [])) if labels_from_data else []
            result.error = CommandError(int(data["errorCode"]), "Failing command via "
                                        f"'{point.name}' failpoint", labels=labels)
        if "writeConcernError" in data:
            result.error = None
        return result
