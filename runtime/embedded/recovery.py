"""Start-up recovery: the catalog, indexes and change log rebuilt from a data folder.

The snapshot is loaded first, then every write-ahead log record after it is replayed without
maintaining indexes, which are built once at the end. A record (or log operation, or index) that
cannot be loaded is set aside in the quarantine folder with a warning
(:meth:`Persistence.setting_aside`): one bad record must not keep the rest offline.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import bson
from bson import ObjectId
from bson.binary import Binary
from bson.timestamp import Timestamp
from sortedcontainers import SortedList

from runtime.embedded.changelog import ChangeEntry, ChangeLog
from runtime.embedded.clock import ClusterClock
from runtime.embedded.indexes import Index, parse_index_spec
from runtime.embedded.names import check_collection
from runtime.embedded.ordering import (
    BOOLEAN,
    DATE,
    MISSING,
    NULL,
    NUMBER,
    OBJECT_ID,
    STRING,
    Key,
    Reverse,
    id_key,
    value_key,
)
from runtime.embedded.persistence import Persistence, record_label
from runtime.embedded.retryable import RetryRecords
from runtime.embedded.storage import ID_INDEX, Catalog, Collection
from runtime.embedded.wire import CODEC

log = logging.getLogger(__name__)

_NULL_KEY: Key = (NULL,)
_ENTRY_FIELDS = frozenset(f.name for f in dataclasses.fields(ChangeEntry)) - {"size"}


class Recovery:
    """Loads one data folder into a store's catalog, clock and change log."""

    def __init__(self, catalog: Catalog, clock: ClusterClock, changelog: ChangeLog,
                 retry_records: RetryRecords | None = None) -> None:
        self.catalog = catalog
        self.clock = clock
        self.changelog = changelog
        self.retry_records = retry_records if retry_records is not None else RetryRecords()

    def _apply_op(self, op: dict[str, Any]) -> None:
        """Re-apply one logged operation (recovery; no events, no checks).

        Documents are stored without touching indexes: :meth:`_load` rebuilds every index once
        the log has been replayed, which is much cheaper than maintaining them write by write.
        """
        kind = op["op"]
        db, name = op["db"], op.get("coll", "")
        coll = self.catalog.get(db, name) if name else None
        if kind == "put":
            if coll is None:
                coll = self.catalog.create(db, name)
            doc = op["doc"]
            coll.docs[id_key(doc["_id"])] = doc
        elif kind == "del" and coll is not None:
            coll.docs.pop(id_key(op["id"]), None)
        elif kind == "create" and coll is None:
            self.catalog.create(db, name, op.get("options"), _as_binary(op.get("uuid")))
        elif kind == "drop":
            self.catalog.drop(db, name)
        elif kind == "dropDatabase":
            self.catalog.databases.pop(db, None)
        elif kind == "rename" and coll is not None:
            check_collection(op["toDb"], op["toColl"])  # (old logs may hold a bad target)
            self.catalog.drop(db, name)
            coll.db, coll.name = op["toDb"], op["toColl"]
            self.catalog.databases.setdefault(coll.db, {})[coll.name] = coll
        elif kind == "createIndex" and coll is not None:
            # Registered empty; built with the others after the replay.
            docs, coll.docs = coll.docs, {}
            try:
                coll.add_index(parse_index_spec(op["spec"]))
            finally:
                coll.docs = docs
        elif kind == "dropIndex" and coll is not None:
            coll.indexes.pop(op["name"], None)
        elif kind == "collMod" and coll is not None:
            coll.options.update(op["options"])
        elif kind == "indexTTL" and coll is not None and op["name"] in coll.indexes:
            coll.indexes[op["name"]].spec.expire_after_seconds = op["expireAfterSeconds"]

    def run(self, persistence: Persistence) -> None:
        """Rebuild the catalog and change log from the snapshot and the log after it."""
        # Loading creates millions of long-lived objects and no garbage: the cycle collector
        # would only rescan them over and over.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._load(persistence)
        finally:
            # What was loaded lives as long as the server: exempt it from future collections.
            gc.freeze()
            if gc_was_enabled:
                gc.enable()

    def _load(self, persistence: Persistence) -> None:
        # Any record (or log operation, or index) that cannot be loaded is set aside into the
        # quarantine folder with a warning: one bad record must not keep the rest offline.
        set_aside = persistence.setting_aside
        entries: list[ChangeEntry] = []
        snapshot_time = Timestamp(0, 0)
        for record in persistence.snapshot_records():
            kind = record.get("kind")
            with set_aside(f"snapshot {record_label(record)}", record):
                if kind == "meta":
                    snapshot_time = record["clusterTime"]
                    self.clock.advance_to(snapshot_time)
                    self.changelog.last_seq = record["lastSeq"]
                    self.changelog.evicted_through = record.get("evictedThrough", 0)
                    self.changelog.evicted_time = record.get("evictedTime", Timestamp(0, 0))
                    self.changelog.last_time = snapshot_time
                elif kind == "collection":
                    coll = self.catalog.create(record["db"], record["coll"], record["options"],
                                               _as_binary(record["uuid"]))
                    for spec in record["indexes"]:
                        with set_aside(f"index of {coll.namespace} in the snapshot", spec):
                            if spec["name"] != ID_INDEX:
                                coll.add_index(parse_index_spec(spec))
                elif kind == "docs":
                    target = self.catalog.get(record["db"], record["coll"])
                    if target is None:
                        raise LookupError("its collection was not loaded")
                    docs = target.docs
                    for doc in record["docs"]:
                        docs[_fast_value_key(doc["_id"])] = doc  # == id_key(_id)
                elif kind == "retryable":
                    for retry in record["records"]:
                        self.retry_records.put(retry)
                elif kind == "changes":
                    sizes = record.get("sizes") or [0] * len(record["entries"])
                    entries.extend([_entry_from_log(e, s)
                                    for e, s in zip(record["entries"], sizes, strict=True)])
        replayed = 0
        for record in persistence.wal_records():
            with set_aside(f"log {record_label(record)}", record):
                ts = record["ts"]
                if (ts.time, ts.inc) <= (snapshot_time.time, snapshot_time.inc):
                    continue  # already in the snapshot (a checkpoint died before deleting it)
                replayed += 1
                self.clock.advance_to(ts)
                for op in record["ops"]:
                    with set_aside(f"log operation {record_label(op)} at {ts}",
                                   {"ts": ts, "op": op}):
                        self._apply_op(op)
                if "retry" in record:
                    self.retry_records.put(record["retry"])
                sizes = record.get("sizes") or [0] * len(record["events"])
                entries.extend([_entry_from_log(e, s)
                                for e, s in zip(record["events"], sizes, strict=True)])
        for coll in self.catalog.all_collections():
            _build_indexes(coll, persistence)
        self.retry_records.expire()
        self.changelog.append(entries, assign=False)
        if entries:
            self.changelog.last_time = entries[-1].cluster_time
        log.info("loaded %d collections and %d documents from %s, replayed %d log records",
                 sum(1 for _ in self.catalog.all_collections()),
                 sum(len(c.docs) for c in self.catalog.all_collections()),
                 persistence.dbpath, replayed)


