"""Change streams: the ``$changeStream`` stage, its cursors and the events they deliver.

A stream is a position in the change log plus a scope (collection, database or cluster) and
options. ``getMore`` reads entries after the position, turns each one that is in scope into the
event document drivers expect, runs the user's further stages on it, and, when nothing is there,
waits on the log's append notification up to ``maxTimeMS``: no polling inside the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bson.int64 import Int64

from runtime.embedded import engine
from runtime.embedded.changelog import (
    TOKEN_HIGH_WATER_MARK,
    TOKEN_INVALIDATE,
    ChangeEntry,
    ChangeLog,
    decode_token,
    encode_token,
)
from runtime.embedded.datastore import INTERNAL_DATABASES
from runtime.embedded.errors import CommandError
from runtime.embedded.ordering import id_key
from runtime.embedded.storage import Catalog

ALLOWED_STAGES = frozenset(
    {"$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot", "$replaceWith",
     "$redact"}
)
EXPANDED_EVENTS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})
DEFAULT_AWAIT_MS = 1000
_FULL_DOCUMENT = ("default", "updateLookup", "whenAvailable", "required")
_BEFORE_CHANGE = ("off", "whenAvailable", "required")


@dataclass
class ChangeStreamCursor:
    """An open change stream."""

    cursor_id: int
    ns: str
    db: str
    coll: str | None  # None: database or cluster stream
    cluster: bool
    position: int
    position_token: dict[str, Any]
    full_document: str = "default"
    before_change: str = "off"
    expanded: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


def _validate_options(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise CommandError(14, "the $changeStream stage specification must be an object")
    known = {"fullDocument", "fullDocumentBeforeChange", "resumeAfter", "startAfter",
             "startAtOperationTime", "showExpandedEvents", "allChangesForCluster",
             "showMigrationEvents", "showSystemEvents", "allowToRunOnConfigDB"}
    for key in spec:
        if key not in known:
            raise CommandError(40415, f"BSON field '$changeStream.{key}' is an unknown field.")
    if spec.get("fullDocument", "default") not in _FULL_DOCUMENT:
        raise CommandError(2, f"unknown fullDocument mode {spec.get('fullDocument')!r}")
    if spec.get("fullDocumentBeforeChange", "off") not in _BEFORE_CHANGE:
        raise CommandError(2, "unknown fullDocumentBeforeChange mode "
                           f"{spec.get('fullDocumentBeforeChange')!r}")
    starts = [k for k in ("resumeAfter", "startAfter", "startAtOperationTime") if k in spec]
    if len(starts) > 1:
        raise CommandError(40674, "Only one type of resume option is allowed, but multiple were "
                           "found.")
    return spec


def open_stream(cursor_id: int, db: str, coll: str | None, pipeline: list[dict[str, Any]],
                log: ChangeLog) -> ChangeStreamCursor:
    """Validate a change-stream pipeline and create its cursor at the right log position."""
    spec = _validate_options(pipeline[0]["$changeStream"])
    cluster = bool(spec.get("allChangesForCluster"))
    if cluster and (db != "admin" or coll is not None):
        raise CommandError(ERROR_CLUSTER_STREAM, "A $changeStream with 'allChangesForCluster:true' "
                           "may only be opened on the 'admin' database, and with no collection")
    if db == "admin" and not cluster:
        raise CommandError(ERROR_CLUSTER_STREAM, "$changeStream may not be opened on the internal "
                           "admin database")
    stages = pipeline[1:]
    for stage in stages:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain "
                               "exactly one field.")
        name = next(iter(stage))
        if name == "$changeStream":
            raise CommandError(40602, "$changeStream is only valid as the first stage in a "
                               "pipeline.")
        if name not in ALLOWED_STAGES:
            if not engine.known_stage(name) and name not in ("$group", "$sort", "$limit",
                                                               "$skip", "$lookup", "$out"):
                raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
            raise CommandError(ERROR_STAGE_NOT_ALLOWED, f"Stage {name} is not permitted in a "
                               "$changeStream pipeline")
    if "resumeAfter" in spec or "startAfter" in spec:
        token = spec.get("resumeAfter", spec.get("startAfter"))
        position = decode_token(token)
        if "resumeAfter" in spec and position.kind == TOKEN_INVALIDATE:
            raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' is "
                               "not allowed from an invalidate notification.")
        log.require_available(position.seq)
        start, start_token = position.seq, token
    elif "startAtOperationTime" in spec:
        start = log.seq_at_time(spec["startAtOperationTime"])
        start_token = log.high_water_mark()
    else:
        start, start_token = log.last_seq, log.high_water_mark()
    if coll is not None:
        ns = f"{db}.{coll}"
    else:
        ns = f"{db}.$cmd.aggregate"
    return ChangeStreamCursor(
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
    )


ERROR_CLUSTER_STREAM = 73
ERROR_STAGE_NOT_ALLOWED = 20


def _in_scope(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if entry.db in INTERNAL_DATABASES:
        return False
    if entry.op in EXPANDED_EVENTS and not stream.expanded:
        return False
    if stream.cluster:
        return True
    if entry.db != stream.db:
        return False
    if stream.coll is None:
        return True
    if entry.op == "dropDatabase":
        return False
    return entry.coll == stream.coll


def _invalidates(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if stream.cluster:
        return False
    if stream.coll is None:
        return entry.op == "dropDatabase" and entry.db == stream.db
    return entry.op in ("drop", "rename") and entry.db == stream.db and entry.coll == stream.coll


def _event(stream: ChangeStreamCursor, entry: ChangeEntry, catalog: Catalog) -> dict[str, Any]:
    event: dict[str, Any] = {
        "_id": entry.token(),
        "operationType": entry.op,
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
                raise CommandError(ERROR_NO_IMAGE, "Change stream was configured to require a "
                                   "post-image for all update events, but no post-image was "
                                   "available")
            event["fullDocument"] = image
    event["ns"] = ns
    if entry.document_key is not None:
        event["documentKey"] = entry.document_key
    if entry.update_description is not None:
        description = dict(entry.update_description)
        if stream.expanded:
            description["disambiguatedPaths"] = {}
        event["updateDescription"] = description
    if entry.op in ("update", "replace", "delete") and stream.before_change != "off":
        image = entry.pre_image if entry.images_enabled else None
        if image is None and stream.before_change == "required":
            raise CommandError(ERROR_NO_IMAGE, "Change stream was configured to require a "
                               "pre-image for all update, delete and replace events, but no "
                               "pre-image was available")
        event["fullDocumentBeforeChange"] = image
    if entry.to is not None:
        event["to"] = entry.to
    if stream.expanded and entry.operation_description is not None:
        event["operationDescription"] = entry.operation_description
    if entry.lsid is not None:
        event["lsid"] = entry.lsid
        event["txnNumber"] = entry.txn_number
    return event


ERROR_NO_IMAGE = 280


def _apply_stages(stream: ChangeStreamCursor, event: dict[str, Any],
                  variables: dict[str, Any], catalog: Catalog) -> dict[str, Any] | None:
    if not stream.stages:
        return event
    token = event["_id"]
    results = engine.run_pipeline([event], stream.stages, _NoForeign(), variables)
    if not results:
        return None
    result = results[0]
    if result.get("_id") != token:
        raise CommandError(280, "Encountered an event whose _id field, which contains the resume "
                           "token, was modified by the pipeline. Modifying the _id field of an "
                           "event makes it impossible to resume the stream from that point. "
                           "Only transformations that retain the unmodified _id field are "
                           "allowed.")
    return result


class _NoForeign:
    def documents(self, collection: str) -> list[dict[str, Any]]:
        return []


def collect(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
            batch_size: int | None, variables: dict[str, Any]) -> list[dict[str, Any]]:
    """Events available now after the stream's position (advancing it)."""
    log.require_available(stream.position)
    batch: list[dict[str, Any]] = []
    limit = batch_size if batch_size and batch_size > 0 else None
    for entry in log.after(stream.position):
        if limit is not None and len(batch) >= limit:
            break
        stream.position = entry.seq
        stream.position_token = encode_token(entry.cluster_time, 0xFFFFFFFF, entry.seq,
                                             TOKEN_HIGH_WATER_MARK)
        if not _in_scope(stream, entry):
            continue
        event = _apply_stages(stream, _event(stream, entry, catalog), variables, catalog)
        if event is not None:
            batch.append(event)
            stream.position_token = event["_id"]
        if _invalidates(stream, entry):
            invalidate = {
                "_id": entry.token(TOKEN_INVALIDATE),
                "operationType": "invalidate",
                "clusterTime": entry.cluster_time,
                "wallTime": entry.wall_time,
            }
            batch.append(invalidate)
            stream.position_token = invalidate["_id"]
            stream.closed = True
            break
    if not batch and stream.position >= log.last_seq:
        stream.position_token = log.high_water_mark()
    return batch


async def next_batch(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
                     batch_size: int | None, max_time_ms: Any,
                     variables: dict[str, Any]) -> list[dict[str, Any]]:
    """A getMore: events now, or wait for a commit up to ``maxTimeMS`` (default 1 s)."""
    wait_ms = DEFAULT_AWAIT_MS if not isinstance(max_time_ms, int | float) else max_time_ms
    deadline = time.monotonic() + max(0, wait_ms) / 1000
    while True:
        batch = collect(stream, log, catalog, batch_size, variables)
        remaining = deadline - time.monotonic()
        if batch or stream.closed or remaining <= 0:
            return batch
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
