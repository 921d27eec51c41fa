"""The write path: every mutation of the catalog, recorded as a unit that is logged and published.

A :class:`WriteUnit` collects the storage operations and change-log entries of one command (or of
one committed transaction). :meth:`DataStore.commit` stamps them with cluster times, appends the
record to the write-ahead log (when persistent) and only then publishes the entries to change
streams, so streams never show a change that a crash could lose.

Cluster times follow mongod's oplog: each document written by a command (each insert of a batch,
each document of a multi-update or multi-delete) and each catalog change gets its own cluster
time, in order, and the command's reply carries the last one; a committed transaction is one
oplog entry (``applyOps``), so all its changes share one cluster time (told apart by their
``txnOpIndex``). The unit's record also carries the retryable-write record of the command
(:mod:`runtime.embedded.retryable`), so a crash keeps both or neither.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from runtime.embedded.changelog import ChangeEntry, ChangeLog, estimated_size
from runtime.embedded.clock import ClusterClock
from runtime.embedded.document_rules import Write, check_storable
from runtime.embedded.indexes import IndexSpec
from runtime.embedded.names import check_new_collection
from runtime.embedded.ordering import (
    id_key,
)
from runtime.embedded.persistence import Persistence
from runtime.embedded.recovery import Recovery
from runtime.embedded.retryable import RetryRecords
from runtime.embedded.storage import ID_INDEX, Catalog, Collection
from runtime.embedded.versions import Version, VersionHistory
from runtime.embedded.wire import CODEC

log = logging.getLogger(__name__)

INTERNAL_DATABASES = frozenset({"admin", "local", "config"})
SNAPSHOT_DOCS_PER_RECORD = 5000


@dataclass
class WriteUnit:
    """The operations and change entries of one command or one transaction."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    entries: list[ChangeEntry] = field(default_factory=list)
    lsid: dict[str, Any] | None = None
    txn_number: Any = None
    #: Each change in order, for stamping: (its change entry or None, and for a document write
    #: [collection uuid, _id key, previous version]); see :meth:`DataStore.commit`.
    steps: list[tuple[ChangeEntry | None, list[Any] | None]] = field(default_factory=list)
    #: The retryable-write (or committed-transaction) record logged with this unit.
    retry: dict[str, Any] | None = None
    #: How to take back each in-memory change, in the order they were made: a unit whose log
    #: record cannot be written is undone, so memory never holds what the log does not.
    undo: list[Callable[[], object]] = field(default_factory=list)

    def rollback(self) -> None:
        """Undo every in-memory change of this unit, newest first, and forget them."""
        for step in reversed(self.undo):
            step()
        self.undo.clear()
        self.ops.clear()
        self.entries.clear()
        self.steps.clear()
        self.retry = None

    def add(self, entry: ChangeEntry | None, version: list[Any] | None = None) -> None:
        """Record one change: its change entry (published unless None) and, for a document
        write, ``[collection uuid, _id key, previous version]``."""
        if entry is not None:
            self.entries.append(entry)
        self.steps.append((entry, version))