def _as_binary(value: Any) -> Any:
    """A logged collection UUID (decoded as :class:`uuid.UUID`) as the catalog keeps it."""
    return Binary.from_uuid(value) if isinstance(value, uuid.UUID) else value


def _entry_from_log(doc: dict[str, Any], size: int) -> ChangeEntry:
    """A change-log entry from its logged form (its encoded size, when known, saves encoding)."""
    fields = {k: v for k, v in doc.items() if k in _ENTRY_FIELDS}
    # The logged form leaves out None values, including the required ``coll`` (dropDatabase).
    fields.setdefault("coll", None)
    entry = ChangeEntry(**fields)
    entry.size = size or len(bson.encode(doc, codec_options=CODEC))
    return entry


def _build_indexes(coll: Collection, persistence: Persistence | None = None) -> None:
    """Build every index of a collection loaded in bulk (sorting once beats inserting); with
    ``persistence``, an index that cannot be built is set aside (the collection is served
    without it)."""
    items = list(coll.docs.items())
    for name, index in list(coll.indexes.items()):
        if persistence is None:
            index.multikey = False
            index.entries = SortedList(_index_entries(index, items))
            continue
        with persistence.setting_aside(f"index {name} of {coll.namespace}",
                                       index.spec.to_document()) as guard:
            index.multikey = False
            index.entries = SortedList(_index_entries(index, items))
        if guard.failed and name != ID_INDEX:
            del coll.indexes[name]


def _index_entries(index: Index, items: list[tuple[Key, dict[str, Any]]]) -> Iterator[Key]:
    """The entries of ``index`` for ``items``: exactly what :meth:`Index.add` would insert.

    Plain indexes (top-level fields, ascending or descending, no partial filter, not sparse)
    take a shortcut for documents whose indexed values are not arrays; everything else goes
    through :meth:`Index.keys_for`.
    """
    spec = index.spec
    plain = (spec.partial_filter is None and not spec.sparse and index.collation is None and all(
        "." not in path and isinstance(direction, int | float) and not isinstance(direction, bool)
        for path, direction in spec.key))
    if not plain:
        for key, doc in items:
            for components in index.keys_for(doc):
                yield components + (key,)
        return
    fields = spec.fields
    descending = [d < 0 for d in spec.directions]
    if fields == ["_id"] and not descending[0]:
        # The document's key *is* the value key of its _id (never an array).
        for key, doc in items:
            if isinstance(doc.get("_id"), list):
                for components in index.keys_for(doc):
                    yield components + (key,)
            else:
                yield (key, key)
        return
    if len(fields) == 1:
        path, down = fields[0], descending[0]
        for key, doc in items:
            value = doc.get(path, MISSING)
            if isinstance(value, list):
                for components in index.keys_for(doc):
                    yield components + (key,)
                continue
            part = _NULL_KEY if value is MISSING else _fast_value_key(value)
            yield (Reverse(part) if down else part, key)
        return
    pairs = list(zip(fields, descending, strict=True))
    for key, doc in items:
        parts: list[Any] = []
        for path, down in pairs:
            value = doc.get(path, MISSING)
            if isinstance(value, list):
                break
            part = _NULL_KEY if value is MISSING else _fast_value_key(value)
            parts.append(Reverse(part) if down else part)
        else:
            parts.append(key)
            yield tuple(parts)
            continue
        for components in index.keys_for(doc):  # an array: one entry per element
            yield components + (key,)


def _fast_value_key(value: Any) -> Key:
    """:func:`value_key` (and so :func:`id_key`), with common scalar types checked first."""
    kind = type(value)
    if kind is str:
        return (STRING, value)
    if kind is int:
        return (NUMBER, 1, value)
    if kind is datetime.datetime and value.tzinfo is None:
        return (DATE, value)
    if kind is ObjectId:
        return (OBJECT_ID, value.binary)
    if kind is float and value == value:  # not NaN
        return (NUMBER, 1, value)
    if value is None:
        return _NULL_KEY
    if kind is bool:
        return (BOOLEAN, value)
    return value_key(value)



