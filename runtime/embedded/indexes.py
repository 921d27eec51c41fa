"""Secondary indexes: ordered key entries, uniqueness, sparse and partial filters, TTL options.

Each index keeps a sorted list of entries ``(component keys..., _id key)``. Components of
descending fields are wrapped in :class:`~runtime.embedded.ordering.Reverse`, so iterating the
list forwards yields the index's declared order and backwards the exact opposite, which lets a
query whose sort matches the index stream documents in order and stop at its limit.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bson import ObjectId
from sortedcontainers import SortedList

from runtime.embedded import collation as collations
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.names import check_index_name
from runtime.embedded.ordering import (
    BOTTOM,
    MISSING,
    NULL,
    NULL_KEY,
    STRING,
    TOP,
    UNDEFINED,
    Key,
    Reverse,
    get_path,
    value_key,
)

# Index types given by name instead of a direction; accepted and kept, but queries never use
# them (``$text``, geo and hashed lookups are not implemented).
INDEX_PLUGINS = frozenset({"text", "2d", "2dsphere", "hashed"})
# Field value types whose Python equality is BSON equality within the same type (so equal
# values of one of these types give equal index keys).
_SCALARS = frozenset({str, int, bool, datetime.datetime, ObjectId, type(None)})
# A document may produce at most this many entries in one index (arrays in several fields).
MAX_ENTRIES_PER_DOCUMENT = 10_000


@dataclass
class IndexSpec:
    """What ``createIndexes`` declared for one index."""

    name: str
    key: list[tuple[str, Any]]
    unique: bool = False
    sparse: bool = False
    partial_filter: dict[str, Any] | None = None
    expire_after_seconds: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        """The index as ``listIndexes`` reports it."""
        doc: dict[str, Any] = {"v": 2, "key": dict(self.key), "name": self.name}
        if self.unique:
            doc["unique"] = True
        if self.sparse:
            doc["sparse"] = True
        if self.partial_filter is not None:
            doc["partialFilterExpression"] = self.partial_filter
        if self.expire_after_seconds is not None:
            doc["expireAfterSeconds"] = self.expire_after_seconds
        doc.update(self.options)
        return doc

    @cached_property
    def directions(self) -> list[int]:
        """1 or -1 per field (non-numeric index types such as "text" count as ascending)."""
        return [-1 if isinstance(d, int | float) and d < 0 else 1 for _, d in self.key]

    @cached_property
    def ordered(self) -> bool:
        """Whether every field has a numeric direction (no "text", "hashed"... plugin)."""
        return all(isinstance(d, int | float) for _, d in self.key)

    @cached_property
    def fields(self) -> list[str]:
        """The indexed paths in order."""
        return [f for f, _ in self.key]

    @cached_property
    def collation(self) -> collations.Collation | None:
        """The index's collation (``None``: simple binary comparison)."""
        return collations.resolve(self.options.get("collation"), None)


def _field_keys(doc: dict[str, Any], path: str,
                get: Callable[[dict[str, Any], str], Any]) -> tuple[list[Key], bool]:
    value = get(doc, path)
    if value is MISSING:
        return [(NULL,)], False
    if isinstance(value, list):
        if not value:
            return [(UNDEFINED,)], True
        keys: dict[Key, None] = {}
        for element in value:
            if isinstance(element, list):
                keys[value_key(element)] = None
                for inner in element:
                    keys[value_key(inner)] = None
            else:
                keys[value_key(element)] = None
        return list(keys), True
    return [value_key(value)], False


def _same_scalar(a: Any, b: Any) -> bool:
    """Whether two field values are certainly the same index value (see :meth:`Index.unchanged`)."""
    return a is b or (type(a) is type(b) and type(a) in _SCALARS and a == b)


