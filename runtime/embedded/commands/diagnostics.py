"""Diagnostic and administration commands that shells and GUIs send (mongosh, Compass).

``replSetGetStatus`` (``rs.status()``), ``getDefaultRWConcern``, ``dataSize``, ``dbHash``,
``top``, ``profile``, ``killOp``, ``lockInfo`` and ``connPoolStats`` answer in mongod 7.0's
shapes for what this one-member replica set knows. ``profile`` reports level 0 and accepts
only level 0 or a query of the level (-1): the embedded server keeps no ``system.profile``.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from typing import Any

import bson
from bson.int64 import Int64

from runtime.embedded.commands.handshake import REPLICA_SET
from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.wire import CODEC


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)


async def repl_set_get_status(ctx: CommandContext) -> dict[str, Any]:
    """The one member, primary and healthy, with its latest optime."""
    optime = {"ts": ctx.state.store.clock.now(), "t": Int64(1)}
    uptime = int(time.monotonic() - ctx.state.started)
    member = {"_id": 0, "name": ctx.state.advertised_address, "health": 1.0, "state": 1,
              "stateStr": "PRIMARY", "uptime": uptime, "optime": optime,
              "optimeDate": _now(), "syncSourceHost": "", "syncSourceId": -1,
              "infoMessage": "", "configVersion": 1, "configTerm": 1, "self": True}
    return {"set": REPLICA_SET, "date": _now(), "myState": 1, "term": Int64(1),
            "heartbeatIntervalMillis": Int64(2000), "majorityVoteCount": 1,
            "writeMajorityCount": 1, "votingMembersCount": 1, "writableVotingMembersCount": 1,
            "optimes": {"lastCommittedOpTime": optime, "appliedOpTime": optime,
                        "durableOpTime": optime},
            "members": [member], "ok": 1.0}


async def get_default_rw_concern(ctx: CommandContext) -> dict[str, Any]:
    """The implicit defaults of a replica set (read "local", write "majority")."""
    return {"defaultReadConcern": {"level": "local"},
            "defaultWriteConcern": {"w": "majority", "wtimeout": 0},
            "defaultReadConcernSource": "implicit", "defaultWriteConcernSource": "implicit",
            "ok": 1.0}


def _documents(ctx: CommandContext, db: str, name: str) -> list[dict[str, Any]]:
    coll = ctx.access.collection(db, name)
    return [] if coll is None else [coll.docs[key] for key in sorted(coll.docs)]


async def data_size(ctx: CommandContext) -> dict[str, Any]:
    """BSON bytes and count of a collection's documents (``dataSize: "db.coll"``)."""
    namespace = ctx.body.get("dataSize")
    if type(namespace) is not str or "." not in namespace:
        raise CommandError(ErrorCode.InvalidNamespace,
                           "dataSize needs a namespace string 'db.collection'")
    db, name = namespace.split(".", 1)
    docs = _documents(ctx, db, name)
    size = sum(len(bson.encode(doc, codec_options=CODEC)) for doc in docs)
    return {"size": Int64(size), "numObjects": Int64(len(docs)), "millis": Int64(0), "ok": 1.0}


async def db_hash(ctx: CommandContext) -> dict[str, Any]:
    """An MD5 per collection over its documents in ``_id`` order, and one over them all."""
    wanted = ctx.body.get("collections")
    if wanted is not None and (not isinstance(wanted, list)
                               or not all(type(n) is str for n in wanted)):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field 'dbHash.collections' must be an array of strings")
    names = [c.name for c in ctx.state.store.catalog.collections(ctx.db)
             if not c.name.startswith("system.") and (wanted is None or c.name in wanted)]
    hashes: dict[str, str] = {}
    overall = hashlib.md5(usedforsecurity=False)
    for name in names:
        digest = hashlib.md5(usedforsecurity=False)
        for doc in _documents(ctx, ctx.db, name):
            digest.update(bson.encode(doc, codec_options=CODEC))
        hashes[name] = digest.hexdigest()
        overall.update(hashes[name].encode())
    return {"host": ctx.state.advertised_address, "collections": hashes, "capped": [],
            "uuids": {}, "md5": overall.hexdigest(), "timeMillis": 0, "ok": 1.0}


async def top(ctx: CommandContext) -> dict[str, Any]:
    """Per-namespace usage totals (none are tracked: an empty ``totals``)."""
    return {"totals": {"note": "all times in microseconds"}, "ok": 1.0}


async def profile(ctx: CommandContext) -> dict[str, Any]:
    """The profiling level: always 0 (off); turning it on is refused with a clear error."""
    level = ctx.body.get("profile")
    if level not in (-1, 0):
        raise CommandError(ErrorCode.IllegalOperation,
                           "the embedded server has no database profiler (system.profile); "
                           "only profile: 0 or profile: -1 (query the level) are accepted")
    return {"was": 0, "slowms": 100, "sampleRate": 1.0, "ok": 1.0}


async def kill_op(ctx: CommandContext) -> dict[str, Any]:
    """Acknowledge a kill request (commands here run to completion or to their maxTimeMS)."""
    if "op" not in ctx.body:
        raise CommandError(ErrorCode.Location40414,
                           "BSON field 'killOp.op' is missing but a required field")
    return {"info": "attempting to kill op", "ok": 1.0}


async def lock_info(ctx: CommandContext) -> dict[str, Any]:
    """No lock is ever held across a yield here: an empty list."""
    return {"lockInfo": [], "ok": 1.0}


async def conn_pool_stats(ctx: CommandContext) -> dict[str, Any]:
    """Outgoing connection pools: this server opens none."""
    return {"numClientConnections": 0, "numAScopedConnections": 0, "totalInUse": 0,
            "totalAvailable": 0, "totalCreated": 0, "totalRefreshing": 0, "pools": {},
            "hosts": {}, "replicaSets": {}, "ok": 1.0}
