"""Logical sessions: retryable-write records and the state of each session's transaction."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from runtime.embedded.access import TRANSIENT, Transaction
from runtime.embedded.errors import CommandError

SESSION_TIMEOUT_MINUTES = 30


@dataclass
class Session:
    """Server-side state of one ``lsid``."""

    lsid: dict[str, Any]
    last_txn_number: int = 0
    retry_replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    transaction: Transaction | None = None
    txn_state: str = "none"  # none | in_progress | committed | aborted
    last_used: float = field(default_factory=time.monotonic)


def _session_key(lsid: dict[str, Any]) -> bytes:
    value = lsid["id"]
    if isinstance(value, uuid.UUID):
        return value.bytes
    return bytes(value)


class SessionRegistry:
    """All sessions by ``lsid.id``."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, Session] = {}

    def get(self, lsid: Any) -> Session | None:
        """The session of a command's ``lsid`` (created on first use)."""
        if not isinstance(lsid, dict) or "id" not in lsid:
            return None
        key = _session_key(lsid)
        session = self.sessions.get(key)
        if session is None:
            session = Session(lsid=lsid)
            self.sessions[key] = session
        session.last_used = time.monotonic()
        return session

    def end(self, lsid: Any) -> Session | None:
        """Forget a session (``endSessions``); returns it so its transaction can be aborted."""
        if not isinstance(lsid, dict) or "id" not in lsid:
            return None
        return self.sessions.pop(_session_key(lsid), None)

    def expired(self) -> list[Session]:
        """Sessions idle longer than the logical session timeout (removed from the registry)."""
        limit = time.monotonic() - SESSION_TIMEOUT_MINUTES * 60
        gone = [k for k, s in self.sessions.items() if s.last_used < limit]
        return [self.sessions.pop(k) for k in gone]


def no_such_transaction(txn_number: int) -> CommandError:
    """Error 251 with the label that makes drivers retry the whole transaction."""
    return CommandError(251, f"Transaction with txnNumber {txn_number} has been aborted or "
                        "does not exist.", labels=[TRANSIENT])
