"""A change stream's leading ``$match`` and trailing ``$project``, evaluated on log entries.

Every open stream examines every committed change. The general path builds the event document
(resume token, times, namespace, looked-up full document, ...) and only then runs the stream's
stages on it, although most events are filtered out. Here the leading ``$match`` stages are
split once per stream and per *kind of entry* (its operation type, database and collection):

* conditions on ``operationType`` and ``ns`` depend on nothing else, so they are decided once
  for that kind (by the general matcher, on those two fields): a stream that cannot match it
  skips such entries without building anything;
* what is left (the *residual* filter, e.g. on ``fullDocument.status``) is compiled with
  :mod:`.compiled_filter` and evaluated on a small document holding only the event fields it
  reads, resolved from the entry; the event is built only for entries that match.

Both parts are evaluated on documents equal to the corresponding parts of the event, so the
answers are the general path's. A residual the compiled matcher does not handle or that reads
fields costly to resolve (``$expr``, ``_id``, ``updateDescription``, ...), a document whose paths
cross an array (``Unsupported`` at evaluation), and a kind whose static conditions raise an
error, go the general way: the event is built and the stream's stages run on it as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.embedded import compiled, compiled_filter, engine

#: Top-level event fields the residual filter may read (resolved from the entry, see
#: :func:`runtime.embedded.change_events._view`).
DYNAMIC_FIELDS = frozenset({"fullDocument", "documentKey", "clusterTime", "wallTime",
                            "collectionUUID", "to", "lsid", "txnNumber"})
#: Top-level event fields decided by the entry's kind alone.
STATIC_FIELDS = frozenset({"operationType", "ns"})
#: Event fields the fast path does not resolve: a residual reading them takes the general path.
OPAQUE_FIELDS = frozenset({"_id", "updateDescription", "fullDocumentBeforeChange",
                           "operationDescription", "stateBeforeChange"})
_LOGICAL = ("$and", "$or", "$nor")
MAX_KINDS = 1024
"""Kinds of entries whose verdict a stream remembers (a cluster stream may see many)."""


def _general(doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    raise compiled.Unsupported("the general path decides")


@dataclass(frozen=True)
class Residual:
    """What is left of a filter for one kind of entry: a compiled matcher of event fields
    (:data:`GENERAL`: one that always raises Unsupported, so the general path decides)."""

    matcher: compiled_filter.Matcher
    fields: frozenset[str]
    #: the matcher takes the full document itself (every condition is on a path inside it)
    on_full_document: bool = False


GENERAL = Residual(_general, frozenset())
Verdict = bool | Residual


def _conjunction(items: list[tuple[str, Any]], static: dict[str, Any]) -> bool | dict[str, Any]:
    rest: dict[str, Any] = {}
    for key, value in items:
        decided, residual = _partial_item(key, value, static)
        if decided is False:
            return False
        if decided is None:
            rest[key] = residual
    return rest or True


def _partial_item(key: str, value: Any, static: dict[str, Any]) -> tuple[bool | None, Any]:
    """One item of a filter document: (True or False, None) when the static fields decide
    it, else (None, its residual value)."""
    if key in _LOGICAL:
        parts = [partial(sub, static) for sub in value]
        left = [p for p in parts if not isinstance(p, bool)]
        if key == "$and":
            if any(p is False for p in parts):
                return False, None
            return (None, left) if left else (True, None)
        if key == "$or":
            if any(p is True for p in parts):
                return True, None
            return (None, left) if left else (False, None)
        if any(p is True for p in parts):  # $nor
            return False, None
        return (None, left) if left else (True, None)
    if not key.startswith("$") and key.split(".", 1)[0] in STATIC_FIELDS:
        return engine.matches({key: value}, static, {}), None
    return None, value


def partial(spec: dict[str, Any], static: dict[str, Any]) -> bool | dict[str, Any]:
    """``spec`` with its conditions on the static fields decided against ``static``: True,
    False, or the filter document that is left."""
    return _conjunction(list(spec.items()), static)


def _fields(spec: dict[str, Any], into: set[str]) -> None:
    """The top-level event fields ``spec`` reads (``$`` for an operator such as ``$expr``)."""
    for key, value in spec.items():
        if key in _LOGICAL:
            for sub in value:
                _fields(sub, into)
        else:
            into.add("$" if key.startswith("$") else key.split(".", 1)[0])


def _check(spec: Any) -> None:
    """Raise Unsupported unless ``spec`` is a filter document whose logical operators are
    well formed (the general path reports malformed ones, for every event)."""
    if not isinstance(spec, dict):
        raise compiled.Unsupported("$match")
    for key, value in spec.items():
        if key in _LOGICAL:
            if not isinstance(value, list) or not value:
                raise compiled.Unsupported(key)
            for sub in value:
                _check(sub)


class EntryFilter:
    """The leading ``$match`` stages of a stream, decided per kind of entry."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        for spec in specs:
            _check(spec)
        self.spec: dict[str, Any] = (specs[0] if len(specs) == 1 else {"$and": specs}) \
            if specs else {}

    def decide(self, operation_type: str, db: str, coll: str | None) -> Verdict:
        """True or False when the entry's kind decides the filter; else the residual (the
        caller remembers the verdict per kind: see :data:`MAX_KINDS`)."""
        ns: dict[str, Any] = {"db": db}
        if coll is not None:
            ns["coll"] = coll
        try:
            rest = partial(self.spec, {"operationType": operation_type, "ns": ns}) \
                if self.spec else True
        except Exception:  # e.g. a malformed condition: the general path reports it
            return GENERAL
        if not isinstance(rest, dict):
            return rest
        fields: set[str] = set()
        _fields(rest, fields)
        if not fields.isdisjoint(OPAQUE_FIELDS | {"$"}):
            return GENERAL
        inside = _inside_full_document(rest)
        try:
            if inside is not None:
                return Residual(compiled_filter.compile_filter(inside), frozenset(fields), True)
        except compiled.Unsupported:
            pass
        try:
            return Residual(compiled_filter.compile_filter(rest),
                            frozenset(fields & DYNAMIC_FIELDS))
        except compiled.Unsupported:
            return GENERAL


