"""Change streams: the ``$changeStream`` stage, its cursors and the events they deliver.

A stream is a position in the change log plus a scope (collection, database or cluster) and
options. ``getMore`` reads entries after the position, turns each one that is in scope into the
event document drivers expect, runs the user's further stages on it, and, when nothing is there,
waits on the log's append notification up to ``maxTimeMS``: no polling inside the server.

Document changes take a faster way when the stream's stages start with ``$match``: the filter
is decided per kind of entry and on the entry itself (see :mod:`.change_filters`), and the event
is built only for entries that pass, with only the fields a trailing ``$project`` keeps.

The stream's ``postBatchResumeToken`` is the token of the last event returned or, past entries
that produced no event, a high-water-mark token for the position; both compare like the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bson.int64 import Int64
from bson.timestamp import Timestamp

from runtime.embedded import change_filters, compiled, engine
from runtime.embedded.change_stream_options import validate_options, validate_stages
from runtime.embedded.changelog import (
    TOKEN_EVENT,
    TOKEN_HIGH_WATER_MARK,
    TOKEN_INVALIDATE,
    ChangeEntry,
    ChangeLog,
    ResumePosition,
    decode_token,
    encode_token,
)
from runtime.embedded.datastore import INTERNAL_DATABASES
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import id_key
from runtime.embedded.storage import Catalog

if TYPE_CHECKING:
    from runtime.embedded.cursors import CursorOwner

EXPANDED_EVENTS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})
#: Changes of view definitions (see :mod:`.views`) and the events they show as: only database and
#: cluster streams with showExpandedEvents see them, as on mongod 7.0.
VIEW_EVENTS = {"createView": "create", "modifyView": "modify", "dropView": "drop"}
DEFAULT_AWAIT_MS = 1000
#: The longest one getMore waits for events, whatever its ``maxTimeMS`` (which may be up to
#: 2^31-1 ms): it then answers with an empty batch and the driver simply asks again, so a
#: forgotten connection or a hostile value never holds a server task for days.
MAX_AWAIT_MS = 10_000

ERROR_CLUSTER_STREAM = ErrorCode.InvalidNamespace
ERROR_FATAL = ErrorCode.ChangeStreamFatalError
# Errors of MongoDB's NonResumableChangeStreamError category carry this label: drivers must not
# resume from them.
NON_RESUMABLE = "NonResumableChangeStreamError"
ERROR_NO_IMAGE = ErrorCode.NoMatchingDocument
_NO_IMAGE_NAME = {"codeName": "NoMatchingDocument"}


@dataclass
class ChangeStreamCursor:
    """An open change stream."""

    cursor_id: int
    ns: str
    db: str
    coll: str | None  # None: database or cluster stream
    cluster: bool
    position: int  # sequence number of the last log entry this stream has consumed
    position_token: dict[str, Any]
    full_document: str = "default"
    before_change: str = "off"
    expanded: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: the trailing ``$project`` compiled (None: not yet tried; False: needs the engine)
    projection: change_filters.InclusionProjection | Literal[False] | None = None
    #: whether events need ``updateDescription`` (None: not decided yet)
    wants_description: bool | None = None
    #: the leading ``$match`` stages in their fast form (None: not yet tried; False: general)
    entry_filter: change_filters.EntryFilter | Literal[False] | None = None
    #: the stages after the leading ``$match`` stages (set with ``entry_filter``)
    rest_stages: list[dict[str, Any]] = field(default_factory=list)
    #: per kind of document change (operation, database, collection): whether its entries
    #: are skipped (False), all pass the filter (True), or what decides (see :mod:`.change_filters`)
    verdicts: dict[tuple[str, str, str | None], change_filters.Verdict] = field(
        default_factory=dict)
    closed: bool = False
    # startAtOperationTime: entries committed before it are skipped even if they follow the
    # position (the time may lie in the future).
    start_time: Timestamp | None = None
    # An entry that invalidates this stream whose event was delivered but whose invalidate was
    # not yet (the batch was full, or the stream resumed right after it).
    pending_invalidate: ChangeEntry | None = None
    #: who opened it under ``--auth`` (set by the cursor registry; see :mod:`.cursors`)
    owner: CursorOwner | None = None


def _resume_point(position: ResumePosition, token: Any, log: ChangeLog) -> ChangeEntry | None:
    """Check that the log can resume after ``position``; returns its entry when still held."""
    if position.seq > log.last_seq:
        raise _token_not_found(token)
    log.require_available(position.seq)
    entry = log.get(position.seq)
    if position.kind == TOKEN_HIGH_WATER_MARK or entry is None:
        return entry
    if entry.cluster_time != position.cluster_time or entry.txn_index != position.txn_index:
        # A token of another log (e.g. of an earlier in-memory server): its position means
        # nothing here, and resuming from it would silently skip or repeat changes.
        raise _token_not_found(token)
    return entry


def _token_not_found(token: Any) -> CommandError:
    return CommandError(ERROR_FATAL, f"cannot resume stream; the resume token was not found. "
                        f"{token!r}", labels=[NON_RESUMABLE])


def open_stream(cursor_id: int, db: str, coll: str | None, pipeline: list[dict[str, Any]],
                log: ChangeLog) -> ChangeStreamCursor:
    """Validate a change-stream pipeline and create its cursor at the right log position."""
    spec = validate_options(pipeline[0]["$changeStream"])
    cluster = bool(spec.get("allChangesForCluster"))
    if cluster and (db != "admin" or coll is not None):
        raise CommandError(ERROR_CLUSTER_STREAM, "A $changeStream with 'allChangesForCluster:true' "
                           "may only be opened on the 'admin' database, and with no collection")
    if db == "admin" and not cluster:
        raise CommandError(ERROR_CLUSTER_STREAM, "$changeStream may not be opened on the internal "
                           "admin database")
    stages = pipeline[1:]
    validate_stages(stages)
    start_time: Timestamp | None = None
    resumed_entry: ChangeEntry | None = None
    if "resumeAfter" in spec or "startAfter" in spec:
        token: dict[str, Any] = spec.get("resumeAfter", spec.get("startAfter")) or {}
        position = decode_token(token)
        if "resumeAfter" in spec and position.kind == TOKEN_INVALIDATE:
            raise CommandError(ErrorCode.InvalidResumeToken,
                               "Attempting to resume a change stream using 'resumeAfter' is "
                               "not allowed from an invalidate notification.")
        entry = _resume_point(position, token, log)
        if position.kind == TOKEN_EVENT:
            resumed_entry = entry
        start, start_token = position.seq, dict(token)
    elif "startAtOperationTime" in spec:
        start_time = spec["startAtOperationTime"]
        assert isinstance(start_time, Timestamp)
        start = log.seq_at_time(start_time)
        # Sorts after every entry before the start time and before every entry from it on.
        start_token = encode_token(start_time, 0, start, TOKEN_HIGH_WATER_MARK)
    else:
        start, start_token = log.last_seq, log.high_water_mark()
    ns = f"{db}.{coll}" if coll is not None else f"{db}.$cmd.aggregate"
    stream = ChangeStreamCursor(
        cursor_id=cursor_id,
        ns=ns,
        db=db,
        coll=coll,
        cluster=cluster,
        position=start,
        position_token=start_token,
        full_document=spec.get("fullDocument", "default"),
        before_change=spec.get("fullDocumentBeforeChange", "off"),
        expanded=bool(spec.get("showExpandedEvents", False)),
        stages=stages,
        start_time=start_time,
    )
    if resumed_entry is not None and _in_scope(stream, resumed_entry) and _invalidates(
        stream, resumed_entry
    ):
        # Resuming right after a drop or rename of the watched namespace: the invalidate that
        # followed it is still owed.
        stream.pending_invalidate = resumed_entry
    return stream


def _namespace_of_target(entry: ChangeEntry) -> tuple[Any, Any]:
    to = entry.to or {}
    return to.get("db"), to.get("coll")


def _in_scope(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if entry.db in INTERNAL_DATABASES:
        return False
    if entry.op in VIEW_EVENTS:
        return stream.expanded and (stream.cluster or stream.coll is None) and (
            stream.cluster or entry.db == stream.db)
    if entry.op in EXPANDED_EVENTS and not stream.expanded:
        return False
    if stream.cluster:
        return True
    renamed_to = _namespace_of_target(entry) if entry.op == "rename" else (None, None)
    if stream.coll is None:
        return entry.db == stream.db or renamed_to[0] == stream.db
    if entry.op == "dropDatabase":
        return False
    return (entry.db, entry.coll) == (stream.db, stream.coll) or renamed_to == (stream.db,
                                                                                 stream.coll)


def _invalidates(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if stream.cluster:
        return False
    if stream.coll is None:
        return entry.op == "dropDatabase" and entry.db == stream.db
    if entry.op == "drop":
        return (entry.db, entry.coll) == (stream.db, stream.coll)
    if entry.op == "rename":
        # Renaming the watched collection away, or another collection onto its name.
        return (entry.db, entry.coll) == (stream.db, stream.coll) or _namespace_of_target(
            entry) == (stream.db, stream.coll)
    return False


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
#: Event fields after ``documentKey`` (see :func:`_event`'s ``keep``).
_RARE_FIELDS = frozenset({"updateDescription", "fullDocumentBeforeChange", "to",
                          "operationDescription", "stateBeforeChange", "lsid", "txnNumber"})
_UNRESOLVED: Any = object()
#: The operations of document changes: whether a stream sees them depends only on their
#: namespace, and they never invalidate a stream.
DOCUMENT_OPS = frozenset({"insert", "update", "replace", "delete"})


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


def _event(stream: ChangeStreamCursor, entry: ChangeEntry, catalog: Catalog,
           full_document: Any = _UNRESOLVED, keep: frozenset[str] | None = None) -> dict[str, Any]:
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
            return {k: v for k, v in _event(stream, entry, catalog, full_document).items()
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


def _apply_stages(stream: ChangeStreamCursor, event: dict[str, Any],
                  variables: dict[str, Any]) -> dict[str, Any] | None:
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


def _before_start(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    start = stream.start_time
    return start is not None and (entry.cluster_time.time, entry.cluster_time.inc) < (
        start.time, start.inc)


def _invalidate(stream: ChangeStreamCursor, entry: ChangeEntry,
                variables: dict[str, Any]) -> dict[str, Any] | None:
    """Close the stream with the invalidate that follows ``entry``; the event unless filtered."""
    event: dict[str, Any] = {
        "_id": entry.token(TOKEN_INVALIDATE),
        "operationType": "invalidate",
        "clusterTime": entry.cluster_time,
        "wallTime": entry.wall_time,
    }
    result = _apply_stages(stream, event, variables)
    stream.position_token = entry.token(TOKEN_INVALIDATE)
    stream.pending_invalidate = None
    stream.closed = True
    return result


def _entry_filter(stream: ChangeStreamCursor) -> change_filters.EntryFilter | None:
    """The stream's leading ``$match`` stages in their fast form, or None (general path:
    also for required images, whose absence is an error even for events filtered out)."""
    if stream.entry_filter is None:
        stream.entry_filter = False
        if stream.full_document != "required" and stream.before_change != "required":
            leading = 0
            for stage in stream.stages:
                if "$match" not in stage or not isinstance(stage["$match"], dict):
                    break
                leading += 1
            found = change_filters.entry_filter([s["$match"] for s in stream.stages[:leading]])
            if found is not None:
                stream.entry_filter = found
                stream.rest_stages = stream.stages[leading:]
    return stream.entry_filter or None


def _verdict(stream: ChangeStreamCursor, fast: change_filters.EntryFilter,
             entry: ChangeEntry) -> change_filters.Verdict:
    """Whether a document change of this kind is outside the stream or filtered out (False),
    passes the leading ``$match`` stages (True), or what decides (remembered per kind)."""
    kind = (entry.op, entry.db, entry.coll)
    verdict = stream.verdicts.get(kind)
    if verdict is None:
        verdict = fast.decide(entry.op, entry.db, entry.coll) if _in_scope(stream, entry) \
            else False
        if len(stream.verdicts) >= change_filters.MAX_KINDS:
            stream.verdicts.clear()
        stream.verdicts[kind] = verdict
    return verdict


def _fast_event(stream: ChangeStreamCursor, fast: change_filters.EntryFilter, entry: ChangeEntry,
                catalog: Catalog, variables: dict[str, Any]) -> dict[str, Any] | None:
    """The event of a document change, or None; the event is built only if the entry passes
    the stream's leading ``$match`` stages."""
    verdict = _verdict(stream, fast, entry)
    if verdict is False:
        return None
    if verdict is change_filters.GENERAL:
        return _apply_stages(stream, _event(stream, entry, catalog), variables)
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
            return _apply_stages(stream, _event(stream, entry, catalog, full), variables)
        if not passed:
            return None
    rest = stream.rest_stages
    if len(rest) == 1 and "$project" in rest[0]:
        projection = _projection(stream, rest[0]["$project"])
        if projection is not None:
            # Only the fields the projection keeps are resolved.
            try:
                return projection.finish(_event(stream, entry, catalog, full,
                                                projection.fields))
            except compiled.Unsupported:
                pass
    return _apply_rest(stream, _event(stream, entry, catalog, full), rest, variables)


