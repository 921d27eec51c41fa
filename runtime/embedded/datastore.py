"""The write path: every mutation of the catalog, recorded as a unit that is logged and published.

A :class:`WriteUnit` collects the storage operations and change-log entries of one command (or of
one committed transaction). :meth:`DataStore.commit` stamps them with one cluster time, appends the
record to the write-ahead log (when persistent) and only then publishes the entries to change
streams, so streams never show a change that a crash could lose.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp

from runtime.embedded.changelog import ChangeEntry, ChangeLog
from runtime.embedded.clock import ClusterClock
from runtime.embedded.errors import CommandError
from runtime.embedded.indexes import IndexSpec, parse_index_spec
from runtime.embedded.ordering import id_key
from runtime.embedded.persistence import Persistence
from runtime.embedded.storage import ID_INDEX, Catalog, Collection
from runtime.embedded.update_description import describe_update

INTERNAL_DATABASES = frozenset({"admin", "local", "config"})
SNAPSHOT_DOCS_PER_RECORD = 5000


@dataclass
class WriteUnit:
    """The operations and change entries of one command or one transaction."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    entries: list[ChangeEntry] = field(default_factory=list)
    lsid: dict[str, Any] | None = None
    txn_number: Any = None


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
        if persistence is not None:
            self._recover(persistence)
            persistence.write_snapshot(self._snapshot_records())

    # -- commit -------------------------------------------------------------------------------

    def commit(self, unit: WriteUnit) -> Timestamp:
        """Make a unit durable and visible to change streams; returns its cluster time."""
        if not unit.ops and not unit.entries:
            return self.clock.now()
        ts = self.clock.tick()
        for index, entry in enumerate(unit.entries):
            entry.cluster_time = ts
            entry.txn_index = index
            if unit.lsid is not None:
                entry.lsid = unit.lsid
                entry.txn_number = unit.txn_number
            self.changelog.last_seq += 1
            entry.seq = self.changelog.last_seq
        if self.persistence is not None:
            self.persistence.append(
                {"ts": ts, "ops": unit.ops, "events": [e.to_document() for e in unit.entries]}
            )
        self.changelog.append(unit.entries, assign=False)
        return ts

    def _entry(self, op: str, coll: Collection | None, db: str, **fields: Any) -> ChangeEntry:
        return ChangeEntry(
            op=op,
            db=db,
            coll=coll.name if coll is not None else fields.pop("coll", None),
            cluster_time=Timestamp(0, 0),
            wall_time=_utcnow(),
            collection_uuid=coll.uuid if coll is not None else None,
            images_enabled=coll.images_enabled if coll is not None else False,
            **fields,
        )

    @staticmethod
    def _publishes(db: str, name: str) -> bool:
        return db not in INTERNAL_DATABASES and not name.startswith("system.")

    # -- documents ----------------------------------------------------------------------------

    def insert(self, unit: WriteUnit, coll: Collection, doc: dict[str, Any]) -> None:
        """Insert a document (uniqueness is checked here)."""
        key = id_key(doc["_id"])
        coll.check_unique(doc, key, replacing=False)
        coll.put(doc, None)
        unit.ops.append({"op": "put", "db": coll.db, "coll": coll.name, "doc": doc})
        if self._publishes(coll.db, coll.name):
            unit.entries.append(self._entry("insert", coll, coll.db,
                                            document_key={"_id": doc["_id"]}, post_image=doc))

    def replace(self, unit: WriteUnit, coll: Collection, old: dict[str, Any],
                new: dict[str, Any], is_replacement: bool) -> None:
        """Store ``new`` in place of ``old`` (an update, or a whole-document replacement)."""
        key = id_key(old["_id"])
        coll.check_unique(new, key, replacing=True)
        coll.put(new, old)
        unit.ops.append({"op": "put", "db": coll.db, "coll": coll.name, "doc": new})
        if self._publishes(coll.db, coll.name):
            if is_replacement:
                entry = self._entry("replace", coll, coll.db, document_key={"_id": new["_id"]},
                                    post_image=new, pre_image=old)
            else:
                entry = self._entry("update", coll, coll.db, document_key={"_id": new["_id"]},
                                    post_image=new, pre_image=old,
                                    update_description=describe_update(old, new))
            if not coll.images_enabled:
                entry.pre_image = None
            unit.entries.append(entry)

    def delete(self, unit: WriteUnit, coll: Collection, doc: dict[str, Any]) -> None:
        """Remove a document."""
        coll.remove(doc)
        unit.ops.append({"op": "del", "db": coll.db, "coll": coll.name, "id": doc["_id"]})
        if self._publishes(coll.db, coll.name):
            unit.entries.append(self._entry(
                "delete", coll, coll.db, document_key={"_id": doc["_id"]},
                pre_image=doc if coll.images_enabled else None))

    # -- catalog ------------------------------------------------------------------------------

    def ensure_collection(self, unit: WriteUnit, db: str, name: str) -> Collection:
        """The collection, created implicitly (as inserts and upserts do) when missing."""
        coll = self.catalog.get(db, name)
        return coll if coll is not None else self.create_collection(unit, db, name, {})

    def create_collection(self, unit: WriteUnit, db: str, name: str,
                          options: dict[str, Any]) -> Collection:
        """Create a collection."""
        coll = self.catalog.create(db, name, options)
        unit.ops.append({"op": "create", "db": db, "coll": name, "options": options,
                         "uuid": coll.uuid})
        if self._publishes(db, name):
            unit.entries.append(self._entry("create", coll, db, operation_description={
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": ID_INDEX}}))
        return coll

    def drop_collection(self, unit: WriteUnit, coll: Collection) -> None:
        """Drop a collection (a ``drop`` event; collection streams then invalidate)."""
        self.catalog.drop(coll.db, coll.name)
        unit.ops.append({"op": "drop", "db": coll.db, "coll": coll.name})
        if self._publishes(coll.db, coll.name):
            unit.entries.append(self._entry("drop", coll, coll.db))

    def drop_database(self, unit: WriteUnit, db: str) -> None:
        """Drop every collection of a database, then the database."""
        for coll in self.catalog.collections(db):
            self.drop_collection(unit, coll)
        unit.ops.append({"op": "dropDatabase", "db": db})
        if db not in INTERNAL_DATABASES:
            unit.entries.append(self._entry("dropDatabase", None, db))

    def rename_collection(self, unit: WriteUnit, coll: Collection, to_db: str,
                          to_name: str) -> None:
        """Rename a collection (within or across databases)."""
        self.catalog.drop(coll.db, coll.name)
        old_db, old_name = coll.db, coll.name
        coll.db, coll.name = to_db, to_name
        self.catalog.databases.setdefault(to_db, {})[to_name] = coll
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
            unit.entries.append(entry)

    def create_index(self, unit: WriteUnit, coll: Collection, spec: IndexSpec) -> None:
        """Build and register an index."""
        coll.add_index(spec)
        unit.ops.append({"op": "createIndex", "db": coll.db, "coll": coll.name,
                         "spec": spec.to_document()})
        if self._publishes(coll.db, coll.name):
            unit.entries.append(self._entry("createIndexes", coll, coll.db,
                                            operation_description={
                                                "indexes": [spec.to_document()]}))

    def drop_index(self, unit: WriteUnit, coll: Collection, name: str) -> None:
        """Remove an index."""
        index = coll.indexes.pop(name)
        unit.ops.append({"op": "dropIndex", "db": coll.db, "coll": coll.name, "name": name})
        if self._publishes(coll.db, coll.name):
            unit.entries.append(self._entry("dropIndexes", coll, coll.db,
                                            operation_description={
                                                "indexes": [index.spec.to_document()]}))

    def modify_collection(self, unit: WriteUnit, coll: Collection,
                          changes: dict[str, Any]) -> None:
        """``collMod``: change collection options."""
        old = {"uuid": coll.uuid, **coll.options}
        coll.options.update(changes)
        unit.ops.append({"op": "collMod", "db": coll.db, "coll": coll.name, "options": changes})
        if self._publishes(coll.db, coll.name):
            # As MongoDB: the collMod fields, and the options before it as stateBeforeChange.
            entry = self._entry("modify", coll, coll.db, operation_description=dict(changes),
                                state_before_change={"collectionOptions": old})
            unit.entries.append(entry)

    # -- recovery -----------------------------------------------------------------------------

    def _apply_op(self, op: dict[str, Any]) -> None:
        """Re-apply one logged operation (recovery; no events, no checks)."""
        kind = op["op"]
        db, name = op["db"], op.get("coll", "")
        coll = self.catalog.get(db, name) if name else None
        if kind == "put":
            if coll is None:
                coll = self.catalog.create(db, name)
            doc = op["doc"]
            coll.put(doc, coll.docs.get(id_key(doc["_id"])))
        elif kind == "del" and coll is not None:
            existing = coll.docs.get(id_key(op["id"]))
            if existing is not None:
                coll.remove(existing)
        elif kind == "create" and coll is None:
            self.catalog.create(db, name, op.get("options"), op.get("uuid"))
        elif kind == "drop":
            self.catalog.drop(db, name)
        elif kind == "dropDatabase":
            self.catalog.databases.pop(db, None)
        elif kind == "rename" and coll is not None:
            self.catalog.drop(db, name)
            coll.db, coll.name = op["toDb"], op["toColl"]
            self.catalog.databases.setdefault(coll.db, {})[coll.name] = coll
        elif kind == "createIndex" and coll is not None:
            coll.add_index(parse_index_spec(op["spec"]))
        elif kind == "dropIndex" and coll is not None:
            coll.indexes.pop(op["name"], None)
        elif kind == "collMod" and coll is not None:
            coll.options.update(op["options"])

    def _recover(self, persistence: Persistence) -> None:
        snapshot, records = persistence.load()
        entries: list[ChangeEntry] = []
        for record in snapshot:
            kind = record.get("kind")
            if kind == "meta":
                self.clock.advance_to(record["clusterTime"])
                self.changelog.last_seq = record["lastSeq"]
                self.changelog.evicted_through = record.get("evictedThrough", 0)
                self.changelog.last_time = record["clusterTime"]
            elif kind == "collection":
                coll = self.catalog.create(record["db"], record["coll"], record["options"],
                                           record["uuid"])
                for spec in record["indexes"]:
                    if spec["name"] != ID_INDEX:
                        coll.add_index(parse_index_spec(spec))
            elif kind == "docs":
                coll = self.catalog.get(record["db"], record["coll"])
                if coll is not None:
                    for doc in record["docs"]:
                        coll.put(doc, None)
            elif kind == "changes":
                entries.extend(ChangeEntry.from_document(e) for e in record["entries"])
        for record in records:
            self.clock.advance_to(record["ts"])
            for op in record["ops"]:
                self._apply_op(op)
            entries.extend(ChangeEntry.from_document(e) for e in record["events"])
        self.changelog.append(entries, assign=False)
        if entries:
            self.changelog.last_time = entries[-1].cluster_time

    def _snapshot_records(self) -> Iterator[dict[str, Any]]:
        yield {"kind": "meta", "clusterTime": self.clock.now(),
               "lastSeq": self.changelog.last_seq,
               "evictedThrough": self.changelog.evicted_through}
        for coll in self.catalog.all_collections():
            yield {"kind": "collection", "db": coll.db, "coll": coll.name,
                   "options": coll.options, "uuid": coll.uuid,
                   "indexes": [i.spec.to_document() for i in coll.indexes.values()]}
            docs = list(coll.docs.values())
            for start in range(0, len(docs), SNAPSHOT_DOCS_PER_RECORD):
                yield {"kind": "docs", "db": coll.db, "coll": coll.name,
                       "docs": docs[start : start + SNAPSHOT_DOCS_PER_RECORD]}
        entries = [e.to_document() for e in self.changelog.entries]
        for start in range(0, len(entries), SNAPSHOT_DOCS_PER_RECORD):
            yield {"kind": "changes", "entries": entries[start : start + SNAPSHOT_DOCS_PER_RECORD]}

    def checkpoint(self) -> None:
        """Rewrite the snapshot and empty the log (start-up, clean shutdown, large log)."""
        if self.persistence is not None:
            self.persistence.write_snapshot(self._snapshot_records())
