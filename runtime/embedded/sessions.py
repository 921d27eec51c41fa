"""Logical sessions: retryable-write records and the state of each session's transaction.

Under ``runtime db --auth`` a session is the pair of its ``lsid.id`` and the user who uses
it, as on mongod (which adds the user's digest to every ``lsid``): another user sending the
same ``lsid`` gets a session of its own, and never sees or ends the first user's retryable
writes and transactions.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bson.binary import Binary

from runtime.embedded.access import TRANSIENT, Transaction
from runtime.embedded.auth import current_caller
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.retryable import RetryRecords, make_record

SESSION_TIMEOUT_MINUTES = 30
NO_TXN_NUMBER = -1


@dataclass
class Session:
    """Server-side state of one ``lsid``.

    ``last_txn_number`` is the highest ``txnNumber`` seen on the session, whether a retryable
    write or a transaction used it (``-1``: none yet). Only the reply of that latest retryable
    write is kept, as on MongoDB: a retry of an older ``txnNumber`` is ``TransactionTooOld``.
    """

    lsid: dict[str, Any]
    last_txn_number: int = NO_TXN_NUMBER
    retry_reply: dict[str, Any] | None = None  # reply of the retryable write last_txn_number
    transaction: Transaction | None = None
    txn_state: str = "none"  # none | in_progress | committed | aborted
    last_used: float = field(default_factory=time.monotonic)
    user: tuple[str, str] | None = None  # the owner under --auth (part of the session's key)

    def retry_record(self, reply: dict[str, Any] | None) -> dict[str, Any]:
        """The durable record of this session's latest retryable write (its ``reply``) or, with
        None, of its committed transaction (see :mod:`runtime.embedded.retryable`)."""
        return make_record(self.lsid, self.user, self.last_txn_number, reply)

    def restore(self, record: dict[str, Any]) -> None:
        """Start from a record written before a restart."""
        self.last_txn_number = int(record["txnNumber"])
        if record.get("committed"):
            self.txn_state = "committed"
        else:
            reply = record.get("reply")
            self.retry_reply = dict(reply) if isinstance(reply, dict) else None


def _session_key(lsid: dict[str, Any]) -> bytes:
    value = lsid["id"]
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, Binary) and value.subtype in (3, 4) and len(value) == 16:
        return bytes(value)
    raise CommandError(ErrorCode.TypeMismatch,
                       "BSON field 'lsid.id' is the wrong type, expected a UUID "
                       "(binData subtype 4)")


def session_id(lsid: Any) -> bytes | None:
    """``lsid.id`` as 16 bytes; None without a (well-formed) ``lsid``."""
    if not isinstance(lsid, dict) or "id" not in lsid:
        return None
    try:
        return _session_key(lsid)
    except CommandError:
        return None


def _registry_key(lsid: dict[str, Any]) -> tuple[bytes, tuple[str, str] | None]:
    caller = current_caller()
    return _session_key(lsid), caller.user if caller is not None else None


def validate_lsid(lsid: Any) -> None:
    """Reject an ``lsid`` that is not ``{id: UUID}`` (as MongoDB does, with a TypeMismatch)."""
    _checked_session_key(lsid)


def _checked_session_key(lsid: Any) -> bytes:
    """``lsid.id`` as 16 bytes, after :func:`validate_lsid`'s checks (one pass for both)."""
    if not isinstance(lsid, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field 'lsid' is the wrong type, expected type 'object'")
    if "id" not in lsid:
        raise CommandError(ErrorCode.Location40414,
                           "BSON field 'lsid.id' is missing but a required field")
    return _session_key(lsid)


class SessionRegistry:
    """All sessions by ``lsid.id`` and user (the user only under ``--auth``)."""

    def __init__(self, records: RetryRecords | None = None) -> None:
        self.sessions: dict[tuple[bytes, tuple[str, str] | None], Session] = {}
        #: Durable retryable-write records: a session unknown here starts from its record.
        self.records = records if records is not None else RetryRecords()

    def get(self, lsid: Any) -> Session | None:
        """The session of a command's ``lsid`` (created on first use); None without one.

        An ``lsid`` of the wrong shape is an error (call :func:`validate_lsid` first).
        """
        if lsid is None:
            return None
        caller = current_caller()
        key = (_checked_session_key(lsid), caller.user if caller is not None else None)
        session = self.sessions.get(key)
        if session is None:
            session = Session(lsid=lsid, user=key[1])
            record = self.records.get(key)
            if record is not None:
                session.restore(record)
            self.sessions[key] = session
        session.last_used = time.monotonic()
        return session

    def end(self, lsid: Any) -> Session | None:
        """Forget the caller's session (``endSessions``); returns it so its transaction can be
        aborted."""
        if not isinstance(lsid, dict) or "id" not in lsid:
            return None
        try:
            key = _registry_key(lsid)
        except CommandError:
            return None
        return self.sessions.pop(key, None)

    def expired(self) -> list[Session]:
        """Sessions idle longer than the logical session timeout (removed from the registry)."""
        limit = time.monotonic() - SESSION_TIMEOUT_MINUTES * 60
        gone = [k for k, s in self.sessions.items() if s.last_used < limit]
        self.records.expire()
        return [self.sessions.pop(k) for k in gone]


def no_such_transaction(txn_number: int) -> CommandError:
    """Error 251 with the label that makes drivers retry the whole transaction."""
    return CommandError(ErrorCode.NoSuchTransaction,
                        f"Transaction with txnNumber {txn_number} has been aborted or "
                        "does not exist.", labels=[TRANSIENT])
