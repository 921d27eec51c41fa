"""An optional command field given as BSON null is treated as absent (issue 12), as in mongod 7.0.

mongod parses commands with IDL parsers; ``IDLParserContext::checkAndAssertType`` says "If the
type is wrong, ignore Null and Undefined values", so an optional field holding null (or
undefined) is simply not set. Drivers rely on it: the Node.js driver sends options left
``undefined`` as null (``watch([], {resumeAfter: undefined})`` sends ``resumeAfter: null``).

The table covers every registered command (``COMMANDS``): each optional field known for it is
sent as null, and the answer must equal the answer without the field (``ok``, ``code``, and for
reads the documents). Fields mongod parses with a hand-written parser that rejects null are
pinned separately with mongod's error (``maxTimeMS``: ``parseMaxTimeMS``, BadValue 2).

Not in the table, because mongod does not parse them as typed IDL fields (their null handling
is the hand-written parser's): ``hint`` (``indexHint``, type ``any``), ``writeConcern`` and
``readConcern`` (``extractWCFromCommand``, ``ReadConcernArgs``), ``comment`` (type ``any``: null
is a value), hello's ``client`` (client metadata), the options inside ``createIndexes`` index
specifications (``validateIndexSpec``), and count's ``limit``/``skip`` (``countParseLimit``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson.int64 import Int64
from raw_wire import RawConnection

from runtime.embedded.commands import COMMANDS
from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

DB = "nulls"
USER = "u_existing"

#: Generic arguments every command accepts whose IDL type is not ``any`` (OperationSessionInfo,
#: APIParameters, the read preference): null is absent for all of them.
GENERIC_NULLABLE = ("lsid", "txnNumber", "autocommit", "startTransaction", "apiVersion",
                    "apiStrict", "apiDeprecationErrors", "$readPreference",
                    "bypassDocumentValidation")

Path = tuple[Any, ...]

#: command -> (a valid command, the optional fields to send as null, as paths into it)
TABLE: dict[str, tuple[dict[str, Any], list[Path]]] = {
    "find": ({"find": "c", "filter": {"a": {"$gte": 1}}}, [
        ("projection",), ("sort",), ("skip",), ("limit",), ("batchSize",), ("singleBatch",),
        ("noCursorTimeout",), ("allowPartialResults",), ("allowDiskUse",), ("collation",),
        ("let",), ("readOnce",), ("oplogReplay",), ("tailable",), ("awaitData",), ("min",),
        ("max",), ("returnKey",), ("showRecordId",), ("requestResumeToken",),
        ("resumeAfter",)]),
    "insert": ({"insert": "c", "documents": [{"x": 1}]}, [("ordered",), ("stmtIds",)]),
    "update": ({"update": "c", "updates": [{"q": {"a": 1}, "u": {"$set": {"b": 1}}}]}, [
        ("ordered",), ("let",), ("updates", 0, "upsert"), ("updates", 0, "multi"),
        ("updates", 0, "arrayFilters"), ("updates", 0, "collation"), ("updates", 0, "c")]),
    "delete": ({"delete": "c", "deletes": [{"q": {"a": 1}, "limit": 1}]}, [
        ("ordered",), ("let",), ("deletes", 0, "collation")]),
    "findAndModify": ({"findAndModify": "c", "query": {"a": 1},
                       "update": {"$set": {"b": 2}}}, [
        ("fields",), ("sort",), ("remove",), ("new",), ("upsert",), ("collation",),
        ("arrayFilters",), ("let",)]),
    "count": ({"count": "c", "query": {"a": {"$gte": 1}}}, [("collation",)]),
    "distinct": ({"distinct": "c", "key": "a"}, [("query",), ("collation",)]),
    "aggregate": ({"aggregate": "c", "pipeline": [{"$match": {"a": {"$gte": 1}}}],
                   "cursor": {"batchSize": 2}}, [
        ("explain",), ("allowDiskUse",), ("collation",), ("let",), ("cursor", "batchSize")]),
    "getMore": ({"getMore": "<cursor>", "collection": "c", "batchSize": 1}, [("batchSize",)]),
    "killCursors": ({"killCursors": "c", "cursors": [Int64(424242)]}, []),
    "explain": ({"explain": {"find": "c"}, "verbosity": "queryPlanner"}, [("verbosity",)]),
    "create": ({"create": "made"}, [
        ("capped",), ("size",), ("max",), ("validator",), ("validationLevel",),
        ("validationAction",), ("collation",), ("changeStreamPreAndPostImages",),
        ("storageEngine",), ("indexOptionDefaults",), ("expireAfterSeconds",)]),
    "collMod": ({"collMod": "c"}, [
        ("validator",), ("validationLevel",), ("validationAction",),
        ("changeStreamPreAndPostImages",), ("dryRun",)]),
    "collStats": ({"collStats": "c"}, [("scale",)]),
    "dbStats": ({"dbStats": 1}, [("scale",)]),
    "drop": ({"drop": "c"}, []),
    "dropDatabase": ({"dropDatabase": 1}, []),
    "renameCollection": ({"renameCollection": f"{DB}.c", "to": f"{DB}.renamed",
                          "$db": "admin"}, [("dropTarget",)]),
    "listCollections": ({"listCollections": 1, "cursor": {"batchSize": 5}}, [
        ("filter",), ("nameOnly",), ("authorizedCollections",), ("cursor",),
        ("cursor", "batchSize")]),
    "listDatabases": ({"listDatabases": 1, "$db": "admin"}, [
        ("filter",), ("nameOnly",), ("authorizedDatabases",)]),
    "createIndexes": ({"createIndexes": "c", "indexes": [{"key": {"z": 1}, "name": "z_1"}]},
                      []),
    "listIndexes": ({"listIndexes": "c", "cursor": {"batchSize": 5}}, [
        ("cursor",), ("cursor", "batchSize")]),
    "dropIndexes": ({"dropIndexes": "c", "index": "a_1"}, []),
    "deleteIndexes": ({"deleteIndexes": "c", "index": "a_1"}, []),
    "getParameter": ({"getParameter": 1, "featureCompatibilityVersion": 1, "$db": "admin"},
                     []),
    "setParameter": ({"setParameter": 1, "transactionLifetimeLimitSeconds": 60,
                      "$db": "admin"}, []),
    "configureFailPoint": ({"configureFailPoint": "failCommand", "mode": "off",
                            "$db": "admin"}, [("data",)]),
    "hello": ({"hello": 1}, [("saslSupportedMechs",), ("helloOk",), ("loadBalanced",),
                             ("topologyVersion",), ("maxAwaitTimeMS",)]),
    "usersInfo": ({"usersInfo": 1}, [
        ("showCredentials",), ("showCustomData",), ("showPrivileges",),
        ("showAuthenticationRestrictions",), ("filter",)]),
    "createUser": ({"createUser": "u_new", "pwd": "pw", "roles": []}, [
        ("customData",), ("mechanisms",), ("digestPassword",)]),
    "updateUser": ({"updateUser": USER, "customData": {"k": 1}}, [("pwd",), ("roles",)]),
    "dropUser": ({"dropUser": USER}, []),
    "grantRolesToUser": ({"grantRolesToUser": USER, "roles": ["read"]}, []),
    "revokeRolesFromUser": ({"revokeRolesFromUser": USER, "roles": ["read"]}, []),
    "connectionStatus": ({"connectionStatus": 1}, [("showPrivileges",)]),
    "endSessions": ({"endSessions": [{"id": uuid.uuid4()}], "$db": "admin"}, []),
    "killSessions": ({"killSessions": []}, []),
    "killAllSessions": ({"killAllSessions": []}, []),
    "refreshSessions": ({"refreshSessions": []}, []),
    "getLog": ({"getLog": "global", "$db": "admin"}, []),
    "saslStart": ({"saslStart": 1, "mechanism": "PLAIN", "payload": b"x"}, []),
    "saslContinue": ({"saslContinue": 1, "conversationId": 1, "payload": b"x"}, []),
}
ALIASES = {"findandmodify": "findAndModify", "ismaster": "hello", "isMaster": "hello",
           "buildinfo": "buildInfo"}


def case(name: str) -> tuple[dict[str, Any], list[Path]]:
    """The table entry of ``name`` (commands without options: ``{name: 1}``)."""
    base, fields = TABLE.get(ALIASES.get(name, name), ({name: 1}, []))
    base = {name if k == ALIASES.get(name, name) else k: v for k, v in base.items()}
    if COMMANDS[name].admin_only:
        base.setdefault("$db", "admin")
    return base, fields


def with_null(doc: Any, path: Path) -> Any:
    """A copy of ``doc`` with the field at ``path`` set to null."""
    head, rest = path[0], path[1:]
    if isinstance(doc, list):
        return [with_null(v, rest) if i == head and rest else (None if i == head else v)
                for i, v in enumerate(doc)]
    copy = dict(doc)
    copy[head] = with_null(doc[head], rest) if rest else None
    return copy


def without(doc: Any, path: Path) -> Any:
    """A copy of ``doc`` without the field at ``path``."""
    head, rest = path[0], path[1:]
    if isinstance(doc, list):
        return [without(v, rest) if i == head else v for i, v in enumerate(doc)]
    copy = dict(doc)
    if rest:
        copy[head] = without(doc[head], rest)
    else:
        copy.pop(head, None)
    return copy


@pytest.fixture(scope="module")
def conn() -> Iterator[RawConnection]:
    """A connection to a server of this module's own (commands here reconfigure it)."""
    server = EmbeddedServer(enable_test_commands=True)
    server.start()
    try:
        with RawConnection(server.uri, timeout=30) as connection:
            yield connection
    finally:
        server.stop()


