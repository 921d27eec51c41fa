"""``readConcern``: which commands read a snapshot, and at what cluster time.

MongoDB 7.0 (manual, "Read Concern "snapshot""): level ``snapshot`` is allowed in a transaction
and, outside one, on ``find``, ``aggregate`` and ``distinct`` only ("All other read commands
prohibit "snapshot"", ``InvalidOptions``). ``atClusterTime`` needs level ``snapshot``
(``InvalidOptions``), must be a Timestamp (``TypeMismatch``), must not be later than the latest
cluster time (``InvalidOptions``) and no older than the kept history (``SnapshotTooOld``, see
:mod:`runtime.embedded.versions`). Without it the read time is the latest cluster time. A
snapshot cursor reports its read time as ``cursor.atClusterTime`` (``distinct``: a top-level
``atClusterTime``).
"""

from __future__ import annotations

from typing import Any

from bson.timestamp import Timestamp

from runtime.embedded.datastore import DataStore
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.versions import SnapshotView

SNAPSHOT_COMMANDS = frozenset({"find", "aggregate", "distinct"})


def read_time(name: str, body: dict[str, Any], latest: Timestamp,
              in_transaction: bool) -> Timestamp | None:
    """The cluster time a snapshot read reads at; None when the command asks for no snapshot.

    ``latest`` is the latest cluster time handed out (what a read without ``atClusterTime``
    sees)."""
    concern = body.get("readConcern")
    if not isinstance(concern, dict):
        return None
    level = concern.get("level")
    at = concern.get("atClusterTime")
    if at is not None:
        if not isinstance(at, Timestamp):
            raise CommandError(ErrorCode.TypeMismatch,
                               "BSON field 'readConcern.atClusterTime' is the wrong type "
                               f"'{type(at).__name__}', expected type 'timestamp'")
        if level != "snapshot":
            raise CommandError(ErrorCode.InvalidOptions,
                               "readConcern atClusterTime is only valid with level snapshot")
        if (at.time, at.inc) > (latest.time, latest.inc):
            raise CommandError(ErrorCode.InvalidOptions,
                               f"readConcern atClusterTime value {at} must not be greater than "
                               f"the current clusterTime {latest}")
    if level != "snapshot":
        return None
    if not in_transaction and name not in SNAPSHOT_COMMANDS:
        raise CommandError(ErrorCode.InvalidOptions,
                           f"Command {name} does not support readConcern level snapshot "
                           "outside a multi-document transaction")
    return at if at is not None else latest


def snapshot_view(store: DataStore, name: str, body: dict[str, Any],
                  in_transaction: bool) -> SnapshotView | None:
    """The snapshot a command reads: always one in a transaction (mongod reads a transaction's
    statements from one snapshot whatever the level), otherwise only for level snapshot."""
    if not in_transaction and "readConcern" not in body:
        return None  # (the common case, kept cheap)
    at = read_time(name, body, store.clock.now(), in_transaction)
    if at is None:
        return store.history.view(store.clock.now()) if in_transaction else None
    concern = body["readConcern"]
    return store.history.view(at, requested=concern.get("atClusterTime") is not None)


def add_read_time(reply: dict[str, Any], at: Timestamp) -> None:
    """Report a snapshot read's time: in its cursor (``cursor.atClusterTime``, find and
    aggregate), else at the top level (distinct)."""
    if not reply.get("ok"):
        return
    cursor = reply.get("cursor")
    if isinstance(cursor, dict):
        cursor["atClusterTime"] = at
    else:
        reply["atClusterTime"] = at
