"""Collection-less aggregation (``{aggregate: 1}``): ``$documents``, ``$currentOp``,
``$listLocalSessions``, and the ``currentOp`` command.

As on mongod 7.0 the source stage must come first; any ordinary stages may follow it. A
``{aggregate: 1}`` pipeline that does not start with one of them is ``InvalidNamespace`` (73);
one of them later in a pipeline is 40602; ``$currentOp`` outside the admin database is 73 too.
Reference: the MongoDB 7.0 manual pages of ``$documents``, ``$currentOp`` (aggregation),
``currentOp`` and ``$listLocalSessions``.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable
from typing import Any

from bson.binary import Binary
from bson.int64 import Int64

from runtime.embedded import engine
from runtime.embedded.auth import connection_auth, current_caller
from runtime.embedded.commands.registry import GENERIC_FIELDS, CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.operations import Operation
from runtime.embedded.sessions import session_id
from runtime.embedded.views import ViewReader

SOURCE_STAGES = ("$documents", "$currentOp", "$listLocalSessions")
_CURRENT_OP_FLAGS = ("allUsers", "idleConnections", "idleCursors", "idleSessions", "localOps",
                     "backtrace", "truncateOps", "targetAllNodes")
_OP_TYPES = {"find": "query", "insert": "insert", "update": "update", "delete": "remove",
             "getMore": "getmore"}


def _first_only(name: str) -> CommandError:
    return CommandError(ErrorCode.Location40602,
                        f"{name} is only valid as the first stage in a pipeline.")


def check_collection_pipeline(pipeline: list[dict[str, Any]]) -> None:
    """Refuse the collection-less stages in an aggregate on a collection, as mongod does:
    ``$currentOp`` and ``$listLocalSessions`` anywhere, ``$documents`` first, are
    InvalidNamespace (73, they need ``{aggregate: 1}``); a later ``$documents`` is 40602."""
    for index, stage in enumerate(pipeline):
        name = next(iter(stage))
        if name == "$documents" and index:
            raise _first_only(name)
        if name in SOURCE_STAGES:
            raise CommandError(ErrorCode.InvalidNamespace,
                               f"{name} must be run with {{aggregate: 1}}, not on a collection")


def run(ctx: CommandContext, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of an ``{aggregate: 1}`` pipeline."""
    first = next(iter(pipeline[0])) if pipeline else None
    if first not in SOURCE_STAGES:
        shown = first if first is not None else "an empty pipeline"
        raise CommandError(ErrorCode.InvalidNamespace,
                           f"{{aggregate: 1}} is not valid for '{shown}'; a collection is "
                           "required.")
    for stage in pipeline[1:]:
        name = next(iter(stage))
        if name in SOURCE_STAGES:
            raise _first_only(name)
    assert first is not None
    docs = _SOURCES[first](ctx, pipeline[0][first])
    return engine.run_pipeline(docs, pipeline[1:], ViewReader(ctx), ctx.variables)


# -- $documents ---------------------------------------------------------------------------------


def _documents(ctx: CommandContext, spec: Any) -> list[dict[str, Any]]:
    """``$documents``: the expression, evaluated once, must be an array of documents."""
    evaluated = engine.run_pipeline([{}], [{"$replaceWith": {"v": spec}}], ViewReader(ctx),
                                    ctx.variables)
    value = evaluated[0].get("v") if evaluated else None
    if not isinstance(value, list):
        raise CommandError(ErrorCode.Location5858203,
                           "error during lookup: $documents requires an array of objects, "
                           f"found {engine.bson_type_name(value)}")
    for item in value:
        if not isinstance(item, dict):
            raise CommandError(ErrorCode.Location40228,
                               "'$documents' elements must be objects, found "
                               f"{engine.bson_type_name(item)}")
    return [dict(item) for item in value]


# -- $currentOp ---------------------------------------------------------------------------------


