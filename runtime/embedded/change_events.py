"""Change events: turning one change-log entry into the event document a stream returns.

:func:`build_event` builds the event drivers expect (``fullDocument`` looked up or taken from
the entry's images as the stream's options ask, ``updateDescription`` only when someone can read
it); :func:`apply_stages` runs the stream's further stages on it (a leading ``$match`` in place,
a trailing inclusion ``$project`` compiled once). :func:`fast_event` is the faster way of a
document change whose kind passed the stream's leading ``$match`` stages in their fast form (see
:mod:`.change_filters`): the rest of the filter is decided on a view of the few fields it reads,
and the event is built only for entries that pass, with only the fields a trailing ``$project``
keeps. Which entries a stream sees, and its cursor, are :mod:`.change_streams`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.embedded import change_filters, compiled, engine
from runtime.embedded.changelog import ChangeEntry
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import id_key
from runtime.embedded.storage import Catalog

if TYPE_CHECKING:
    from runtime.embedded.change_streams import ChangeStreamCursor

#: Changes of view definitions (see :mod:`.views`) and the events they show as: only database and
#: cluster streams with showExpandedEvents see them, as on mongod 7.0.
VIEW_EVENTS = {"createView": "create", "modifyView": "modify", "dropView": "drop"}

ERROR_FATAL = ErrorCode.ChangeStreamFatalError
# Errors of MongoDB's NonResumableChangeStreamError category carry this label: drivers must not
# resume from them.
NON_RESUMABLE = "NonResumableChangeStreamError"
ERROR_NO_IMAGE = ErrorCode.NoMatchingDocument
_NO_IMAGE_NAME = {"codeName": "NoMatchingDocument"}


def _missing_image(kind: str, which: str, entry: ChangeEntry) -> CommandError:
    events = "update events" if kind == "post" else "update, delete and replace events"
    return CommandError(ERROR_NO_IMAGE, f"Change stream was configured to require a {kind}-image "
                        f"for all {events}, but the {kind}-image was not found for event: "
                        f"{{ns: {entry.db}.{entry.coll}, documentKey: {entry.document_key}}}"
                        f" ({which})", extra=dict(_NO_IMAGE_NAME))


def _wants_description(stream: ChangeStreamCursor) -> bool:
    """Whether the stream's events can show ``updateDescription``: not when its stages are
    ``$match`` stages that never mention it followed by an inclusion ``$project`` without it
    (the description is a diff of two documents: only computed when someone reads it)."""
    if stream.wants_description is None:
        stream.wants_description = True
        stages = stream.stages
        if stages and "$project" in stages[-1] and all(
                "$match" in stage and "updateDescription" not in repr(stage)
                for stage in stages[:-1]):
            try:
                tree = compiled.inclusion_tree(stages[-1]["$project"])
            except compiled.Unsupported:
                tree = None
            if tree is not None and "updateDescription" not in tree:
                stream.wants_description = False
    return stream.wants_description


_ABSENT: Any = object()
#: Event fields after ``documentKey`` (see :func:`build_event`'s ``keep``).
_RARE_FIELDS = frozenset({"updateDescription", "fullDocumentBeforeChange", "to",
                          "operationDescription", "stateBeforeChange", "lsid", "txnNumber"})
_UNRESOLVED: Any = object()


def _full_document(stream: ChangeStreamCursor, entry: ChangeEntry, catalog: Catalog) -> Any:
    """The event's ``fullDocument`` (``_ABSENT``: the event has none)."""
    op = entry.op
    if op == "insert" or op == "replace":
        return entry.post_image
    if op == "update":
        mode = stream.full_document
        if mode == "updateLookup":
            # The document's current version (or null once it is gone): a direct _id lookup.
            coll = catalog.get(entry.db, entry.coll or "")
            if coll is None:
                return None
            return coll.docs.get(id_key((entry.document_key or {}).get("_id")))
        if mode in ("whenAvailable", "required"):
            image = entry.post_image if entry.images_enabled else None
            if image is None and mode == "required":
                raise _missing_image("post", "fullDocument: required", entry)
            return image
    return _ABSENT


