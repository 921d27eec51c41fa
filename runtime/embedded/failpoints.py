"""Fault injection for tests (``configureFailPoint``), available only with --enable-test-commands.

Fail points, in modes ``alwaysOn``, ``{times: n}``, ``{skip: n}`` and ``off``:

``failCommand``
    Fails the commands named in ``failCommands`` (optionally only for clients whose handshake
    named ``appName``) before they run: ``errorCode`` (with exactly ``errorLabels`` when given,
    otherwise the labels MongoDB would add), ``closeConnection`` (no reply), ``blockConnection``
    with ``blockTimeMS`` (delay first), or ``writeConcernError`` (the command runs, and the reply
    carries that write concern error).
``failGetMoreAfterCursorCheckout``
    Fails every ``getMore`` with ``errorCode`` (labelled resumable on change streams).
``onPrimaryTransactionalWrite``
    For retryable writes (``txnNumber`` outside a transaction):
    ``failBeforeCommitExceptionCode`` fails the write before it is applied; otherwise the write
    is applied and recorded, and then the connection is closed without a reply
    (``closeConnection``, default true), so the driver's retry must find the recorded result.
``maxTimeAlwaysTimeOut``
    Every command that carries a time limit (``maxTimeMS`` > 0) fails with MaxTimeMSExpired
    (50) "operation exceeded time limit", as if its time ran out; drivers' suites use it to test
    their handling of server-side timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.embedded.errors import RESUMABLE_CHANGE_STREAM_CODES, CommandError, ErrorCode

SUPPORTED = ("failCommand", "failGetMoreAfterCursorCheckout", "onPrimaryTransactionalWrite",
             "maxTimeAlwaysTimeOut")


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
    # errorLabels given explicitly: the reply carries exactly these (no computed labels).
    explicit_labels: list[str] | None = None
    write_concern_error: dict[str, Any] | None = None
    # onPrimaryTransactionalWrite: close the connection after the write was applied.
    close_after_write: bool = False


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise CommandError(ErrorCode.BadValue,
                           f"{what} must be a non-negative number, got {value!r}")
    return int(value)


class FailPoints:
    """The active fail points."""

    def __init__(self) -> None:
        self.points: dict[str, FailPoint] = {}

    def configure(self, body: dict[str, Any]) -> int:
        """Apply a ``configureFailPoint`` command (an invalid one changes nothing).

        Returns 1 if the fail point was active before, else 0 (MongoDB's ``count``).
        """
        name = body.get("configureFailPoint")
        if name not in SUPPORTED:
            raise CommandError(ErrorCode.BadValue,
                               f"unknown fail point {name!r}; supported: {', '.join(SUPPORTED)}")
        mode = body.get("mode")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise CommandError(ErrorCode.TypeMismatch,
                               "configureFailPoint 'data' must be an object")
        if name == "failCommand" and mode != "off":
            commands = data.get("failCommands")
            if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
                raise CommandError(ErrorCode.BadValue,
                                   "failCommand needs 'failCommands', an array of command "
                                   "names")
        labels = data.get("errorLabels")
        if labels is not None and (not isinstance(labels, list)
                                   or not all(isinstance(x, str) for x in labels)):
            raise CommandError(ErrorCode.TypeMismatch, "'errorLabels' must be an array of strings")
        for key in ("errorCode", "blockTimeMS", "failBeforeCommitExceptionCode"):
            if key in data:
                _int(data[key], f"data.{key}")
        point: FailPoint | None
        if mode == "off":
            point = None
        elif mode == "alwaysOn":
            point = FailPoint(name, None, 0, data)
        elif isinstance(mode, dict) and "times" in mode:
            point = FailPoint(name, _int(mode["times"], "mode.times"), 0, data)
        elif isinstance(mode, dict) and "skip" in mode:
            point = FailPoint(name, None, _int(mode["skip"], "mode.skip"), data)
        else:
            raise CommandError(ErrorCode.FailedToParse,
                               f"invalid fail point mode {mode!r}; use 'alwaysOn', 'off', "
                               "{times: n} or {skip: n}")
        old = self.points.pop(name, None)
        if point is not None:
            self.points[name] = point
        return 0 if old is None else 1

    def check(self, command: str, app_name: str | None,
              is_change_stream_get_more: bool, time_limited: bool = False) -> Injected | None:
        """The failure to inject into this command, if a fail point applies.

        ``time_limited``: the command carries ``maxTimeMS`` (for ``maxTimeAlwaysTimeOut``).
        """
        point = self.points.get("maxTimeAlwaysTimeOut")
        if point is not None and time_limited and point.fire():
            return Injected(error=CommandError(ErrorCode.MaxTimeMSExpired,
                                               "operation exceeded time limit"))
        point = self.points.get("failCommand")
        if point is not None and command in point.data.get("failCommands", []):
            wanted_app = point.data.get("appName")
            if (wanted_app is None or wanted_app == app_name) and point.fire():
                return self._injected(point)
        point = self.points.get("failGetMoreAfterCursorCheckout")
        if point is not None and command == "getMore" and point.fire():
            injected = self._injected(point)
            injected.explicit_labels = None
            if injected.error is not None and is_change_stream_get_more and (
                injected.error.code in RESUMABLE_CHANGE_STREAM_CODES
            ):
                injected.explicit_labels = ["ResumableChangeStreamError"]
            return injected
        return None

    def check_retryable_write(self) -> Injected | None:
        """``onPrimaryTransactionalWrite`` for a retryable write, if it fires."""
        point = self.points.get("onPrimaryTransactionalWrite")
        if point is None or not point.fire():
            return None
        data = point.data
        code = data.get("failBeforeCommitExceptionCode")
        if code is not None:
            return Injected(error=CommandError(int(code), "Failing write via "
                                               "'onPrimaryTransactionalWrite' failpoint"))
        return Injected(close_after_write=bool(data.get("closeConnection", True)))

    @staticmethod
    def _injected(point: FailPoint) -> Injected:
        data = point.data
        result = Injected(close_connection=bool(data.get("closeConnection")))
        if data.get("blockConnection"):
            result.block_ms = float(data.get("blockTimeMS", 0))
        if "errorLabels" in data:
            result.explicit_labels = list(data["errorLabels"])
        if "errorCode" in data:
            result.error = CommandError(int(data["errorCode"]), "Failing command via "
                                        f"'{point.name}' failpoint")
        wce = data.get("writeConcernError")
        if isinstance(wce, dict):
            result.write_concern_error = dict(wce)
            result.error = None
        return result