_PREFIX = "fullDocument."


def _inside_full_document(spec: dict[str, Any]) -> dict[str, Any] | None:
    """``spec`` with every path relative to ``fullDocument``, if all are inside it: matching
    that against the full document (an empty one when the event has none or null) answers
    like ``spec`` against the event, as paths through a missing or null value are missing."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in _LOGICAL:
            subs = [_inside_full_document(sub) for sub in value]
            if any(sub is None for sub in subs):
                return None
            out[key] = subs
        elif key.startswith(_PREFIX) and len(key) > len(_PREFIX) and key[len(_PREFIX)] != "$":
            out[key[len(_PREFIX):]] = value
        else:
            return None
    return out


def entry_filter(specs: list[dict[str, Any]]) -> EntryFilter | None:
    """The fast form of these ``$match`` specifications, or None (general path)."""
    try:
        return EntryFilter(specs)
    except compiled.Unsupported:
        return None


Projection = Callable[[dict[str, Any]], dict[str, Any]]


def _nested(tree: dict[str, Any]) -> list[tuple[str, Projection]]:
    return [(key, _projector(sub)) for key, sub in tree.items() if sub is not True]


def _project_nested(out: dict[str, Any], nested: list[tuple[str, Projection]]) -> dict[str, Any]:
    """Apply the subtrees to ``out`` (in place), whose fields are already those kept."""
    for key, inner in nested:
        if key in out:
            value = out[key]
            if isinstance(value, dict):
                out[key] = inner(value)
            elif isinstance(value, list):
                raise compiled.Unsupported("projection through an array")
            else:
                del out[key]
    return out


def _projector(tree: dict[str, Any]) -> Projection:
    nested = _nested(tree)

    def project(doc: dict[str, Any]) -> dict[str, Any]:
        return _project_nested({key: value for key, value in doc.items() if key in tree},
                               nested)

    return project


class InclusionProjection:
    """An inclusion ``$project`` as :func:`runtime.embedded.compiled.inclusion_projection`
    applies it (same tree, same result), with each level's plain fields copied in one pass;
    raises Unsupported for what the general stage must do (a path through an array)."""

    def __init__(self, spec: Any) -> None:
        tree = compiled.inclusion_tree(spec)
        #: the top-level fields it keeps: an event needs no others
        self.fields = frozenset(tree)
        self.apply = _projector(tree)
        self._nested = _nested(tree)

    def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.apply(doc)

    def finish(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The projection of a new document that has only fields in :attr:`fields` (changed
        in place)."""
        return _project_nested(doc, self._nested)