def build_event(stream: ChangeStreamCursor, entry: ChangeEntry, catalog: Catalog,
                full_document: Any = _UNRESOLVED,
                keep: frozenset[str] | None = None) -> dict[str, Any]:
    """The event of ``entry``; ``full_document`` is its already resolved ``fullDocument``
    (as :func:`_full_document` gives it), if it was. With ``keep``, only those of its
    top-level fields, for a projection that drops the others (``_id`` always)."""
    event: dict[str, Any] = {"_id": entry.token()}
    if keep is None or "operationType" in keep:
        event["operationType"] = VIEW_EVENTS.get(entry.op, entry.op)
    if keep is None or "clusterTime" in keep:
        event["clusterTime"] = entry.cluster_time
    if keep is None or "wallTime" in keep:
        event["wallTime"] = entry.wall_time
    if stream.expanded and entry.collection_uuid is not None and (
            keep is None or "collectionUUID" in keep):
        event["collectionUUID"] = entry.collection_uuid
    if keep is None or "fullDocument" in keep:
        full = _full_document(stream, entry, catalog) if full_document is _UNRESOLVED else \
            full_document
        if full is not _ABSENT:
            event["fullDocument"] = full
    if keep is None or "ns" in keep:
        ns: dict[str, Any] = {"db": entry.db}
        if entry.coll is not None:
            ns["coll"] = entry.coll
        event["ns"] = ns
    if entry.document_key is not None and (keep is None or "documentKey" in keep):
        event["documentKey"] = entry.document_key
    if keep is not None:
        if not keep.isdisjoint(_RARE_FIELDS):
            # Rarely projected: the complete event, projected.
            return {k: v for k, v in build_event(stream, entry, catalog, full_document).items()
                    if k in keep}
        return event
    if (entry.update_description is not None or entry.before is not None) and \
            _wants_description(stream):
        description = dict(entry.described() or {})
        paths = description.pop("disambiguatedPaths", None)
        if stream.expanded:
            description["disambiguatedPaths"] = paths or {}
        event["updateDescription"] = description
    if entry.op in ("update", "replace", "delete") and stream.before_change != "off":
        image = entry.pre_image if entry.images_enabled else None
        if image is None and stream.before_change == "required":
            raise _missing_image("pre", "fullDocumentBeforeChange: required", entry)
        event["fullDocumentBeforeChange"] = image
    if entry.to is not None:
        event["to"] = entry.to
    if stream.expanded and entry.operation_description is not None:
        event["operationDescription"] = entry.operation_description
    if stream.expanded and entry.state_before_change is not None:
        event["stateBeforeChange"] = entry.state_before_change
    if entry.lsid is not None:
        event["lsid"] = entry.lsid
        event["txnNumber"] = entry.txn_number
    return event


def apply_stages(stream: ChangeStreamCursor, event: dict[str, Any],
                 variables: dict[str, Any]) -> dict[str, Any] | None:
    """``event`` after the stream's stages, or None when they filter it out (an error when
    they modify its ``_id``, the resume token)."""
    if not stream.stages:
        return event
    stages = stream.stages
    # A leading $match (the usual pre-filter) is evaluated in place: most events stop here,
    # without the copy the general pipeline path makes.
    while stages and "$match" in stages[0] and isinstance(stages[0]["$match"], dict):
        if not engine.matches(stages[0]["$match"], event, variables):
            return None
        stages = stages[1:]
    return _apply_rest(stream, event, stages, variables)


def _apply_rest(stream: ChangeStreamCursor, event: dict[str, Any], stages: list[dict[str, Any]],
                variables: dict[str, Any]) -> dict[str, Any] | None:
    """The stages after the leading ``$match`` stages."""
    if not stages:
        return event
    token = event["_id"]
    if len(stages) == 1 and "$project" in stages[0]:
        projected = _fast_projection(stream, stages[0]["$project"], event)
        if projected is not None:
            return projected
    results = engine.run_pipeline([event], stages, _NoForeign(), variables)
    if not results:
        return None
    result = results[0]
    if result.get("_id") != token:
        raise CommandError(ERROR_FATAL, "Encountered an event whose _id field, which contains the "
                           "resume token, was modified by the pipeline. Modifying the _id field "
                           "of an event makes it impossible to resume the stream from that "
                           "point. Only transformations that retain the unmodified _id field are "
                           "allowed.", labels=[NON_RESUMABLE])
    return result


