"""Retryable-write records that outlive the process (mongod's ``config.transactions``).

mongod records, for each session, the latest ``txnNumber`` and the outcome of its retryable
write in ``config.transactions``, in the same storage transaction as the write itself, so a
retry after a restart or failover (same ``lsid`` and ``txnNumber``) gets the original outcome
instead of writing twice. Here the record is a document logged in the same write-ahead record
as the write (:attr:`WriteUnit.retry`): a crash keeps both or neither. It holds the ``lsid``,
the user owning the session (under ``--auth``), the ``txnNumber``, the reply of the write (what
a retry answers; the whole command is the unit, so no per-statement ids are needed) or, for a
committed transaction, ``committed: true``, and the wall-clock time it was written.

A record is logged only with a write that changed something: a retryable write that wrote
nothing (every statement refused, nothing matched) leaves the log as it was, and its retry after
a restart runs again (it wrote nothing the first time).

Checkpoints copy the live records into the snapshot; start-up loads them back and a session
created afterwards for the same ``lsid`` starts from its record. Like mongod, which removes a
session's record when the session expires, records older than the logical session timeout
(30 minutes) are dropped: when sessions are reaped, at checkpoints and at load.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from bson.binary import Binary

SESSION_TIMEOUT_MINUTES = 30

#: A session's identity: ``lsid.id`` as 16 bytes, and the user owning it (``--auth``).
SessionKey = tuple[bytes, tuple[str, str] | None]


def lsid_bytes(lsid: dict[str, Any]) -> bytes | None:
    """``lsid.id`` as 16 bytes (None if it is not a UUID)."""
    value = lsid.get("id")
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, Binary) and value.subtype in (3, 4) and len(value) == 16:
        return bytes(value)
    return None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def make_record(lsid: dict[str, Any], user: tuple[str, str] | None, txn_number: int,
                reply: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a retryable write (``reply``) or of a committed transaction (None)."""
    record: dict[str, Any] = {"lsid": lsid, "user": list(user) if user else None,
                              "txnNumber": txn_number, "at": _utcnow()}
    if reply is None:
        record["committed"] = True
    else:
        record["reply"] = {k: v for k, v in reply.items()
                           if k not in ("operationTime", "$clusterTime")}
    return record


def record_key(record: dict[str, Any]) -> SessionKey | None:
    """The session a record belongs to (None for a malformed one)."""
    lsid = record.get("lsid")
    key = lsid_bytes(lsid) if isinstance(lsid, dict) else None
    user = record.get("user")
    if key is None:
        return None
    return key, (str(user[0]), str(user[1])) if isinstance(user, list) and len(user) == 2 \
        else None


class RetryRecords:
    """The latest record of every session, by :data:`SessionKey`."""

    def __init__(self) -> None:
        self.records: dict[SessionKey, dict[str, Any]] = {}

    def put(self, record: dict[str, Any]) -> None:
        """Keep ``record`` as its session's latest (an older ``txnNumber`` never wins)."""
        key = record_key(record)
        if key is None:
            return
        known = self.records.get(key)
        if known is None or known["txnNumber"] <= record["txnNumber"]:
            self.records[key] = record

    def get(self, key: SessionKey) -> dict[str, Any] | None:
        """The live record of a session, if any."""
        record = self.records.get(key)
        if record is not None and record["at"] < self._limit():
            del self.records[key]
            return None
        return record

    @staticmethod
    def _limit() -> datetime.datetime:
        return _utcnow() - datetime.timedelta(minutes=SESSION_TIMEOUT_MINUTES)

    def expire(self) -> None:
        """Drop records older than the logical session timeout."""
        limit = self._limit()
        for key in [k for k, r in self.records.items() if r["at"] < limit]:
            del self.records[key]

    def snapshot(self) -> list[dict[str, Any]]:
        """The live records, for a checkpoint."""
        self.expire()
        return list(self.records.values())