def _flags(spec: Any, stage: str, names: tuple[str, ...]) -> dict[str, bool]:
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.FailedToParse,
                           f"{stage} options must be specified in an object, but found: "
                           f"{engine.bson_type_name(spec)}")
    flags: dict[str, bool] = {}
    for key, value in spec.items():
        if key not in names:
            raise CommandError(ErrorCode.FailedToParse,
                               f"Unrecognized option '{key}' in {stage} stage.")
        if not isinstance(value, bool):
            raise CommandError(ErrorCode.FailedToParse,
                               f"The '{key}' parameter of the {stage} stage must be a boolean "
                               f"value, but found: {engine.bson_type_name(value)}")
        flags[key] = value
    return flags


def _namespace(db: Any, body: dict[str, Any]) -> str:
    target = next(iter(body.values()), None)
    if type(target) is str and target:
        return f"{db}.{target}"
    if next(iter(body), "") == "aggregate":
        return f"{db}.$cmd.aggregate"
    return f"{db}.$cmd"


def _operation_fields(op: Operation) -> dict[str, Any]:
    body = op.body
    name = next(iter(body), "")
    elapsed = max(0.0, time.monotonic() - op.started)
    fields: dict[str, Any] = {
        "opid": op.opid,
        "secs_running": Int64(int(elapsed)),
        "microsecs_running": Int64(int(elapsed * 1_000_000)),
        "op": _OP_TYPES.get(name, "command"),
        "ns": _namespace(body.get("$db", "admin"), body),
        "command": body,
        "numYields": 0,
        "waitingForLock": False,
        "locks": {},
    }
    if isinstance(body.get("lsid"), dict):
        fields["lsid"] = body["lsid"]
    if body.get("autocommit") is False and body.get("txnNumber") is not None:
        fields["transaction"] = {"parameters": {"txnNumber": body["txnNumber"],
                                                "autocommit": False}}
    return fields


def _user_of(connection: dict[str, Any]) -> tuple[str, str] | None:
    return connection_auth(connection).user


def current_ops(ctx: CommandContext, flags: dict[str, bool]) -> list[dict[str, Any]]:
    """A document per in-progress operation (and per idle connection with
    ``idleConnections``, per session with an open transaction with ``idleSessions``)."""
    state = ctx.state
    mine = _user_of(ctx.connection)
    only_mine = state.auth.enabled and not flags.get("allUsers", False)
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.isoformat(timespec="milliseconds")
    docs: list[dict[str, Any]] = []
    busy_sessions: set[bytes] = set()
    for conn_id, connection, op in state.operations.snapshot():
        if op is None and not flags.get("idleConnections", False):
            continue
        if only_mine and _user_of(connection) != mine:
            continue
        doc: dict[str, Any] = {
            "type": "op", "host": state.advertised_address, "desc": f"conn{conn_id}",
            "connectionId": conn_id, "client": connection.get("peer", ""),
        }
        if connection.get("app_name") is not None:
            doc["appName"] = connection["app_name"]
        user = _user_of(connection)
        if user is not None:
            doc["effectiveUsers"] = [{"user": user[1], "db": user[0]}]
        doc.update({"active": op is not None, "currentOpTime": stamp, "threaded": True})
        if op is not None:
            doc.update(_operation_fields(op))
            busy = session_id(op.body.get("lsid"))
            if busy is not None:
                busy_sessions.add(busy)
        docs.append(doc)
    if flags.get("idleSessions", True):
        for (key, user), session in list(state.sessions.sessions.items()):
            if session.txn_state != "in_progress" or key in busy_sessions:
                continue
            if only_mine and user != mine:
                continue
            docs.append({"type": "idleSession", "host": state.advertised_address,
                         "active": False, "currentOpTime": stamp, "lsid": session.lsid,
                         "transaction": {"parameters": {"txnNumber": session.last_txn_number,
                                                        "autocommit": False}}})
    return docs