def reset(conn: RawConnection) -> None:
    """The same starting state before every command: collection ``c`` and one user."""
    conn.command({"dropDatabase": 1, "$db": DB})
    conn.command({"insert": "c", "documents": [{"_id": i, "a": i} for i in range(4)],
                  "$db": DB})
    conn.command({"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}],
                  "$db": DB})
    conn.command({"dropAllUsersFromDatabase": 1, "$db": DB})
    conn.command({"createUser": USER, "pwd": "pw", "roles": [], "$db": DB})


def stable(value: Any) -> Any:
    """``value`` without what differs between two runs (collection UUIDs)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def outcome(conn: RawConnection, body: dict[str, Any]) -> tuple[Any, ...]:
    """What must not change when a null field is added: ok, code, and the data returned."""
    reset(conn)
    if body.get("getMore") == "<cursor>":
        opened = conn.command({"find": "c", "batchSize": 1, "$db": DB})
        body = {**body, "getMore": opened["cursor"]["id"]}
    reply = conn.command({**body, "$db": body.get("$db", DB)})
    cursor = reply.get("cursor", {})
    batch = cursor.get("firstBatch", cursor.get("nextBatch"))
    return (reply.get("ok"), reply.get("code"), stable(batch), reply.get("n"), reply.get("values"),
            reply.get("nModified"), reply.get("value"))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_null_optional_field_is_the_field_absent(conn: RawConnection, name: str) -> None:
    """mongod 7.0 (IDL ``checkAndAssertType``): an optional field holding null is not set, so
    ``{field: null}`` answers exactly as the command without the field, for every command."""
    base, fields = case(name)
    paths = [*fields, *((g,) for g in GENERIC_NULLABLE)]
    for path in paths:
        expected = outcome(conn, without(base, path))
        got = outcome(conn, with_null(base, path))
        assert got == expected, (name, path, got, expected)


@pytest.mark.parametrize("name", ["find", "insert", "ping", "aggregate"])
def test_null_max_time_ms_is_mongods_bad_value(conn: RawConnection, name: str) -> None:
    """``maxTimeMS`` is checked by mongod's ``parseMaxTimeMS``, not IDL: any non-number, null
    included, is BadValue (2) "maxTimeMS must be a number"."""
    base, _ = case(name)
    reply = conn.command({**base, "maxTimeMS": None, "$db": base.get("$db", DB)})
    assert (reply["ok"], reply["code"], reply["errmsg"]) == (0, 2, "maxTimeMS must be a number")


CHANGE_STREAM_OPTIONS = ("resumeAfter", "startAfter", "startAtOperationTime", "fullDocument",
                         "fullDocumentBeforeChange", "showExpandedEvents")


@pytest.mark.parametrize("options", [{option: None} for option in CHANGE_STREAM_OPTIONS]
                         + [dict.fromkeys(CHANGE_STREAM_OPTIONS)],
                         ids=[*CHANGE_STREAM_OPTIONS, "all"])
def test_null_change_stream_options_open_a_stream_that_sees_events(
        conn: RawConnection, options: dict[str, Any]) -> None:
    """``$changeStream`` is parsed by IDL (``DocumentSourceChangeStreamSpec``): null options are
    absent, so the stream starts now and delivers the next insert (manual: db.collection.watch;
    before the fix: TypeMismatch 14 "BSON field '$changeStream.resumeAfter' is the wrong
    type")."""
    reset(conn)
    opened = conn.command({"aggregate": "c", "pipeline": [{"$changeStream": options}],
                           "cursor": {}, "$db": DB})
    assert opened["ok"] == 1, opened
    conn.command({"insert": "c", "documents": [{"_id": 100}], "$db": DB})
    more = conn.command({"getMore": opened["cursor"]["id"], "collection": "c",
                         "maxTimeMS": 5000, "$db": DB})
    events = more["cursor"]["nextBatch"]
    assert [(e["operationType"], e["documentKey"]["_id"]) for e in events] == [("insert", 100)]
    conn.command({"killCursors": "c", "cursors": [opened["cursor"]["id"]], "$db": DB})


def test_create_with_null_view_fields_creates_a_collection(db: Any) -> None:
    """``create`` with ``viewOn: null, pipeline: null`` (a driver's undefined options): null is
    "not given", so a plain collection is created, not a view and not an error."""
    db.command("create", "plain", viewOn=None, pipeline=None, validator=None)
    [info] = db.command("listCollections", filter={"name": "plain"})["cursor"]["firstBatch"]
    assert info["type"] == "collection" and info["options"] == {}
