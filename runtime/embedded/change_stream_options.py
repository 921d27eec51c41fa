"""The options of a ``$changeStream`` stage and the stages allowed after it, checked with
mongod 7.0's errors before a stream opens (see :mod:`.change_streams`)."""

from __future__ import annotations

from typing import Any

from bson.timestamp import Timestamp

from runtime.embedded import engine
from runtime.embedded.errors import CommandError, ErrorCode

ALLOWED_STAGES = frozenset(
    {"$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot", "$replaceWith",
     "$redact"}
)
_FULL_DOCUMENT = ("default", "updateLookup", "whenAvailable", "required")
_BEFORE_CHANGE = ("off", "whenAvailable", "required")
ERROR_STAGE_NOT_ALLOWED = ErrorCode.IllegalOperation


def validate_options(spec: Any) -> dict[str, Any]:
    """The stage's options, checked, without those given as null: mongod's IDL parser treats
    them as absent (Node.js sends ``watch([], {resumeAfter: undefined})`` that way)."""
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           "the $changeStream stage specification must be an object")
    given: dict[str, Any] = {key: value for key, value in spec.items() if value is not None}
    spec = given
    known = {"fullDocument", "fullDocumentBeforeChange", "resumeAfter", "startAfter",
             "startAtOperationTime", "showExpandedEvents", "allChangesForCluster",
             "showMigrationEvents", "showSystemEvents", "allowToRunOnConfigDB"}
    for key in spec:
        if key not in known:
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field '$changeStream.{key}' is an unknown field.")
    if spec.get("fullDocument", "default") not in _FULL_DOCUMENT:
        raise CommandError(ErrorCode.BadValue,
                           f"unknown fullDocument mode {spec.get('fullDocument')!r}")
    if spec.get("fullDocumentBeforeChange", "off") not in _BEFORE_CHANGE:
        raise CommandError(ErrorCode.BadValue, "unknown fullDocumentBeforeChange mode "
                           f"{spec.get('fullDocumentBeforeChange')!r}")
    for flag in ("showExpandedEvents", "allChangesForCluster"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise CommandError(ErrorCode.TypeMismatch,
                               f"BSON field '$changeStream.{flag}' is the wrong type, "
                               "expected type 'bool'")
    if "startAtOperationTime" in spec and not isinstance(spec["startAtOperationTime"], Timestamp):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field '$changeStream.startAtOperationTime' is the wrong "
                           "type, expected type 'timestamp'")
    for option in ("resumeAfter", "startAfter"):
        if option in spec and not isinstance(spec[option], dict):
            raise CommandError(ErrorCode.TypeMismatch,
                               f"BSON field '$changeStream.{option}' is the wrong type, "
                               "expected type 'object'")
    starts = [k for k in ("resumeAfter", "startAfter", "startAtOperationTime") if k in spec]
    if len(starts) > 1:
        raise CommandError(ErrorCode.Location40674,
                           "Only one type of resume option is allowed, but multiple were "
                           "found.")
    return given


def validate_stages(stages: list[dict[str, Any]]) -> None:
    """The stages after ``$changeStream``: only those that transform one event each."""
    for stage in stages:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(ErrorCode.Location40323,
                               "A pipeline stage specification object must contain "
                               "exactly one field.")
        name = next(iter(stage))
        if name == "$changeStream":
            raise CommandError(ErrorCode.Location40602,
                               "$changeStream is only valid as the first stage in a "
                               "pipeline.")
        if name not in ALLOWED_STAGES:
            if not engine.known_stage(name) and name not in ("$group", "$sort", "$limit",
                                                               "$skip", "$lookup", "$out"):
                raise CommandError(ErrorCode.Location40324,
                                   f"Unrecognized pipeline stage name: '{name}'")
            raise CommandError(ERROR_STAGE_NOT_ALLOWED, f"Stage {name} is not permitted in a "
                               "$changeStream pipeline")
