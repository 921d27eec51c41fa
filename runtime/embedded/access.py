"""How command handlers read and write documents: directly, or inside a transaction.

:class:`DirectAccess` applies each write to the catalog at once (one command is one atomic unit).
:class:`TransactionAccess` keeps a transaction's writes in a private overlay that only that
transaction reads; at commit they are checked for conflicts and applied as one unit, so readers
and change streams see all of them at once, and nothing of an aborted one. Under the overlay a
transaction reads one snapshot, taken when it starts (as mongod does at its first operation):
what others commit afterwards stays invisible to it, and writing a document they changed since
is a ``WriteConflict``. :class:`SnapshotAccess` serves reads with ``readConcern: snapshot``
outside transactions the same way (see :mod:`runtime.embedded.versions`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.embedded import deadlines, engine, json_schema, planner
from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.document_rules import Write, check_storable
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import Key, id_key
from runtime.embedded.storage import Collection
from runtime.embedded.versions import SnapshotView

TRANSIENT = "TransientTransactionError"


class Access(Protocol):
    """The document operations command handlers use."""

    store: DataStore

    def collection(self, db: str, name: str) -> Collection | None:
        """An existing collection."""
        ...

    def ensure(self, db: str, name: str) -> Collection:
        """A collection, created implicitly when missing."""
        ...

    def candidates(self, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None) -> tuple[Iterator[dict[str, Any]], bool]:
        """Documents that may match ``query``; True when they come in ``sort`` order."""
        ...

    def insert(self, coll: Collection, doc: dict[str, Any]) -> None:
        """Insert a document."""
        ...

    def replace(self, coll: Collection, old: dict[str, Any], new: dict[str, Any],
                is_replacement: bool) -> None:
        """Store ``new`` in place of ``old``."""
        ...

    def delete(self, coll: Collection, doc: dict[str, Any]) -> None:
        """Delete a document."""
        ...


def _documents(coll: Collection, keys: Iterator[Key]) -> Iterator[dict[str, Any]]:
    docs = coll.docs
    tick = deadlines.tick
    for key in keys:
        tick()
        doc = docs.get(key)
        if doc is not None:
            yield doc


def check_validator(coll: Collection, new: dict[str, Any], old: dict[str, Any] | None,
                    bypass: bool) -> None:
    """The collection's ``validator`` for a write of ``new`` over ``old`` (None: an insert),
    unless the command set ``bypassDocumentValidation``: DocumentValidationFailure (121)."""
    if bypass or not (coll.options.get("validator") or coll.options.get("encryptedFields")):
        return
    error = json_schema.validation_error(coll.options, new, old,
                                         lambda query, doc: engine.matches(query, doc, {}))
    if error is not None:
        raise error


class DirectAccess:
    """Reads and writes the committed state; writes are recorded in ``unit``."""

    #: Set from the command's ``bypassDocumentValidation`` (skips the collection's validator).
    bypass_validation = False

    def __init__(self, store: DataStore, unit: WriteUnit) -> None:
        self.store = store
        self.unit = unit

    def collection(self, db: str, name: str) -> Collection | None:
        return self.store.catalog.get(db, name)

    def ensure(self, db: str, name: str) -> Collection:
        return self.store.ensure_collection(self.unit, db, name)

    def candidates(self, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None) -> tuple[Iterator[dict[str, Any]], bool]:
        chosen = planner.plan(coll, query, sort)
        return _documents(coll, chosen.ids), chosen.sorted_by_index

    def insert(self, coll: Collection, doc: dict[str, Any]) -> None:
        check_validator(coll, doc, None, self.bypass_validation)
        self.store.insert(self.unit, coll, doc)

    def replace(self, coll: Collection, old: dict[str, Any], new: dict[str, Any],
                is_replacement: bool) -> None:
        check_validator(coll, new, old, self.bypass_validation)
        self.store.replace(self.unit, coll, old, new, is_replacement)

    def delete(self, coll: Collection, doc: dict[str, Any]) -> None:
        self.store.delete(self.unit, coll, doc)


def _snapshot_documents(view: SnapshotView, coll: Collection,
                        keys: Iterator[Key]) -> Iterator[dict[str, Any]]:
    """The documents of a plan's keys as ``view`` sees them, then those the plan (which reads
    the current indexes) could not find: existing at the view's time but changed since."""
    uuid = coll.uuid
    seen: set[Key] = set()
    tick = deadlines.tick
    for key in keys:
        tick()
        if key in seen:
            continue
        seen.add(key)
        doc = view.resolve(uuid, key, coll.docs.get(key))
        if doc is not None:
            yield doc
    yield from view.missing(uuid, seen)