def _view(stream: ChangeStreamCursor, entry: ChangeEntry, fields: frozenset[str],
          view: dict[str, Any]) -> None:
    """The event fields in ``fields`` other than ``fullDocument``, as :func:`_event` sets
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


SCAN_CHUNK = 5_000
"""Log entries one read of a change stream looks at before it yields to other clients."""


def collect(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
            batch_size: int | None, variables: dict[str, Any]) -> list[dict[str, Any]]:
    """Events available now after the stream's position (advancing it).

    ``batch_size`` None means no limit; 0 gives an empty batch (an aggregate's first batch).
    An error (a missing required image, a modified ``_id``) leaves the position before the
    entry that caused it.
    """
    batch: list[dict[str, Any]] = []
    limit = None if batch_size is None else max(0, batch_size)
    if stream.closed:
        return batch
    if stream.pending_invalidate is None:
        log.require_available(stream.position)
        fast = _entry_filter(stream)
        timed = stream.start_time is not None
        # The entry after which the stream's token is a high-water mark, when no event
        # followed it: the token is encoded once, when the read stops (even by an error).
        passed: ChangeEntry | None = None
        try:
            for scanned, entry in enumerate(log.after(stream.position)):
                if limit is not None and len(batch) >= limit:
                    break
                if scanned >= SCAN_CHUNK:
                    # A long backlog that the stream filters out is read in chunks, so other
                    # clients are served in between (the getMore goes on after yielding).
                    break
                before_start = timed and _before_start(stream, entry)
                if fast is not None and entry.op in DOCUMENT_OPS:
                    # Never invalidates; in or out of scope by its namespace (see _verdict).
                    event = None if before_start else _fast_event(stream, fast, entry, catalog,
                                                                  variables)
                    stream.position = entry.seq
                    if event is not None:
                        batch.append(event)
                        stream.position_token = event["_id"]
                        passed = None
                    elif not before_start:
                        passed = entry
                    continue
                event = None
                in_scope = _in_scope(stream, entry) and not before_start
                if in_scope:
                    event = _apply_stages(stream, _event(stream, entry, catalog), variables)
                stream.position = entry.seq
                if event is not None:
                    batch.append(event)
                    stream.position_token = event["_id"]
                    passed = None
                elif not before_start:
                    passed = entry
                if in_scope and _invalidates(stream, entry):
                    stream.pending_invalidate = entry
                    break
        finally:
            if passed is not None:
                stream.position_token = encode_token(passed.cluster_time, 0xFFFFFFFF,
                                                     passed.seq, TOKEN_HIGH_WATER_MARK)
    pending = stream.pending_invalidate
    if pending is not None:
        if limit is None or len(batch) < limit:
            invalidate = _invalidate(stream, pending, variables)
            if invalidate is not None:
                batch.append(invalidate)
        return batch
    if not batch and stream.position >= log.last_seq and not _before_start_of_log(stream, log):
        stream.position_token = log.high_water_mark()
    return batch


def _before_start_of_log(stream: ChangeStreamCursor, log: ChangeLog) -> bool:
    """Whether a (future) ``startAtOperationTime`` lies beyond everything in the log."""
    start = stream.start_time
    return start is not None and (log.last_time.time, log.last_time.inc) < (start.time,
                                                                             start.inc)


async def next_batch(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
                     batch_size: int | None, max_time_ms: int | None,
                     variables: dict[str, Any]) -> list[dict[str, Any]]:
    """A getMore: events now, or wait for a commit up to ``maxTimeMS`` (validated by the
    dispatcher; default 1 s, at most :data:`MAX_AWAIT_MS`)."""
    if not batch_size:
        batch_size = None  # a getMore's batchSize 0 (or none) means "no limit"
    wait_ms = DEFAULT_AWAIT_MS if max_time_ms is None else max_time_ms
    deadline = time.monotonic() + min(max(0, wait_ms), MAX_AWAIT_MS) / 1000
    while True:
        batch = collect(stream, log, catalog, batch_size, variables)
        remaining = deadline - time.monotonic()
        if batch or stream.closed or remaining <= 0:
            return batch
        if stream.position < log.last_seq and stream.pending_invalidate is None:
            await asyncio.sleep(0)  # more backlog to read: let other clients in first
            continue
        await log.wait(remaining)


def cursor_reply(stream: ChangeStreamCursor, batch: list[dict[str, Any]], first: bool,
                 cursor_id: int) -> dict[str, Any]:
    """The aggregate/getMore reply of a change stream, always with ``postBatchResumeToken``."""
    return {
        "cursor": {
            "firstBatch" if first else "nextBatch": batch,
            "postBatchResumeToken": stream.position_token,
            "id": Int64(0 if stream.closed else cursor_id),
            "ns": stream.ns,
        },
        "ok": 1.0,
    }