class Index:
    """One secondary index over a collection's documents."""

    def __init__(self, spec: IndexSpec, matches: Callable[[dict[str, Any], dict[str, Any]], bool]):
        self.spec = spec
        self.entries: SortedList[tuple[Any, ...]] = SortedList()
        self.multikey = False
        self._matches = matches
        self._directions = spec.directions
        #: Strings are stored as this collation's keys (so order and uniqueness follow it).
        self.collation = spec.collation
        # (path, read with a plain dict lookup: a top-level field and no collation, descending)
        self._fields = [(path, "." not in path and self.collation is None, direction < 0)
                        for path, direction in zip(spec.fields, self._directions, strict=True)]
        #: Top-level field names, when every indexed path is one (see :meth:`unchanged`).
        self._top_level = None if any("." in f for f in spec.fields) else list(spec.fields)
        self._get: Callable[[dict[str, Any], str], Any] = get_path
        if self.collation is not None:
            key = self.collation.key
            self._get = lambda doc, path: collations.transform(get_path(doc, path), key)

    def keys_for(self, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Component tuples (without the ``_id`` key) that ``doc`` contributes."""
        spec = self.spec
        if spec.partial_filter is not None and not self._matches(spec.partial_filter, doc):
            return []
        # The common case first: no field holds an array, so there is exactly one entry.
        components: list[Any] = []
        present = False
        get = self._get
        for path, plain, descending in self._fields:
            value = doc.get(path, MISSING) if plain else get(doc, path)
            if value is MISSING:
                key: Key = NULL_KEY
            elif type(value) is str:  # the most common indexed value, without a call
                present = True
                key = (STRING, value)
            elif isinstance(value, list):
                break
            else:
                present = True
                key = value_key(value)
            components.append(Reverse(key) if descending else key)
        else:
            if spec.sparse and not present:
                return []
            return [tuple(components)]
        per_field: list[list[Key]] = []
        present = False
        for path in self.spec.fields:
            keys, is_array = _field_keys(doc, path, get)
            if is_array:
                self.multikey = True
            if get_path(doc, path) is not MISSING:
                present = True
            per_field.append(keys)
        if self.spec.sparse and not present:
            return []
        combos: list[tuple[Any, ...]] = []
        for combo in itertools.product(*per_field):
            combos.append(
                tuple(
                    Reverse(k) if d < 0 else k
                    for k, d in zip(combo, self._directions, strict=True)
                )
            )
            if len(combos) > MAX_ENTRIES_PER_DOCUMENT:
                raise WriteError(ErrorCode.Location17280,
                                 f"too many index keys for index {self.spec.name}")
        return combos

    def check_unique(self, doc: dict[str, Any], doc_id: Key, ignore: AbstractSet[Key],
                     keys: list[tuple[Any, ...]] | None = None) -> None:
        """Raise DuplicateKey if another document (not in ``ignore``) has one of ``doc``'s keys
        (``keys``: ``doc``'s component tuples, when the caller has them already)."""
        if not self.spec.unique and self.spec.name != "_id_":  # _id: always unique
            return
        for components in self.keys_for(doc) if keys is None else keys:
            for entry in self.entries.irange(components + (BOTTOM,), components + (TOP,)):
                other = entry[-1]
                if other != doc_id and other not in ignore:
                    raise self.duplicate_error(doc)

    def duplicate_error(self, doc: dict[str, Any]) -> WriteError:
        """The E11000 error for ``doc`` colliding in this index."""
        key_value = {}
        for path in self.spec.fields:
            value = get_path(doc, path)
            key_value[path] = None if value is MISSING else value
        shown = ", ".join(f"{k}: {v!r}" for k, v in key_value.items())
        return WriteError(ErrorCode.DuplicateKey,
            f"E11000 duplicate key error collection: index: {self.spec.name} "
            f"dup key: {{ {shown} }}",
            {"keyPattern": dict(self.spec.key), "keyValue": key_value},
        )

    def add(self, doc: dict[str, Any], doc_id: Key) -> None:
        """Insert ``doc``'s entries."""
        for components in self.keys_for(doc):
            self.entries.add(components + (doc_id,))

    def unchanged(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Whether ``old`` and ``new`` certainly give the same entries (the same scalar values
        of the same types in every indexed field; not judged for partial indexes)."""
        if self.spec.partial_filter is not None:
            return False
        top_level = self._top_level
        if top_level is None:
            return all(_same_scalar(get_path(old, path), get_path(new, path))
                       for path in self.spec.fields)
        for path in top_level:
            a, b = old.get(path, MISSING), new.get(path, MISSING)
            # Stored documents are never changed in place: the same object is the same value.
            if a is not b and (type(a) is not type(b) or type(a) not in _SCALARS or a != b):
                return False
        return True

    def replace(self, old: dict[str, Any], new: dict[str, Any], doc_id: Key) -> None:
        """Swap ``old``'s entries for ``new``'s, touching only the entries that differ."""
        self.apply(self.keys_for(old), self.keys_for(new), doc_id)

    def apply(self, old_keys: list[tuple[Any, ...]], new_keys: list[tuple[Any, ...]],
              doc_id: Key) -> None:
        """Swap the entries of a document's component tuples ``old_keys`` (stored) for those
        of ``new_keys``, touching only the entries that differ (``old_keys`` empty: add)."""
        if len(old_keys) == 1 and len(new_keys) == 1:  # the common case: no arrays
            if old_keys[0] != new_keys[0]:
                self.entries.discard(old_keys[0] + (doc_id,))
                self.entries.add(new_keys[0] + (doc_id,))
            return
        if not old_keys:
            for components in new_keys:
                self.entries.add(components + (doc_id,))
            return
        before = {components + (doc_id,) for components in old_keys}
        after = {components + (doc_id,) for components in new_keys}
        for entry in before - after:
            self.entries.discard(entry)
        for entry in after - before:
            self.entries.add(entry)

    def remove(self, doc: dict[str, Any], doc_id: Key) -> None:
        """Remove ``doc``'s entries."""
        for components in self.keys_for(doc):
            self.entries.discard(components + (doc_id,))

    def scan(
        self, lower: tuple[Any, ...], upper: tuple[Any, ...], reverse: bool = False
    ) -> Iterator[Key]:
        """``_id`` keys of entries between two component-prefix bounds (inclusive)."""
        for entry in self.entries.irange(lower + (BOTTOM,), upper + (TOP,), reverse=reverse):
            yield entry[-1]

    def scan_entries(
        self, lower: tuple[Any, ...], upper: tuple[Any, ...], reverse: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """Whole entries ``(components..., _id key)`` between two component-prefix bounds."""
        yield from self.entries.irange(lower + (BOTTOM,), upper + (TOP,), reverse=reverse)

    def component_bounds(
        self, position: int, low: Any, high: Any
    ) -> tuple[Any, Any]:
        """Stored-order bounds of one component given ascending value bounds."""
        if self._directions[position] < 0:
            return (Reverse(high) if high is not TOP else BOTTOM), (
                Reverse(low) if low is not BOTTOM else TOP
            )
        return low, high


#: ``expireAfterSeconds`` of a (non-clustered) TTL index is at most this (mongod 7.0).
MAX_EXPIRE_AFTER_SECONDS = 2**31 - 1
#: Fields an index specification may have (mongod 7.0); others are
#: InvalidIndexSpecificationOption (197).
INDEX_SPEC_FIELDS = frozenset({
    "v", "key", "name", "ns", "background", "unique", "hidden", "partialFilterExpression",
    "sparse", "expireAfterSeconds", "storageEngine", "weights", "default_language",
    "language_override", "textIndexVersion", "2dsphereIndexVersion", "bits", "min", "max",
    "bucketSize", "collation", "wildcardProjection", "coarsestIndexedLevel",
    "finestIndexedLevel", "dropDups", "originalSpec", "prepareUnique", "clustered",
    "columnstoreProjection", "columnstoreCompressor"})
_BOOLEAN_OPTIONS = ("unique", "sparse", "hidden", "background", "prepareUnique")
_DOCUMENT_OPTIONS = ("partialFilterExpression", "collation", "storageEngine", "weights",
                     "wildcardProjection")


def ttl_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid ``expireAfterSeconds`` of a TTL index (``None`` if it is)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (f"TTL index 'expireAfterSeconds' option must be numeric, but received a type "
                f"of '{type(value).__name__}'")
    if value != value:
        return "TTL index 'expireAfterSeconds' option must not be NaN"
    if value < 0:
        return "TTL index 'expireAfterSeconds' option cannot be less than 0"
    if value > MAX_EXPIRE_AFTER_SECONDS:
        return ("TTL index 'expireAfterSeconds' option must be within an acceptable range "
                f"(0 to {MAX_EXPIRE_AFTER_SECONDS}), try a lower number")
    return None


def _type_error(name: str, value: Any, expected: str) -> CommandError:
    return CommandError(ErrorCode.TypeMismatch, f"The field '{name}' must be {expected}, but got "
                        f"{type(value).__name__} in an index specification")


def check_index_spec(raw: Any, position: int) -> dict[str, Any]:
    """Validate entry ``position`` of ``createIndexes.indexes`` as mongod 7.0 does.

    Stricter than :func:`parse_index_spec`, which also reads stored specifications (older data
    must stay loadable): codes TypeMismatch (14), FailedToParse (9), CannotCreateIndex (67),
    BadValue (2), InvalidIndexSpecificationOption (197).
    """
    if not isinstance(raw, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           f"BSON field 'createIndexes.indexes.{position}' is the wrong "
                           f"type '{type(raw).__name__}', expected type 'object'")
    for required in ("key", "name"):
        if required not in raw:
            raise CommandError(ErrorCode.FailedToParse,
                               f"The '{required}' field is a required property of an index "
                               f"specification (createIndexes.indexes.{position})")
    key = raw["key"]
    if not isinstance(key, dict):
        raise _type_error("key", key, "an object")
    if not key:
        raise CommandError(ErrorCode.CannotCreateIndex,
                           "Index keys cannot be an empty object: 'key' needs at least one "
                           "field")
    for path, direction in key.items():
        if isinstance(direction, str) and (type(direction) is not str
                                           or direction not in INDEX_PLUGINS):
            raise CommandError(ErrorCode.CannotCreateIndex,
                               f"Unknown index plugin '{direction}' for field '{path}'; "
                               "use 1, -1 or one of " + ", ".join(sorted(INDEX_PLUGINS)))
    name = check_index_name(raw["name"])
    unknown = sorted(k for k in raw if k not in INDEX_SPEC_FIELDS)
    if unknown:
        raise CommandError(ErrorCode.InvalidIndexSpecificationOption,
                           f"The field '{unknown[0]}' is not valid for an index "
                           f"specification (index '{name}')")
    for option in _BOOLEAN_OPTIONS:
        value = raw.get(option)
        if value is not None and (not isinstance(value, bool | int | float)):
            raise _type_error(option, value, "a boolean")
    for option in _DOCUMENT_OPTIONS:
        value = raw.get(option)
        if value is not None and not isinstance(value, dict):
            raise _type_error(option, value, "an object")
    if "collation" in raw:
        collations.parse(raw["collation"])
    if "expireAfterSeconds" in raw:
        if list(key) == ["_id"]:
            raise CommandError(ErrorCode.InvalidIndexSpecificationOption,
                               "The field 'expireAfterSeconds' is not valid for an _id "
                               f"index specification (index '{name}')")
        if len(key) != 1:
            raise CommandError(ErrorCode.CannotCreateIndex,
                               "TTL indexes are single-field indexes, compound indexes do "
                               f"not support TTL (index '{name}')")
        problem = ttl_problem(raw["expireAfterSeconds"])
        if problem is not None:
            raise CommandError(ErrorCode.CannotCreateIndex, f"{problem} (index '{name}')")
    return raw


def parse_index_spec(raw: dict[str, Any],
                     default_collation: dict[str, Any] | None = None) -> IndexSpec:
    """Validate one entry of ``createIndexes.indexes`` (or a stored index specification).

    An index without a ``collation`` gets ``default_collation`` (its collection's); the stored
    option is the full specification mongod reports, absent for the simple collation."""
    key = raw.get("key")
    name = raw.get("name")
    if not isinstance(key, dict) or not key:
        raise CommandError(ErrorCode.FailedToParse,
                           "index specification must contain a non-empty 'key' document")
    if type(name) is not str or not name:
        raise CommandError(ErrorCode.FailedToParse,
                           "index specification must contain a string 'name'")
    for path, direction in key.items():
        if not path or (path.startswith("$") and path != "$**"):
            raise CommandError(ErrorCode.CannotCreateIndex,
                               f"bad index key pattern field name {path!r}")
        if isinstance(direction, bool) or not (
            (isinstance(direction, int | float) and direction != 0)
            or (type(direction) is str and direction in INDEX_PLUGINS)
        ):
            raise CommandError(ErrorCode.CannotCreateIndex,
                               f"bad index key pattern value {direction!r} for {path!r}")
    partial = raw.get("partialFilterExpression")
    if partial is not None and not isinstance(partial, dict):
        raise CommandError(ErrorCode.FailedToParse, "partialFilterExpression must be a document")
    ttl = raw.get("expireAfterSeconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0):
        raise CommandError(ErrorCode.BadValue, "expireAfterSeconds must be a non-negative number")
    known = {"key", "name", "unique", "sparse", "partialFilterExpression", "expireAfterSeconds",
             "v", "ns"}
    options = {k: v for k, v in raw.items() if k not in known}
    collation = collations.resolve(options.get("collation"), default_collation)
    options.pop("collation", None)
    if collation is not None:
        options["collation"] = collation.to_document()
    return IndexSpec(
        name=name,
        key=list(key.items()),
        unique=bool(raw.get("unique", False)),
        sparse=bool(raw.get("sparse", False)),
        partial_filter=partial,
        expire_after_seconds=float(ttl) if ttl is not None else None,
        options=options,
    )