class SnapshotAccess(DirectAccess):
    """Reads the state at one cluster time (``readConcern: snapshot`` outside transactions);
    such commands do not write."""

    def __init__(self, store: DataStore, unit: WriteUnit, view: SnapshotView) -> None:
        super().__init__(store, unit)
        self.view = view

    def candidates(self, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None) -> tuple[Iterator[dict[str, Any]], bool]:
        chosen = planner.plan(coll, query, sort)
        if self.view.untouched(coll.uuid):
            # Nothing changed since the snapshot (yet): index order still holds; a write made
            # while the cursor is open is resolved away document by document.
            return _snapshot_documents(self.view, coll, chosen.ids), chosen.sorted_by_index
        return _snapshot_documents(self.view, coll, chosen.ids), False

    def _refuse(self) -> CommandError:
        return CommandError(ErrorCode.InvalidOptions,
                            "a command with readConcern level snapshot cannot write outside a "
                            "multi-document transaction")

    def ensure(self, db: str, name: str) -> Collection:
        raise self._refuse()

    def insert(self, coll: Collection, doc: dict[str, Any]) -> None:
        raise self._refuse()

    def replace(self, coll: Collection, old: dict[str, Any], new: dict[str, Any],
                is_replacement: bool) -> None:
        raise self._refuse()

    def delete(self, coll: Collection, doc: dict[str, Any]) -> None:
        raise self._refuse()


@dataclass
class _Touched:
    coll: Collection  # the collection written to (a drop or rename meanwhile is a conflict)
    base: dict[str, Any] | None  # committed document when first touched
    current: dict[str, Any] | None  # the transaction's version (None = deleted)


@dataclass
class Transaction:
    """A multi-document transaction's private state."""

    lsid: dict[str, Any]
    txn_number: int
    touched: dict[tuple[str, str, Key], _Touched] = field(default_factory=dict)
    steps: list[tuple[str, str, str, Key, bool]] = field(default_factory=list)
    failed: CommandError | None = None
    started: float = field(default_factory=time.monotonic)  # for the lifetime limit
    #: The snapshot the transaction reads (None: the latest committed state).
    snapshot: SnapshotView | None = None

    def release(self, store: DataStore) -> None:
        """Drop this transaction's document locks."""
        locks = store.transaction_locks
        for key in self.touched:
            if locks.get(key) is self:
                del locks[key]


