"""In-memory storage: databases, collections, their documents and indexes.

Documents are kept as decoded dictionaries keyed by the ordering key of their ``_id`` and treated
as immutable: every write stores a new dictionary. That makes copy-on-write transactions cheap
(a transaction remembers the object it read) and lets readers hand stored documents straight to
the BSON encoder.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from bson.binary import Binary

from runtime.embedded import engine
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.indexes import Index, IndexSpec
from runtime.embedded.names import check_collection
from runtime.embedded.ordering import Key, id_key

ID_INDEX = "_id_"


def _partial_matches(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    return engine.matches(query, doc, {})


_NO_KEYS: frozenset[Key] = frozenset()
#: An index's change for one write: the component tuples of the document it replaces (none for
#: an insert) and of the document written.
IndexChange = tuple[list[Key], list[Key]]


class WritePlan:
    """The index keys of one write, each worked out once: the uniqueness check computes those
    of the unique indexes, :meth:`Collection.put` then reuses them and computes the others."""

    __slots__ = ("changes", "doc", "previous")

    def __init__(self, doc: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.doc = doc
        self.previous = previous
        #: By index name; ``None`` when the index's entries stay as they are.
        self.changes: dict[str, IndexChange | None] = {}

    def change(self, name: str, index: Index) -> IndexChange | None:
        """How the write changes ``index``'s entries (``None``: not at all)."""
        try:
            return self.changes[name]
        except KeyError:
            pass
        previous = self.previous
        change: IndexChange | None
        if previous is None:
            change = ([], index.keys_for(self.doc))
        elif index.unchanged(previous, self.doc):
            change = None
        else:
            change = (index.keys_for(previous), index.keys_for(self.doc))
        self.changes[name] = change
        return change


class Collection:
    """One collection: documents by ``_id`` plus its indexes and options."""

    def __init__(self, db: str, name: str, options: dict[str, Any] | None = None,
                 collection_uuid: Binary | None = None) -> None:
        self.db = db
        self.name = name
        self.options: dict[str, Any] = dict(options or {})
        self.uuid = collection_uuid or Binary.from_uuid(uuid.uuid4())
        self.docs: dict[Key, dict[str, Any]] = {}
        self.indexes: dict[str, Index] = {}
        collation = self.options.get("collation")  # the _id index follows the default
        self.add_index(IndexSpec(name=ID_INDEX, key=[("_id", 1)],
                                 options={"collation": collation} if collation else {}))

    @property
    def namespace(self) -> str:
        """``db.collection``."""
        return f"{self.db}.{self.name}"

    @property
    def images_enabled(self) -> bool:
        """Whether change streams may serve pre- and post-images for this collection."""
        option = self.options.get("changeStreamPreAndPostImages")
        return isinstance(option, dict) and bool(option.get("enabled"))

    def add_index(self, spec: IndexSpec) -> Index:
        """Build an index over the current documents (fails on a duplicate for unique ones)."""
        index = Index(spec, _partial_matches)
        for key, doc in self.docs.items():
            if spec.unique:
                try:
                    index.check_unique(doc, key, set())
                except Exception as exc:
                    message = getattr(exc, "message", str(exc))
                    raise CommandError(ErrorCode.DuplicateKey,
                                       f"Index build failed: {message}") from exc
            index.add(doc, key)
        self.indexes[spec.name] = index
        return index

    def check_unique(self, doc: dict[str, Any], key: Key, replacing: bool,
                     previous: dict[str, Any] | None = None) -> WritePlan:
        """Raise DuplicateKey if ``doc`` would collide in a unique index (or on ``_id``).

        ``previous`` (the document ``doc`` replaces) lets indexes whose fields did not change
        skip the check: their entries stay the ones already stored. Returns the index keys
        worked out on the way, for :meth:`put` of the same write."""
        if not replacing and key in self.docs:
            raise self.indexes[ID_INDEX].duplicate_error(doc)
        plan = WritePlan(doc, previous)
        for name, index in self.indexes.items():
            # the _id index is unique too; under a collation its entries, not the keys, say so
            unique = index.collation is not None if name == ID_INDEX else index.spec.unique
            if unique:
                change = plan.change(name, index)
                if change is not None:
                    index.check_unique(doc, key, _NO_KEYS, change[1])
        return plan

    def put(self, doc: dict[str, Any], previous: dict[str, Any] | None,
            plan: WritePlan | None = None) -> None:
        """Store ``doc`` (replacing ``previous`` when given); uniqueness already checked
        (``plan``: what that check returned, reused when it is for the same write)."""
        key = id_key(doc["_id"])
        if plan is None or plan.doc is not doc or plan.previous is not previous:
            plan = WritePlan(doc, previous)
        # Every index's keys are worked out before anything changes, so a document that
        # cannot be indexed (too many keys) leaves the collection as it was.
        changes = []
        for name, index in self.indexes.items():
            if previous is not None and name == ID_INDEX:
                continue  # the same _id
            change = plan.change(name, index)
            if change is not None:  # else the same values in every indexed field
                changes.append((index, change))
        self.docs[key] = doc
        for index, (old_keys, new_keys) in changes:
            index.apply(old_keys, new_keys, key)

    def remove(self, doc: dict[str, Any]) -> None:
        """Delete a stored document."""
        key = id_key(doc["_id"])
        for index in self.indexes.values():
            index.remove(doc, key)
        del self.docs[key]

    def get(self, key: Key) -> dict[str, Any] | None:
        """The stored document with this ``_id`` key, if any."""
        return self.docs.get(key)

    def info(self) -> dict[str, Any]:
        """The collection as ``listCollections`` reports it."""
        return {
            "name": self.name,
            "type": "collection",
            "options": dict(self.options),
            "info": {"readOnly": False, "uuid": self.uuid},
            "idIndex": self.indexes[ID_INDEX].spec.to_document(),
        }


class Catalog:
    """All databases and their collections."""

    def __init__(self) -> None:
        self.databases: dict[str, dict[str, Collection]] = {}

    def get(self, db: str, name: str) -> Collection | None:
        """An existing collection, or ``None``."""
        return self.databases.get(db, {}).get(name)

    def create(self, db: str, name: str, options: dict[str, Any] | None = None,
               collection_uuid: Binary | None = None) -> Collection:
        """Create a collection (the caller checks that it does not exist and, for a client's
        request, :func:`~runtime.embedded.names.check_new_collection`)."""
        check_collection(db, name)
        coll = Collection(db, name, options, collection_uuid)
        self.databases.setdefault(db, {})[name] = coll
        return coll

    def drop(self, db: str, name: str) -> Collection | None:
        """Remove a collection; returns it, or ``None`` if it did not exist."""
        colls = self.databases.get(db)
        if colls is None:
            return None
        coll = colls.pop(name, None)
        if not colls:
            self.databases.pop(db, None)
        return coll

    def collections(self, db: str) -> list[Collection]:
        """The collections of a database, by name."""
        return [self.databases[db][n] for n in sorted(self.databases.get(db, {}))]

    def all_collections(self) -> Iterator[Collection]:
        """Every collection of every database."""
        for db in sorted(self.databases):
            yield from self.collections(db)



def validate_collection_name(db: str, name: str) -> None:
    """Reject names no collection may have (InvalidNamespace, 73); see :mod:`names`."""
    check_collection(db, name)
