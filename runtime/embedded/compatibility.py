"""The compatibility matrix: MongoDB 7.0's commands and operators, and their state here.

The reference lists below name what MongoDB 7.0 offers (commands a client or tool may send,
query, projection and update operators, aggregation stages, expressions and accumulators).
The state of each is *computed* from the server itself: a command is supported when the
command table (:data:`runtime.embedded.commands.COMMANDS`) has it; an operator, stage or
expression when the engine registers it (``engine.SUPPORTED_*``). :data:`NOTES` marks what
is implemented only in part, or refused on purpose, with the reason. ``python -m
runtime.embedded.compatibility --write docs/embedded-server.md`` regenerates the matrix
between its markers in that page; a test fails when the page is out of date.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

BEGIN_MARKER = "<!-- compatibility matrix: generated, do not edit by hand -->"
END_MARKER = "<!-- end of compatibility matrix -->"


class State(StrEnum):
    """How far the embedded server supports one name."""

    SUPPORTED = "supported"
    PARTIAL = "partial"
    REFUSED = "refused (clear error)"


COMMANDS_70: dict[str, tuple[str, ...]] = {
    "CRUD and queries": (
        "find", "getMore", "killCursors", "insert", "update", "delete", "findAndModify",
        "aggregate", "count", "distinct", "mapReduce", "explain",
    ),
    "Sessions and transactions": (
        "startSession", "endSessions", "refreshSessions", "killSessions", "killAllSessions",
        "killAllSessionsByPattern", "commitTransaction", "abortTransaction",
    ),
    "Catalog and indexes": (
        "create", "drop", "dropDatabase", "collMod", "renameCollection", "listCollections",
        "listDatabases", "listIndexes", "createIndexes", "dropIndexes", "reIndex", "compact",
        "convertToCapped", "cloneCollectionAsCapped", "validate", "validateDBMetadata",
        "createSearchIndexes", "dropSearchIndex", "updateSearchIndex",
    ),
    "Handshake, diagnostics and administration": (
        "hello", "isMaster", "ping", "buildInfo", "serverStatus", "hostInfo", "getCmdLineOpts",
        "getLog", "getParameter", "setParameter", "listCommands", "connectionStatus",
        "whatsmyuri", "dbStats", "collStats", "dataSize", "dbHash", "currentOp", "killOp",
        "top", "profile", "lockInfo", "fsync", "fsyncUnlock", "shutdown", "logRotate",
        "getDefaultRWConcern", "setDefaultRWConcern", "getClusterParameter",
        "setClusterParameter", "setFeatureCompatibilityVersion", "connPoolStats",
        "dropConnections", "planCacheClear", "planCacheClearFilters", "planCacheListFilters",
        "planCacheSetFilter", "setIndexCommitQuorum", "setUserWriteBlockMode",
        "rotateCertificates", "filemd5",
    ),
    "Replication": (
        "replSetGetStatus", "replSetGetConfig", "replSetInitiate", "replSetReconfig",
        "replSetStepDown", "replSetFreeze", "replSetMaintenance", "replSetSyncFrom",
        "replSetResizeOplog", "replSetAbortPrimaryCatchUp", "applyOps",
    ),
    "Authentication, users and roles": (
        "saslStart", "saslContinue", "authenticate", "logout", "createUser", "updateUser",
        "dropUser", "dropAllUsersFromDatabase", "usersInfo", "grantRolesToUser",
        "revokeRolesFromUser", "createRole", "updateRole", "dropRole",
        "dropAllRolesFromDatabase", "rolesInfo", "grantPrivilegesToRole",
        "revokePrivilegesFromRole", "grantRolesToRole", "revokeRolesFromRole",
        "invalidateUserCache",
    ),
    "Testing (with --enable-test-commands)": ("configureFailPoint",),
}

QUERY_OPERATORS_70 = (
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$and", "$or", "$nor", "$not",
    "$exists", "$type", "$expr", "$jsonSchema", "$mod", "$regex", "$options", "$text",
    "$where", "$all", "$elemMatch", "$size", "$bitsAllClear", "$bitsAllSet", "$bitsAnyClear",
    "$bitsAnySet", "$comment", "$sampleRate", "$geoIntersects", "$geoWithin", "$near",
    "$nearSphere",
)

PROJECTION_OPERATORS_70 = ("$", "$elemMatch", "$slice", "$meta")

UPDATE_OPERATORS_70 = (
    "$currentDate", "$inc", "$min", "$max", "$mul", "$rename", "$set", "$setOnInsert",
    "$unset", "$addToSet", "$pop", "$pull", "$push", "$pullAll", "$bit",
)

STAGES_70 = (
    "$addFields", "$bucket", "$bucketAuto", "$changeStream", "$changeStreamSplitLargeEvent",
    "$collStats", "$count", "$currentOp", "$densify", "$documents", "$facet", "$fill",
    "$geoNear", "$graphLookup", "$group", "$indexStats", "$limit", "$listLocalSessions",
    "$listSampledQueries", "$listSearchIndexes", "$listSessions", "$lookup", "$match",
    "$merge", "$out", "$planCacheStats", "$project", "$redact", "$replaceRoot",
    "$replaceWith", "$sample", "$search", "$searchMeta", "$set", "$setWindowFields", "$skip",
    "$sort", "$sortByCount", "$unionWith", "$unset", "$unwind", "$vectorSearch",
)

EXPRESSIONS_70 = (
    # arithmetic
    "$abs", "$add", "$ceil", "$divide", "$exp", "$floor", "$ln", "$log", "$log10", "$mod",
    "$multiply", "$pow", "$round", "$sqrt", "$subtract", "$trunc",
    # array
    "$arrayElemAt", "$arrayToObject", "$concatArrays", "$filter", "$first", "$firstN", "$in",
    "$indexOfArray", "$isArray", "$last", "$lastN", "$map", "$maxN", "$minN",
    "$objectToArray", "$range", "$reduce", "$reverseArray", "$size", "$slice", "$sortArray",
    "$zip",
    # bitwise, boolean, comparison, conditional
    "$bitAnd", "$bitNot", "$bitOr", "$bitXor", "$and", "$not", "$or", "$cmp", "$eq", "$gt",
    "$gte", "$lt", "$lte", "$ne", "$cond", "$ifNull", "$switch",
    # custom, data size
    "$accumulator", "$function", "$binarySize", "$bsonSize",
    # date
    "$dateAdd", "$dateDiff", "$dateFromParts", "$dateFromString", "$dateSubtract",
    "$dateToParts", "$dateToString", "$dateTrunc", "$dayOfMonth", "$dayOfWeek", "$dayOfYear",
    "$hour", "$isoDayOfWeek", "$isoWeek", "$isoWeekYear", "$millisecond", "$minute",
    "$month", "$second", "$toDate", "$week", "$year",
    # literal, miscellaneous, object, set
    "$literal", "$getField", "$rand", "$toHashedIndexKey", "$mergeObjects",
    "$setField", "$unsetField", "$allElementsTrue", "$anyElementTrue", "$setDifference",
    "$setEquals", "$setIntersection", "$setIsSubset", "$setUnion",
    # string
    "$concat", "$indexOfBytes", "$indexOfCP", "$ltrim", "$regexFind", "$regexFindAll",
    "$regexMatch", "$replaceOne", "$replaceAll", "$rtrim", "$split", "$strLenBytes",
    "$strLenCP", "$strcasecmp", "$substr", "$substrBytes", "$substrCP", "$toLower",
    "$toString", "$trim", "$toUpper", "$meta",
    # timestamp, trigonometry
    "$tsIncrement", "$tsSecond", "$sin", "$cos", "$tan", "$asin", "$acos", "$atan", "$atan2",
    "$asinh", "$acosh", "$atanh", "$sinh", "$cosh", "$tanh", "$degreesToRadians",
    "$radiansToDegrees",
    # type, variables
    "$convert", "$isNumber", "$toBool", "$toDecimal", "$toDouble", "$toInt", "$toLong",
    "$toObjectId", "$type", "$let",
)

ACCUMULATORS_70 = (
    "$accumulator", "$addToSet", "$avg", "$bottom", "$bottomN", "$count", "$first", "$firstN",
    "$last", "$lastN", "$max", "$maxN", "$median", "$mergeObjects", "$min", "$minN",
    "$percentile", "$push", "$stdDevPop", "$stdDevSamp", "$sum", "$top", "$topN",
)

#: What is implemented only in part, or refused on purpose, and why. Keys are
#: ``"<kind>:<name>"`` with kind one of command, query, projection, update, stage,
#: expression, accumulator.
NOTES: dict[str, tuple[State, str]] = {
    "command:mapReduce": (State.REFUSED, "deprecated since 5.0; use aggregate"),
    "command:explain": (State.PARTIAL, "queryPlanner and executionStats; no rejected plans"),
    "command:compact": (State.REFUSED, "nothing to compact in memory"),
    "command:currentOp": (State.PARTIAL, "in-progress commands of this process"),
    "command:createSearchIndexes": (State.REFUSED, "Atlas Search only"),
    "command:dropSearchIndex": (State.REFUSED, "Atlas Search only"),
    "command:updateSearchIndex": (State.REFUSED, "Atlas Search only"),
    "command:replSetGetStatus": (State.PARTIAL, "a one-member replica set"),
    "command:applyOps": (State.REFUSED, "internal replication command"),
    "query:$text": (State.REFUSED, "no text indexes"),
    "query:$where": (State.REFUSED, "server-side JavaScript is not run"),
    "query:$geoIntersects": (State.REFUSED, "no geospatial indexes"),
    "query:$geoWithin": (State.REFUSED, "no geospatial indexes"),
    "query:$near": (State.REFUSED, "no geospatial indexes"),
    "query:$nearSphere": (State.REFUSED, "no geospatial indexes"),
    "expression:$function": (State.REFUSED, "server-side JavaScript is not run"),
    "expression:$accumulator": (State.REFUSED, "server-side JavaScript is not run"),
    "accumulator:$accumulator": (State.REFUSED, "server-side JavaScript is not run"),
    "stage:$search": (State.REFUSED, "Atlas Search only"),
    "stage:$searchMeta": (State.REFUSED, "Atlas Search only"),
    "stage:$vectorSearch": (State.REFUSED, "Atlas Vector Search only"),
    "stage:$listSearchIndexes": (State.REFUSED, "Atlas Search only"),
    "stage:$geoNear": (State.REFUSED, "no geospatial indexes"),
    "stage:$changeStream": (State.PARTIAL, "see 'Change log and change streams'"),
    "stage:$collStats": (State.PARTIAL, "latency and query counters are zero"),
    "stage:$indexStats": (State.PARTIAL, "accesses are not counted (0)"),
    "command:fsync": (State.PARTIAL, "no `lock: true` (no write lock to hold)"),
    "command:profile": (State.PARTIAL, "level 0 only: there is no system.profile"),
    "command:killOp": (State.PARTIAL, "acknowledged; commands end on their own or by maxTimeMS"),
    "command:top": (State.PARTIAL, "no per-namespace counters"),
    "command:setFeatureCompatibilityVersion": (State.PARTIAL, "7.0 only"),
    "command:getClusterParameter": (State.PARTIAL, "changeStreamOptions only"),
    "command:reIndex": (State.REFUSED, "indexes are maintained in memory; nothing to rebuild"),
    "command:convertToCapped": (State.REFUSED, "capped collections are not enforced"),
    "command:cloneCollectionAsCapped": (State.REFUSED, "capped collections are not enforced"),
    "command:validateDBMetadata": (State.REFUSED, "API version checks are not implemented"),
    "command:shutdown": (State.REFUSED, "stop the process with SIGTERM (exits cleanly)"),
    "command:setDefaultRWConcern": (State.REFUSED, "defaults are fixed (local / majority)"),
    "command:setClusterParameter": (State.REFUSED, "cluster parameters are fixed"),
    "command:planCacheSetFilter": (State.REFUSED, "no plan cache or index filters"),
    "command:setIndexCommitQuorum": (State.REFUSED, "indexes are built at once"),
    "command:setUserWriteBlockMode": (State.REFUSED, "not implemented"),
    "command:rotateCertificates": (State.REFUSED, "no TLS"),
    "command:filemd5": (State.REFUSED, "removed GridFS helper; drivers hash client-side"),
    "command:authenticate": (State.REFUSED, "x.509 only in mongod; use SCRAM (saslStart)"),
    "command:killAllSessionsByPattern": (State.PARTIAL, "kills every session"),
    "stage:$changeStreamSplitLargeEvent": (State.REFUSED, "events over 16 MiB are not split"),
    "stage:$listSampledQueries": (State.REFUSED, "query sampling is a sharding feature"),
    "stage:$listSessions": (State.REFUSED, "no config.system.sessions; use $listLocalSessions"),
    "stage:$planCacheStats": (State.REFUSED, "no plan cache"),
    "stage:$bucketAuto": (State.REFUSED, "not implemented"),
    "stage:$densify": (State.REFUSED, "not implemented"),
    "expression:$meta": (State.REFUSED, "no text search scores"),
}
for _name in ("replSetInitiate", "replSetReconfig", "replSetStepDown", "replSetFreeze",
              "replSetMaintenance", "replSetSyncFrom", "replSetResizeOplog",
              "replSetAbortPrimaryCatchUp"):
    NOTES[f"command:{_name}"] = (State.REFUSED, "a fixed one-member replica set")
for _name in ("createRole", "updateRole", "dropRole", "dropAllRolesFromDatabase", "rolesInfo",
              "grantPrivilegesToRole", "revokePrivilegesFromRole", "grantRolesToRole",
              "revokeRolesFromRole", "invalidateUserCache"):
    NOTES[f"command:{_name}"] = (State.REFUSED, "built-in roles only (no user-defined roles)")


def _registered() -> dict[str, frozenset[str]]:
    """What the server registers, by kind (imported lazily: the engine is large)."""
    # The command table first: importing collectionless first would import the commands
    # package from inside it, whose table needs collectionless complete.
    importlib.import_module("runtime.embedded.commands")
    from runtime.embedded import collectionless, engine, stats_stages
    from runtime.embedded.commands import COMMANDS

    def names(attribute: str) -> frozenset[str]:
        return frozenset(getattr(engine, attribute, frozenset()))

    return {
        "command": frozenset(COMMANDS),
        "query": names("SUPPORTED_QUERY_OPERATORS"),
        "projection": frozenset(PROJECTION_OPERATORS_70),
        "update": names("SUPPORTED_UPDATE_OPERATORS"),
        "stage": names("SUPPORTED_STAGES") | {"$changeStream"}
        | frozenset(collectionless.SOURCE_STAGES) | frozenset(stats_stages.STAGES),
        "expression": names("SUPPORTED_EXPRESSIONS"),
        "accumulator": names("SUPPORTED_ACCUMULATORS"),
    }


def state_of(kind: str, name: str, registered: dict[str, frozenset[str]]) -> tuple[State, str]:
    """The state of one name and the note explaining it ("" when there is nothing to add)."""
    note = NOTES.get(f"{kind}:{name}")
    if name in registered[kind]:
        if note is not None and note[0] is State.PARTIAL:
            return note
        return State.SUPPORTED, ""
    if note is not None:
        return State.REFUSED, note[1]
    return State.REFUSED, ""


def _table(kind: str, names: Iterable[str], registered: dict[str, frozenset[str]]) -> list[str]:
    lines = ["| name | state | note |", "|---|---|---|"]
    for name in names:
        state, note = state_of(kind, name, registered)
        lines.append(f"| `{name}` | {state.value} | {note} |")
    return lines


def render_matrix() -> str:
    """The matrix as Markdown (between the page's markers)."""
    registered = _registered()
    out: list[str] = [BEGIN_MARKER, ""]
    sections: list[tuple[str, str, Iterable[str]]] = [
        (f"Commands: {group}", "command", names) for group, names in COMMANDS_70.items()
    ]
    sections += [
        ("Query operators", "query", QUERY_OPERATORS_70),
        ("Projection operators", "projection", PROJECTION_OPERATORS_70),
        ("Update operators", "update", UPDATE_OPERATORS_70),
        ("Aggregation stages", "stage", STAGES_70),
        ("Aggregation expressions", "expression", EXPRESSIONS_70),
        ("Accumulators ($group, $setWindowFields)", "accumulator", ACCUMULATORS_70),
    ]
    totals: dict[State, int] = dict.fromkeys(State, 0)
    for title, kind, names in sections:
        names = list(names)
        for name in names:
            totals[state_of(kind, name, registered)[0]] += 1
        out += [f"#### {title}", "", *_table(kind, names, registered), ""]
    summary = ", ".join(f"{count} {state.value}" for state, count in totals.items())
    out.insert(2, f"In all: {summary}.\n")
    extra = sorted(registered["command"] - {n for v in COMMANDS_70.values() for n in v})
    if extra:
        out.append("Also registered (aliases and internal commands): "
                   + ", ".join(f"`{n}`" for n in extra) + ".")
        out.append("")
    out.append(END_MARKER)
    return "\n".join(out)


def updated_page(text: str) -> str:
    """``text`` (a Markdown page holding the markers) with the matrix regenerated."""
    start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the page has no '{BEGIN_MARKER}' ... '{END_MARKER}' block")
    return text[:start] + render_matrix() + text[end + len(END_MARKER):]


def main(argv: list[str] | None = None) -> int:
    """Print the matrix, or rewrite it inside a page with ``--write PAGE``."""
    parser = argparse.ArgumentParser(prog="python -m runtime.embedded.compatibility",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, metavar="PAGE",
                        help="regenerate the matrix between the markers of this Markdown page")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(render_matrix() + "\n")
        return 0
    page: Path = args.write
    page.write_text(updated_page(page.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
