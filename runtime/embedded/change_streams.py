"""Change streams: the ``$changeStream`` stage, its cursors and the events they deliver.

A stream is a position in the change log plus a scope (collection, database or cluster) and
options. ``getMore`` reads entries after the position, turns each one that is in scope into the
event document drivers expect, runs the user's further stages on it, and, when nothing is there,
waits on the log's append notification up to ``maxTimeMS``: no polling inside the server.

The stream's ``postBatchResumeToken`` is the token of the last event returned or, past entries
that produced no event, a high-water-mark token for the position; both compare like the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bson.int64 import Int64
from bson.timestamp import Timestamp

from runtime.embedded import compiled, engine
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
    projection: Callable[[dict[str, Any]], dict[str, Any]] | Literal[False] | None = None
    #: whether events need ``updateDescription`` (None: not decided yet)
    wants_description: bool | None = None
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


def _event(stream: ChangeStreamCursor, entry: ChangeEntry, catalog: Catalog) -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": entry.token(),
        "operationType": VIEW_EVENTS.get(entry.op, entry.op),
        "clusterTime": entry.cluster_time,
        "wallTime": entry.wall_time,
    }
    if stream.expanded and entry.collection_uuid is not None:
        event["collectionUUID"] = entry.collection_uuid
    ns: dict[str, Any] = {"db": entry.db}
    if entry.coll is not None:
        ns["coll"] = entry.coll
    if entry.op in ("insert", "replace"):
        event["fullDocument"] = entry.post_image
    elif entry.op == "update":
        if stream.full_document == "updateLookup":
            coll = catalog.get(entry.db, entry.coll or "")
            key = id_key((entry.document_key or {}).get("_id"))
            event["fullDocument"] = coll.docs.get(key) if coll is not None else None
        elif stream.full_document in ("whenAvailable", "required"):
            image = entry.post_image if entry.images_enabled else None
            if image is None and stream.full_document == "required":
                raise _missing_image("post", "fullDocument: required", entry)
            event["fullDocument"] = image
    event["ns"] = ns
    if entry.document_key is not None:
        event["documentKey"] = entry.document_key
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
    token = event["_id"]
    stages = stream.stages
    # A leading $match (the usual pre-filter) is evaluated in place: most events stop here,
    # without the copy the general pipeline path makes.
    while stages and "$match" in stages[0] and isinstance(stages[0]["$match"], dict):
        if not engine.matches(stages[0]["$match"], event, variables):
            return None
        stages = stages[1:]
    if not stages:
        return event
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


def _fast_projection(stream: ChangeStreamCursor, spec: Any,
                     event: dict[str, Any]) -> dict[str, Any] | None:
    """A trailing inclusion ``$project`` applied directly (compiled once per stream); None
    when the general pipeline must run it."""
    if stream.projection is None:
        try:
            stream.projection = compiled.inclusion_projection(spec)
        except compiled.Unsupported:
            stream.projection = False
    if stream.projection is False:
        return None
    try:
        return stream.projection(event)
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
        for scanned, entry in enumerate(log.after(stream.position)):
            if limit is not None and len(batch) >= limit:
                break
            if scanned >= SCAN_CHUNK:
                # A long backlog that the stream filters out is read in chunks, so other
                # clients are served in between (the getMore goes on after yielding).
                break
            event = None
            in_scope = _in_scope(stream, entry) and not _before_start(stream, entry)
            if in_scope:
                event = _apply_stages(stream, _event(stream, entry, catalog), variables)
            stream.position = entry.seq
            if event is not None:
                batch.append(event)
                stream.position_token = event["_id"]
            elif not _before_start(stream, entry):
                stream.position_token = encode_token(entry.cluster_time, 0xFFFFFFFF, entry.seq,
                                                     TOKEN_HIGH_WATER_MARK)
            if in_scope and _invalidates(stream, entry):
                stream.pending_invalidate = entry
                break
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
