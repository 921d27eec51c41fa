"""Administration commands that tools send and that have a truthful answer here.

``fsync`` (without ``lock``: the log is written through at commit already), ``logRotate``,
``dropConnections``, the plan-cache commands (there is no plan cache: nothing to clear, no
filters), ``setFeatureCompatibilityVersion`` (7.0 only), ``getClusterParameter``
(``changeStreamOptions``) and ``replSetGetConfig`` (``rs.conf()``). What would need a feature
the embedded server does not have is refused with IllegalOperation (20) and says why.
"""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands.handshake import REPLICA_SET
from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.errors import CommandError, ErrorCode

FEATURE_COMPATIBILITY_VERSION = "7.0"


async def fsync(ctx: CommandContext) -> dict[str, Any]:
    """Flush: every commit is already in the log; ``lock: true`` is refused (no fsyncLock)."""
    if ctx.body.get("lock"):
        raise CommandError(ErrorCode.IllegalOperation,
                           "fsync with lock: true is not supported by the embedded server: "
                           "it has no write lock to hold; stop writers instead")
    return {"numFiles": 1, "ok": 1.0}


async def fsync_unlock(ctx: CommandContext) -> dict[str, Any]:
    """Never locked (``fsync`` refuses ``lock``): mongod's answer when not locked."""
    raise CommandError(ErrorCode.IllegalOperation, "fsyncUnlock called when not locked")


async def log_rotate(ctx: CommandContext) -> dict[str, Any]:
    """Logs go to stderr: nothing to rotate."""
    return {"ok": 1.0}


async def drop_connections(ctx: CommandContext) -> dict[str, Any]:
    """Outgoing connection pools: none to drop."""
    hosts = ctx.body.get("hostAndPort")
    if not isinstance(hosts, list):
        raise CommandError(ErrorCode.Location40414,
                           "BSON field 'dropConnections.hostAndPort' is missing but a "
                           "required field")
    return {"ok": 1.0}


async def plan_cache_clear(ctx: CommandContext) -> dict[str, Any]:
    """There is no plan cache (plans are chosen per query): nothing to clear."""
    ctx.collection_name()
    return {"ok": 1.0}


async def plan_cache_list_filters(ctx: CommandContext) -> dict[str, Any]:
    """No index filters can be set: an empty list."""
    ctx.collection_name()
    return {"filters": [], "ok": 1.0}


async def set_feature_compatibility_version(ctx: CommandContext) -> dict[str, Any]:
    """The server follows 7.0: setting 7.0 is a no-op, anything else is refused."""
    version = ctx.body.get("setFeatureCompatibilityVersion")
    if version != FEATURE_COMPATIBILITY_VERSION:
        raise CommandError(ErrorCode.BadValue,
                           f"the embedded server implements MongoDB "
                           f"{FEATURE_COMPATIBILITY_VERSION} only; featureCompatibilityVersion "
                           f"{version!r} cannot be set")
    return {"ok": 1.0}


_CLUSTER_PARAMETERS: dict[str, dict[str, Any]] = {
    "changeStreamOptions": {"_id": "changeStreamOptions",
                            "preAndPostImages": {"expireAfterSeconds": "off"}},
}


async def get_cluster_parameter(ctx: CommandContext) -> dict[str, Any]:
    """``changeStreamOptions`` (the only cluster parameter of a 7.0 replica set here)."""
    wanted: Any = ctx.body.get("getClusterParameter")
    names: list[Any] = list(_CLUSTER_PARAMETERS) if wanted == "*" else (
        wanted if isinstance(wanted, list) else [wanted])
    unknown = [n for n in names if n not in _CLUSTER_PARAMETERS]
    if unknown:
        raise CommandError(ErrorCode.NoSuchKey, f"Unknown Cluster Parameter {unknown[0]!r}")
    return {"clusterParameters": [dict(_CLUSTER_PARAMETERS[n]) for n in names], "ok": 1.0}


async def repl_set_get_config(ctx: CommandContext) -> dict[str, Any]:
    """The configuration of the one-member replica set (``rs.conf()``)."""
    member = {"_id": 0, "host": ctx.state.advertised_address, "arbiterOnly": False,
              "buildIndexes": True, "hidden": False, "priority": 1.0, "tags": {},
              "secondaryDelaySecs": 0, "votes": 1}
    return {"config": {"_id": REPLICA_SET, "version": 1, "term": 1, "members": [member],
                       "protocolVersion": 1, "writeConcernMajorityJournalDefault": True,
                       "settings": {"chainingAllowed": True,
                                    "heartbeatIntervalMillis": 2000,
                                    "electionTimeoutMillis": 10000}},
            "ok": 1.0}
