"""Handshake and server-information commands (hello, ping, buildInfo, sessions, ...).

``hello`` also answers ``saslSupportedMechs: "<db>.<user>"`` with that user's mechanisms and
runs the first SCRAM step of ``speculativeAuthenticate`` (PyMongo 4 and the Node.js driver
send both), as mongod does.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from bson import ObjectId
from bson.int64 import Int64

from runtime.embedded.commands.registry import GENERIC_FIELDS, CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.planner import QUERY_EXECUTOR
from runtime.embedded.users import Mechanism
from runtime.embedded.wire import MAX_BSON_SIZE, MAX_MESSAGE_SIZE

SERVER_VERSION = "7.0.14"
VERSION_ARRAY = [7, 0, 14, 0]
MAX_WIRE_VERSION = 21
REPLICA_SET = "rs0"
# Constant for the life of every process, so drivers never consider a restarted server stale.
ELECTION_ID = ObjectId("7fffffff0000000000000001")


async def hello(ctx: CommandContext) -> dict[str, Any]:
    """Present a single-node replica-set primary, so drivers enable every feature."""
    state = ctx.state
    conn = ctx.connection
    if "client" in ctx.body:
        if conn.get("metadata_seen"):
            raise CommandError(ErrorCode.ClientMetadataCannotBeMutated,
                               "The client metadata document may only be sent in the first "
                               "hello")
        conn["metadata_seen"] = True
        app = ctx.body["client"].get("application") if isinstance(ctx.body["client"], dict) \
            else None
        if isinstance(app, dict):
            conn["app_name"] = app.get("name")
    me = state.advertised_address
    reply: dict[str, Any] = {
        "isWritablePrimary": True,
        "topologyVersion": None,
        "hosts": [me],
        "setName": REPLICA_SET,
        "setVersion": 1,
        "electionId": ELECTION_ID,
        "primary": me,
        "me": me,
        "secondary": False,
        "helloOk": True,
        "maxBsonObjectSize": MAX_BSON_SIZE,
        "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
        "maxWriteBatchSize": 100_000,
        "localTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn.get("id", 0),
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": False,
        "ok": 1.0,
    }
    del reply["topologyVersion"]  # omitted on purpose: drivers then poll instead of streaming
    if ctx.name != "hello":
        reply["ismaster"] = True
    if "saslSupportedMechs" in ctx.body:
        mechanisms = state.auth.supported_mechanisms(ctx.body["saslSupportedMechs"])
        if mechanisms is not None:
            reply["saslSupportedMechs"] = mechanisms
    if "speculativeAuthenticate" in ctx.body:
        speculative = state.auth.speculative(ctx.body["speculativeAuthenticate"], conn)
        if speculative is not None:
            reply["speculativeAuthenticate"] = speculative
    return reply


async def ping(ctx: CommandContext) -> dict[str, Any]:
    """Liveness check."""
    return {"ok": 1.0}


async def build_info(ctx: CommandContext) -> dict[str, Any]:
    """Version information (reported as MongoDB 7.0, the semantics we follow)."""
    return {"version": SERVER_VERSION, "versionArray": VERSION_ARRAY, "gitVersion": "reactgen",
            "modules": [], "allocator": "system", "javascriptEngine": "none", "bits": 64,
            "debug": False, "maxBsonObjectSize": MAX_BSON_SIZE, "storageEngines": ["reactgen"],
            "openssl": {"running": "disabled"}, "ok": 1.0}


async def get_parameter(ctx: CommandContext) -> dict[str, Any]:
    """Server parameters drivers and test harnesses ask for."""
    params: dict[str, Any] = {
        "enableTestCommands": ctx.state.config.enable_test_commands,
        "featureCompatibilityVersion": {"version": "7.0"},
        "transactionLifetimeLimitSeconds": ctx.state.transaction_lifetime_s,
        "minSnapshotHistoryWindowInSeconds": ctx.state.store.history.window_s,
        "requireApiVersion": False,
        "authenticationMechanisms": [str(m) for m in Mechanism],
    }
    if ctx.body.get("getParameter") == "*":
        return {**params, "ok": 1.0}
    return {**{k: v for k, v in params.items() if k in ctx.body}, "ok": 1.0}


SETTABLE_PARAMETERS = ("transactionLifetimeLimitSeconds", "minSnapshotHistoryWindowInSeconds")


async def set_parameter(ctx: CommandContext) -> dict[str, Any]:
    """Change a runtime parameter: ``transactionLifetimeLimitSeconds`` (>= 1) or
    ``minSnapshotHistoryWindowInSeconds`` (>= 0, how long snapshot-read history is kept)."""
    wanted = {k: v for k, v in ctx.body.items() if k not in GENERIC_FIELDS and k != ctx.name}
    if not wanted:
        raise CommandError(ErrorCode.BadValue,
                           "no option found to set, use help:true to see options")
    unknown = [k for k in wanted if k not in SETTABLE_PARAMETERS]
    if unknown:
        raise CommandError(ErrorCode.BadValue,
                           f"attempted to set unrecognized parameter [{unknown[0]}]; "
                           f"supported: {', '.join(SETTABLE_PARAMETERS)}")
    name, value = next(iter(wanted.items()))
    minimum = 0 if name == "minSnapshotHistoryWindowInSeconds" else 1
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise CommandError(ErrorCode.BadValue, f"{name} must be a number >= {minimum}")
    if name == "minSnapshotHistoryWindowInSeconds":
        history = ctx.state.store.history
        was: Any = history.window_s
        history.window_s = int(value)
        return {"was": was, "ok": 1.0}
    was = ctx.state.transaction_lifetime_s
    ctx.state.transaction_lifetime_s = value
    return {"was": was, "ok": 1.0}


async def get_cmd_line_opts(ctx: CommandContext) -> dict[str, Any]:
    """The server's command line."""
    config = ctx.state.config
    parsed: dict[str, Any] = {"net": {"bindIp": config.host, "port": config.port},
                              "replication": {"replSet": REPLICA_SET}}
    if config.dbpath:
        parsed["storage"] = {"dbPath": config.dbpath}
    if config.enable_test_commands:
        parsed["setParameter"] = {"enableTestCommands": "1"}
    if config.auth:
        parsed["security"] = {"authorization": "enabled"}
    return {"argv": list(config.argv), "parsed": parsed, "ok": 1.0}