class TransactionAccess:
    """Reads the committed state through the transaction's overlay; buffers writes."""

    bypass_validation = False

    def __init__(self, store: DataStore, txn: Transaction) -> None:
        self.store = store
        self.txn = txn
        self._unit = WriteUnit()

    def collection(self, db: str, name: str) -> Collection | None:
        return self.store.catalog.get(db, name)

    def ensure(self, db: str, name: str) -> Collection:
        coll = self.store.catalog.get(db, name)
        if coll is None:
            coll = self.store.create_collection(self._unit, db, name, {})
            self.store.commit(self._unit)
            self._unit = WriteUnit()
        return coll

    def candidates(self, coll: Collection, query: dict[str, Any],
                   sort: list[tuple[str, int]] | None) -> tuple[Iterator[dict[str, Any]], bool]:
        chosen = planner.plan(coll, query, sort)
        return self._merged(coll, chosen.ids), False

    def _merged(self, coll: Collection, keys: Iterator[Key]) -> Iterator[dict[str, Any]]:
        touched = self.txn.touched
        view = self.txn.snapshot
        seen: set[Key] = set()
        for key in keys:
            deadlines.tick()
            entry = touched.get((coll.db, coll.name, key))
            if entry is not None:
                seen.add(key)
                if entry.current is not None:
                    yield entry.current
                continue
            doc = coll.docs.get(key)
            if view is not None:
                if key in seen:
                    continue
                seen.add(key)
                doc = view.resolve(coll.uuid, key, doc)
            if doc is not None:
                yield doc
        if view is not None:
            # Documents of the snapshot that the committed indexes no longer lead to.
            for doc in view.missing(coll.uuid, seen):
                key = id_key(doc["_id"])
                if (coll.db, coll.name, key) not in touched:
                    yield doc
        # Documents this transaction inserted or changed that the plan did not find (the plan
        # reads the committed indexes, which do not know the transaction's new values); the
        # caller filters every candidate against the query anyway.
        for (db, name, key), entry in list(touched.items()):
            if db == coll.db and name == coll.name and key not in seen \
                    and entry.current is not None:
                yield entry.current

    def _touch(self, coll: Collection, key: Key) -> _Touched:
        lock_key = (coll.db, coll.name, key)
        holder = self.store.transaction_locks.get(lock_key)
        if holder is not None and holder is not self.txn:
            raise CommandError(ErrorCode.WriteConflict,
                "Write conflict during plan execution and yielding is disabled.",
                labels=[TRANSIENT],
            )
        entry = self.txn.touched.get(lock_key)
        view = self.txn.snapshot
        if entry is None and view is not None and view.changed(coll.uuid, key):
            raise CommandError(ErrorCode.WriteConflict,
                "Write conflict: the document was changed after this transaction's snapshot",
                labels=[TRANSIENT],
            )
        self.store.transaction_locks[lock_key] = self.txn
        if entry is None:
            base = coll.docs.get(key)
            entry = _Touched(coll=coll, base=base, current=base)
            self.txn.touched[lock_key] = entry
        return entry

    def _check_unique(self, coll: Collection, doc: dict[str, Any], key: Key) -> None:
        for index in coll.indexes.values():
            if not index.spec.unique:
                continue
            for components in index.keys_for(doc):
                for other_key in index.scan(components, components):
                    if other_key == key:
                        continue
                    touched = self.txn.touched.get((coll.db, coll.name, other_key))
                    if touched is None or (touched.current is not None and
                                           components in index.keys_for(touched.current)):
                        raise index.duplicate_error(doc)
            for (db, name, other_key), touched in self.txn.touched.items():
                if (db, name) == (coll.db, coll.name) and other_key != key \
                        and touched.current \
                        and set(index.keys_for(touched.current)) & set(index.keys_for(doc)):
                    raise index.duplicate_error(doc)

    def insert(self, coll: Collection, doc: dict[str, Any]) -> None:
        check_storable(doc, Write.INSERT)
        check_validator(coll, doc, None, self.bypass_validation)
        key = id_key(doc["_id"])
        entry = self._touch(coll, key)
        if entry.current is not None:
            raise coll.indexes["_id_"].duplicate_error(doc)
        self._check_unique(coll, doc, key)
        entry.current = doc
        self.txn.steps.append(("insert", coll.db, coll.name, key, False))

    def replace(self, coll: Collection, old: dict[str, Any], new: dict[str, Any],
                is_replacement: bool) -> None:
        check_storable(new, Write.UPDATE)
        check_validator(coll, new, old, self.bypass_validation)
        key = id_key(old["_id"])
        entry = self._touch(coll, key)
        self._check_unique(coll, new, key)
        entry.current = new
        self.txn.steps.append(("replace", coll.db, coll.name, key, is_replacement))

    def delete(self, coll: Collection, doc: dict[str, Any]) -> None:
        key = id_key(doc["_id"])
        entry = self._touch(coll, key)
        entry.current = None
        self.txn.steps.append(("delete", coll.db, coll.name, key, False))

    def commit(self) -> WriteUnit:
        """Validate and apply the transaction's writes as one unit (not yet committed).

        Either every write is applied or, when one fails, none is: the ones already applied are
        undone before the error is raised.
        """
        catalog = self.store.catalog
        for (db, name, key), entry in self.txn.touched.items():
            coll = catalog.get(db, name)
            if coll is not entry.coll:
                raise CommandError(ErrorCode.WriteConflict,
                                   f"Write conflict: collection {db}.{name} was dropped, "
                                   "renamed or recreated while this transaction wrote to it",
                                   labels=[TRANSIENT])
            if coll.docs.get(key) is not entry.base:
                raise CommandError(ErrorCode.WriteConflict,
                                   "Write conflict: a document written by this transaction "
                                   "was changed by another operation", labels=[TRANSIENT])
        unit = WriteUnit(lsid=self.txn.lsid, txn_number=self.txn.txn_number)
        # Each document's final version is applied once, in the order documents were first
        # touched, which keeps the events in statement order for the common one-write case.
        final_order: dict[tuple[str, str, Key], None] = {}
        for _, db, name, key, _replacement in self.txn.steps:
            final_order.setdefault((db, name, key), None)
        replacement_of = {(db, name, key): repl for op, db, name, key, repl in self.txn.steps
                          if op == "replace"}
        applied: list[tuple[Collection, dict[str, Any] | None, dict[str, Any] | None]] = []
        try:
            for db, name, key in final_order:
                entry = self.txn.touched[(db, name, key)]
                coll = entry.coll
                old = coll.docs.get(key)
                new = entry.current
                if old is None and new is not None:
                    self.store.insert(unit, coll, new)
                elif old is not None and new is None:
                    self.store.delete(unit, coll, old)
                elif old is not None and new is not None and old is not new:
                    self.store.replace(unit, coll, old, new,
                                       replacement_of.get((db, name, key), False))
                else:
                    continue
                applied.append((coll, old, new))
        except WriteError as exc:
            _undo(applied)
            raise CommandError(exc.code, exc.message, labels=[TRANSIENT]) from exc
        except BaseException:
            _undo(applied)
            raise
        return unit


def _undo(applied: list[tuple[Collection, dict[str, Any] | None, dict[str, Any] | None]]) -> None:
    """Restore the documents of a partly applied commit, newest change first."""
    for coll, old, new in reversed(applied):
        if new is not None:
            coll.remove(new)
        if old is not None:
            coll.put(old, None)