def _projection(stream: ChangeStreamCursor,
                spec: Any) -> change_filters.InclusionProjection | None:
    """The stream's trailing inclusion ``$project`` (compiled once), or None."""
    if stream.projection is None:
        try:
            stream.projection = change_filters.InclusionProjection(spec)
        except compiled.Unsupported:
            stream.projection = False
    return stream.projection or None


def _fast_projection(stream: ChangeStreamCursor, spec: Any,
                     event: dict[str, Any]) -> dict[str, Any] | None:
    """A trailing inclusion ``$project`` applied directly (compiled once per stream); None
    when the general pipeline must run it."""
    projection = _projection(stream, spec)
    if projection is None:
        return None
    try:
        return projection(event)
    except compiled.Unsupported:
        return None


class _NoForeign:
    def documents(self, collection: str) -> list[dict[str, Any]]:
        return []


def fast_event(stream: ChangeStreamCursor, verdict: change_filters.Verdict, entry: ChangeEntry,
               catalog: Catalog, variables: dict[str, Any]) -> dict[str, Any] | None:
    """The event of a document change after the stream's further stages, or None.

    ``verdict`` is what the stream's leading ``$match`` stages (in their fast form) decided for
    the entry's kind (see :mod:`.change_filters`); the event is built only if the entry passes
    them, and with only the fields a trailing inclusion ``$project`` keeps."""
    if verdict is False:
        return None
    if verdict is change_filters.GENERAL:
        return apply_stages(stream, build_event(stream, entry, catalog), variables)
    full = _UNRESOLVED
    if verdict is not True:
        view: dict[str, Any] = {}
        fields = verdict.fields
        if "fullDocument" in fields:
            full = _full_document(stream, entry, catalog)
            if verdict.on_full_document:
                view = full if full is not _ABSENT and full is not None else {}
            elif full is not _ABSENT:
                view["fullDocument"] = full
        if fields and not verdict.on_full_document:
            _view(stream, entry, fields, view)
        try:
            passed = verdict.matcher(view, variables)
        except compiled.Unsupported:  # a path crosses an array: the general matcher decides
            return apply_stages(stream, build_event(stream, entry, catalog, full), variables)
        if not passed:
            return None
    rest = stream.rest_stages
    if len(rest) == 1 and "$project" in rest[0]:
        projection = _projection(stream, rest[0]["$project"])
        if projection is not None:
            # Only the fields the projection keeps are resolved.
            try:
                return projection.finish(build_event(stream, entry, catalog, full,
                                                     projection.fields))
            except compiled.Unsupported:
                pass
    return _apply_rest(stream, build_event(stream, entry, catalog, full), rest, variables)


def _view(stream: ChangeStreamCursor, entry: ChangeEntry, fields: frozenset[str],
          view: dict[str, Any]) -> None:
    """The event fields in ``fields`` other than ``fullDocument``, as :func:`build_event` sets
    them (see :data:`.change_filters.DYNAMIC_FIELDS`)."""
    if "documentKey" in fields and entry.document_key is not None:
        view["documentKey"] = entry.document_key
    if "clusterTime" in fields:
        view["clusterTime"] = entry.cluster_time
    if "wallTime" in fields:
        view["wallTime"] = entry.wall_time
    if "collectionUUID" in fields and stream.expanded and entry.collection_uuid is not None:
        view["collectionUUID"] = entry.collection_uuid
    if "to" in fields and entry.to is not None:
        view["to"] = entry.to
    if entry.lsid is not None:
        if "lsid" in fields:
            view["lsid"] = entry.lsid
        if "txnNumber" in fields:
            view["txnNumber"] = entry.txn_number