def _current_op(ctx: CommandContext, spec: Any) -> list[dict[str, Any]]:
    if ctx.db != "admin":
        raise CommandError(ErrorCode.InvalidNamespace,
                           "$currentOp must be run against the 'admin' database with "
                           "{aggregate: 1}")
    return current_ops(ctx, _flags(spec, "$currentOp", _CURRENT_OP_FLAGS))


async def current_op_command(ctx: CommandContext) -> dict[str, Any]:
    """``db.currentOp()``: ``{inprog: [...]}``; ``$all`` adds idle connections, ``$ownOps``
    limits to the caller's; any other field is a filter on the operation documents."""
    body = ctx.body
    flags = {"allUsers": not body.get("$ownOps", False),
             "idleConnections": bool(body.get("$all", False)),
             "idleSessions": bool(body.get("$all", False))}
    query = {k: v for k, v in body.items()
             if k not in ("currentOp", "$all", "$ownOps") and k not in GENERIC_FIELDS}
    engine.validate_filter(query)
    ops = [d for d in current_ops(ctx, flags) if engine.matches(query, d, ctx.variables)]
    return {"inprog": ops, "ok": 1.0}


# -- $listLocalSessions -------------------------------------------------------------------------


def _uid(user: tuple[str, str] | None) -> Binary:
    """mongod's ``uid``: SHA-256 of ``user@db`` (of the empty string without a user)."""
    name = f"{user[1]}@{user[0]}" if user is not None else ""
    return Binary(hashlib.sha256(name.encode()).digest())


def _wanted_users(spec: Any) -> Callable[[tuple[str, str] | None], bool]:
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.TypeMismatch, "$listLocalSessions requires an object, "
                           f"found {engine.bson_type_name(spec)}")
    for key in spec:
        if key not in ("allUsers", "users"):
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field '$listLocalSessions.{key}' is an unknown field.")
    all_users = spec.get("allUsers", False)
    if not isinstance(all_users, bool):
        raise CommandError(ErrorCode.TypeMismatch, "BSON field '$listLocalSessions.allUsers' "
                           "is the wrong type, expected type 'bool'")
    users = spec.get("users")
    if users is not None and all_users:
        raise CommandError(ErrorCode.BadValue,
                           "$listLocalSessions: 'users' may not be given with allUsers: true")
    if all_users:
        return lambda user: True
    if users is None:
        caller = current_caller()
        me = caller.user if caller is not None else None
        return lambda user: me is None or user == me
    if not isinstance(users, list) or not all(
            isinstance(u, dict) and type(u.get("user")) is str and type(u.get("db")) is str
            for u in users):
        raise CommandError(ErrorCode.TypeMismatch, "$listLocalSessions.users must be an array "
                           "of {user: <name>, db: <database>} documents")
    names = {(u["db"], u["user"]) for u in users}
    return lambda user: user in names


def _list_local_sessions(ctx: CommandContext, spec: Any) -> list[dict[str, Any]]:
    wanted = _wanted_users(spec)
    now_wall = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    now = time.monotonic()
    docs = []
    for (key, user), session in list(ctx.state.sessions.sessions.items()):
        if not wanted(user):
            continue
        last_use = now_wall - datetime.timedelta(seconds=max(0.0, now - session.last_used))
        last_use = last_use.replace(microsecond=last_use.microsecond // 1000 * 1000)
        # The id as the server decodes UUIDs (so a $match on a driver's session id finds it).
        doc: dict[str, Any] = {"_id": {"id": session.lsid.get("id", Binary(key, 4)),
                                       "uid": _uid(user)},
                               "lastUse": last_use}
        if user is not None:
            doc["user"] = {"name": f"{user[1]}@{user[0]}"}
        docs.append(doc)
    return docs


_SOURCES: dict[str, Callable[[CommandContext, Any], list[dict[str, Any]]]] = {
    "$documents": _documents,
    "$currentOp": _current_op,
    "$listLocalSessions": _list_local_sessions,
}