async def server_status(ctx: CommandContext) -> dict[str, Any]:
    """Process and counter information."""
    state = ctx.state
    return {
        "host": state.advertised_address,
        "version": SERVER_VERSION,
        "process": "reactgen-embedded",
        "pid": Int64(os.getpid()),
        "uptime": time.monotonic() - state.started,
        "localTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        "connections": {"current": state.connection_count, "totalCreated": state.connections_made},
        "opcounters": dict(state.opcounters),
        "repl": {"setName": REPLICA_SET, "isWritablePrimary": True, "primary":
                 state.advertised_address, "hosts": [state.advertised_address]},
        "storageEngine": {"name": "reactgen", "persistent": state.config.dbpath is not None},
        "metrics": {"queryExecutor": {
            "scanned": Int64(QUERY_EXECUTOR["scanned"]),
            "scannedObjects": Int64(QUERY_EXECUTOR["scannedObjects"]),
        }},
        "ok": 1.0,
    }


async def host_info(ctx: CommandContext) -> dict[str, Any]:
    """Basic host information."""
    return {"system": {"hostname": ctx.state.advertised_address, "numCores": os.cpu_count()},
            "os": {"type": os.uname().sysname}, "ok": 1.0}


async def whats_my_uri(ctx: CommandContext) -> dict[str, Any]:
    """The client's address."""
    return {"you": ctx.connection.get("peer", ""), "ok": 1.0}


async def list_commands(ctx: CommandContext) -> dict[str, Any]:
    """The commands this server implements."""
    from runtime.embedded.commands.table import COMMANDS  # the table imports this module

    return {"commands": {name: {"help": ""} for name in sorted(COMMANDS)}, "ok": 1.0}


async def end_sessions(ctx: CommandContext) -> dict[str, Any]:
    """Forget sessions, aborting their open transactions."""
    ids = ctx.body.get(ctx.name)
    if ctx.name == "killAllSessions":
        ctx.state.abort_all_sessions()
    elif isinstance(ids, list) and ctx.name != "refreshSessions":
        for lsid in ids:
            ctx.state.end_session(lsid)
    return {"ok": 1.0}


async def start_session(ctx: CommandContext) -> dict[str, Any]:
    """A new server-generated session id."""
    import uuid

    from bson.binary import Binary

    return {"id": {"id": Binary.from_uuid(uuid.uuid4())}, "timeoutMinutes": 30, "ok": 1.0}


async def get_log(ctx: CommandContext) -> dict[str, Any]:
    """No in-memory log is kept; logs go to stderr."""
    return {"totalLinesWritten": 0, "log": [], "ok": 1.0}