#: The cluster time of an entry until :meth:`DataStore.commit` stamps it (a Timestamp is
#: immutable, so one object serves every entry).
_UNSTAMPED = Timestamp(0, 0)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class DataStore:
    """Catalog + change log + clock + optional persistence, mutated only through write units."""

    def __init__(self, oplog_bytes: int, persistence: Persistence | None) -> None:
        self.catalog = Catalog()
        self.changelog = ChangeLog(oplog_bytes)
        self.clock = ClusterClock()
        self.persistence = persistence
        # Documents written by open transactions: (db, collection, _id key) -> transaction.
        self.transaction_locks: dict[tuple[str, str, Any], Any] = {}
        self._checkpoint_result: tuple[int, list[Path]] | None = None
        #: Retryable-write records by session (``config.transactions``), durable with writes.
        self.retry_records = RetryRecords()
        if persistence is not None:
            Recovery(self.catalog, self.clock, self.changelog, self.retry_records).run(persistence)
        self.history = VersionHistory(self.clock.latest())

    # -- commit -------------------------------------------------------------------------------

    def commit(self, unit: WriteUnit) -> Timestamp:
        """Make a unit durable and visible to change streams; returns its cluster time."""
        if not unit.ops and not unit.entries and unit.retry is None:
            return self.clock.now()
        last_seq = self.changelog.last_seq
        try:
            return self._commit(unit)
        except BaseException:
            # Nothing reached the log: take the changes back so memory matches it.
            self.changelog.last_seq = last_seq
            unit.rollback()
            raise

    def _commit(self, unit: WriteUnit) -> Timestamp:
        versions: list[Version] = []
        transaction = unit.lsid is not None
        follow = self.clock.follow
        ts = self.clock.tick()
        for number, (entry, version) in enumerate(unit.steps):
            if number and not transaction:
                ts = follow()  # outside a transaction, every change is its own oplog entry
            if entry is not None:
                entry.cluster_time = ts
            if version is not None:
                versions.append(((ts.time, ts.inc), version[0], version[1], version[2]))
        for index, entry in enumerate(unit.entries):
            entry.txn_index = index if transaction else 0
            if transaction:
                entry.lsid = unit.lsid
                entry.txn_number = unit.txn_number
            self.changelog.last_seq += 1
            entry.seq = self.changelog.last_seq
        if self.persistence is not None:
            # Each event is encoded once: its size is what the change log accounts for.
            events = []
            for entry in unit.entries:
                raw = bson.encode(entry.to_document(), codec_options=CODEC)
                entry.size = len(raw)
                events.append(RawBSONDocument(raw))
            record = {"ts": ts, "ops": unit.ops, "events": events,
                      "sizes": [e.size for e in unit.entries]}
            if unit.retry is not None:
                record["retry"] = unit.retry
            self.persistence.append(record)
        unit.undo.clear()
        if unit.retry is not None:
            self.retry_records.put(unit.retry)
        if versions:
            self.history.record(versions)
        self.changelog.append(unit.entries, assign=False)
        return ts

    def _entry(self, op: str, coll: Collection | None, db: str, images: bool | None = None,
               **fields: Any) -> ChangeEntry:
        return ChangeEntry(
            op=op,
            db=db,
            coll=coll.name if coll is not None else fields.pop("coll", None),
            cluster_time=_UNSTAMPED,
            wall_time=_utcnow(),
            collection_uuid=coll.uuid if coll is not None else None,
            images_enabled=images if images is not None else (
                coll.images_enabled if coll is not None else False),
            **fields,
        )

    @staticmethod
    def _publishes(db: str, name: str) -> bool:
        return db not in INTERNAL_DATABASES and not name.startswith("system.")

    # -- documents ----------------------------------------------------------------------------

    def insert(self, unit: WriteUnit, coll: Collection, doc: dict[str, Any]) -> None:
        """Insert a document (uniqueness is checked here)."""
        size = check_storable(doc, Write.INSERT)
        key = id_key(doc["_id"])
        coll.put(doc, None, coll.check_unique(doc, key, replacing=False))
        unit.undo.append(lambda: coll.remove(doc))
        unit.ops.append({"op": "put", "db": coll.db, "coll": coll.name, "doc": doc})
        entry = None
        if self._publishes(coll.db, coll.name):
            entry = self._entry("insert", coll, coll.db, document_key={"_id": doc["_id"]},
                                post_image=doc)
            self._size(entry, size)
        unit.add(entry, [coll.uuid, key, None])

    def replace(self, unit: WriteUnit, coll: Collection, old: dict[str, Any],
                new: dict[str, Any], is_replacement: bool) -> None:
        """Store ``new`` in place of ``old`` (an update, or a whole-document replacement)."""
        size = check_storable(new, Write.UPDATE)
        key = id_key(old["_id"])
        coll.put(new, old, coll.check_unique(new, key, replacing=True, previous=old))
        unit.undo.append(lambda: coll.put(old, new))
        unit.ops.append({"op": "put", "db": coll.db, "coll": coll.name, "doc": new})
        version = [coll.uuid, key, old]
        if not self._publishes(coll.db, coll.name):
            unit.add(None, version)
            return
        images = coll.images_enabled
        entry = self._entry("replace" if is_replacement else "update", coll, coll.db,
                            images=images, document_key={"_id": new["_id"]},
                            post_image=new, pre_image=old if images else None,
                            before=None if is_replacement else old)
        self._size(entry, size)
        unit.add(entry, version)

    def _size(self, entry: ChangeEntry, post_image_size: int) -> None:
        """Account a document write's entry in the change log's units, from the post-image
        size its storage check measured: the log would otherwise encode the post-image again
        (with the write-ahead log, :meth:`_commit` measures the whole encoded entry instead)."""
        if self.persistence is None:
            entry.size = estimated_size(entry, post_image_size)

    def delete(self, unit: WriteUnit, coll: Collection, doc: dict[str, Any]) -> None:
        """Remove a document."""
        coll.remove(doc)
        unit.undo.append(lambda: coll.put(doc, None))
        unit.ops.append({"op": "del", "db": coll.db, "coll": coll.name, "id": doc["_id"]})
        unit.add(self._entry("delete", coll, coll.db, document_key={"_id": doc["_id"]},
                             pre_image=doc if coll.images_enabled else None)
                 if self._publishes(coll.db, coll.name) else None,
                 [coll.uuid, id_key(doc["_id"]), doc])

    # -- catalog ------------------------------------------------------------------------------

    def ensure_collection(self, unit: WriteUnit, db: str, name: str) -> Collection:
        """The collection, created implicitly (as inserts and upserts do) when missing."""
        coll = self.catalog.get(db, name)
        return coll if coll is not None else self.create_collection(unit, db, name, {})

    def create_collection(self, unit: WriteUnit, db: str, name: str,
                          options: dict[str, Any]) -> Collection:
        """Create a collection (the name checked as a client may create it)."""
        check_new_collection(db, name)
        coll = self.catalog.create(db, name, options)
        unit.undo.append(lambda: self.catalog.drop(db, name))
        unit.ops.append({"op": "create", "db": db, "coll": name, "options": options,
                         "uuid": coll.uuid})
        if self._publishes(db, name):
            unit.add(self._entry("create", coll, db, operation_description={
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": ID_INDEX}}))
        return coll

    def drop_collection(self, unit: WriteUnit, coll: Collection) -> None:
        """Drop a collection (a ``drop`` event; collection streams then invalidate)."""
        db, name = coll.db, coll.name
        self.catalog.drop(db, name)
        unit.undo.append(lambda: self._restore(coll, db, name))
        unit.ops.append({"op": "drop", "db": db, "coll": name})
        if self._publishes(db, name):
            unit.add(self._entry("drop", coll, db))

    def drop_database(self, unit: WriteUnit, db: str) -> None:
        """Drop every collection of a database, then the database."""
        for coll in self.catalog.collections(db):
            self.drop_collection(unit, coll)
        unit.ops.append({"op": "dropDatabase", "db": db})
        if db not in INTERNAL_DATABASES:
            unit.add(self._entry("dropDatabase", None, db))

    def rename_collection(self, unit: WriteUnit, coll: Collection, to_db: str,
                          to_name: str) -> None:
        """Rename a collection (within or across databases)."""
        self.catalog.drop(coll.db, coll.name)
        old_db, old_name = coll.db, coll.name
        coll.db, coll.name = to_db, to_name
        self.catalog.databases.setdefault(to_db, {})[to_name] = coll

        def undo_rename() -> None:
            self.catalog.drop(to_db, to_name)
            self._restore(coll, old_db, old_name)

        unit.undo.append(undo_rename)
        unit.ops.append({"op": "rename", "db": old_db, "coll": old_name, "toDb": to_db,
                         "toColl": to_name})
        if self._publishes(old_db, old_name):
            description: dict[str, Any] = {"to": {"db": to_db, "coll": to_name}}
            last = unit.entries[-1] if unit.entries else None
            if last is not None and last.op == "drop" and (last.db, last.coll) == (to_db,
                                                                                  to_name):
                # ``dropTarget``: like MongoDB, one rename event names the dropped target.
                unit.entries.pop()
                description["dropTarget"] = last.collection_uuid
            entry = self._entry("rename", coll, old_db, to={"db": to_db, "coll": to_name},
                                operation_description=description)
            entry.coll = old_name
            unit.add(entry)

    def create_index(self, unit: WriteUnit, coll: Collection, spec: IndexSpec) -> None:
        """Build and register an index."""
        coll.add_index(spec)
        unit.undo.append(lambda: coll.indexes.pop(spec.name, None))
        unit.ops.append({"op": "createIndex", "db": coll.db, "coll": coll.name,
                         "spec": spec.to_document()})
        if self._publishes(coll.db, coll.name):
            unit.add(self._entry("createIndexes", coll, coll.db,
                                            operation_description={
                                                "indexes": [spec.to_document()]}))

    def drop_index(self, unit: WriteUnit, coll: Collection, name: str) -> None:
        """Remove an index."""
        index = coll.indexes.pop(name)
        unit.undo.append(lambda: coll.indexes.__setitem__(name, index))
        unit.ops.append({"op": "dropIndex", "db": coll.db, "coll": coll.name, "name": name})
        if self._publishes(coll.db, coll.name):
            unit.add(self._entry("dropIndexes", coll, coll.db,
                                            operation_description={
                                                "indexes": [index.spec.to_document()]}))

    def set_index_ttl(self, unit: WriteUnit, coll: Collection, name: str,
                      expire_after_seconds: float) -> None:
        """``collMod`` of an index: change its ``expireAfterSeconds`` (logged, so durable)."""
        spec = coll.indexes[name].spec
        previous = spec.expire_after_seconds
        spec.expire_after_seconds = float(expire_after_seconds)
        unit.undo.append(lambda: setattr(spec, "expire_after_seconds", previous))
        unit.ops.append({"op": "indexTTL", "db": coll.db, "coll": coll.name, "name": name,
                         "expireAfterSeconds": float(expire_after_seconds)})

    def modify_collection(self, unit: WriteUnit, coll: Collection, changes: dict[str, Any],
                          described: dict[str, Any] | None = None) -> None:
        """``collMod``: change collection options (``described``: other collMod fields, such
        as an index change, that the event reports)."""
        old = {"uuid": coll.uuid, **coll.options}
        before = dict(coll.options)
        coll.options.update(changes)
        unit.undo.append(lambda: setattr(coll, "options", before))
        if changes:
            unit.ops.append({"op": "collMod", "db": coll.db, "coll": coll.name,
                             "options": changes})
        if self._publishes(coll.db, coll.name):
            # As MongoDB: the collMod fields, and the options before it as stateBeforeChange.
            entry = self._entry("modify", coll, coll.db,
                                operation_description={**changes, **(described or {})},
                                state_before_change={"collectionOptions": old})
            unit.add(entry)

    def _restore(self, coll: Collection, db: str, name: str) -> None:
        """Put a dropped or renamed collection back under its old name (undo)."""
        coll.db, coll.name = db, name
        self.catalog.databases.setdefault(db, {})[name] = coll

    # -- checkpoints --------------------------------------------------------------------------

    def begin_checkpoint(self) -> Callable[[], None] | None:
        """Start a checkpoint: capture the state and switch the log to a new segment.

        Cheap, and must run on the thread that commits (nothing may commit in between).
        Returns the job that writes the snapshot and then deletes the log segments it covers;
        the job only reads the captured, immutable state, so it may run in another thread
        while commits go on, but :meth:`finish_checkpoint` must then run on the committing
        thread. ``None`` without persistence.
        """
        persistence = self.persistence
        if persistence is None:
            return None
        meta = {"kind": "meta", "format": 2, "clusterTime": self.clock.now(),
                "lastSeq": self.changelog.last_seq,
                "evictedThrough": self.changelog.evicted_through,
                "evictedTime": self.changelog.evicted_time}
        collections = [
            ({"kind": "collection", "db": coll.db, "coll": coll.name,
              "options": dict(coll.options), "uuid": coll.uuid,
              "indexes": [i.spec.to_document() for i in coll.indexes.values()]},
             list(coll.docs.values()))
            for coll in self.catalog.all_collections()
        ]
        changes = list(self.changelog.entries)
        retry_records = self.retry_records.snapshot()
        obsolete = persistence.rotate()

        def records() -> Iterator[dict[str, Any]]:
            yield meta
            for header, docs in collections:
                yield header
                for start in range(0, len(docs), SNAPSHOT_DOCS_PER_RECORD):
                    yield {"kind": "docs", "db": header["db"], "coll": header["coll"],
                           "docs": docs[start : start + SNAPSHOT_DOCS_PER_RECORD]}
            for start in range(0, len(changes), SNAPSHOT_DOCS_PER_RECORD):
                chunk = changes[start : start + SNAPSHOT_DOCS_PER_RECORD]
                yield {"kind": "changes", "entries": [e.to_document() for e in chunk],
                       "sizes": [e.size for e in chunk]}
            for start in range(0, len(retry_records), SNAPSHOT_DOCS_PER_RECORD):
                yield {"kind": "retryable",
                       "records": retry_records[start : start + SNAPSHOT_DOCS_PER_RECORD]}

        def job() -> None:
            self._checkpoint_result = (persistence.write_snapshot(records()), obsolete)

        return job

    def finish_checkpoint(self) -> None:
        """After the job of :meth:`begin_checkpoint` ran: drop the log segments it covers."""
        result, self._checkpoint_result = self._checkpoint_result, None
        if result is not None and self.persistence is not None:
            self.persistence.finish_checkpoint(*result)

    def checkpoint(self) -> None:
        """Write a snapshot and empty the log now (clean shutdown)."""
        job = self.begin_checkpoint()
        if job is not None:
            job()
            self.finish_checkpoint()
