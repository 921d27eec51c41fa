"""The statistics stages Compass and mongosh read: ``$collStats`` and ``$indexStats``.

Both must be the first stage of an aggregate on a collection (mongod: 40602 otherwise).
``$collStats`` answers one document with the sections asked for (``count``,
``storageStats``; ``latencyStats`` and ``queryExecStats`` with zero counters), sizes being the
BSON size of the documents; ``$indexStats`` one document per index with its ``accesses``
(operations counted since the server started: this server does not count them, so 0).
"""

from __future__ import annotations

import datetime
from typing import Any

import bson
from bson.int64 import Int64

from runtime.embedded import engine
from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.storage import Collection
from runtime.embedded.wire import CODEC

STAGES = ("$collStats", "$indexStats")
_COLL_STATS_FIELDS = frozenset({"latencyStats", "storageStats", "count", "queryExecStats"})


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _coll_stats(ctx: CommandContext, coll: Collection | None, name: str,
                spec: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.Location5447000,
                           "$collStats must take a nested object but found: "
                           f"{engine.bson_type_name(spec)}")
    unknown = sorted(set(spec) - _COLL_STATS_FIELDS)
    if unknown:
        raise CommandError(ErrorCode.Location40415,
                           f"BSON field '$collStats.{unknown[0]}' is an unknown field.")
    docs = list(coll.docs.values()) if coll is not None else []
    if coll is None:
        raise CommandError(ErrorCode.NamespaceNotFound,
                           f"Unable to retrieve storageStats in $collStats stage :: caused by "
                           f":: Collection [{ctx.namespace(name)}] not found.")
    out: dict[str, Any] = {"ns": ctx.namespace(name), "host": ctx.state.advertised_address,
                           "localTime": _now()}
    if "latencyStats" in spec:
        zero = {"latency": Int64(0), "ops": Int64(0)}
        out["latencyStats"] = {"reads": dict(zero), "writes": dict(zero),
                               "commands": dict(zero), "transactions": dict(zero)}
    if "storageStats" in spec or "count" in spec:
        size = sum(len(bson.encode(doc, codec_options=CODEC)) for doc in docs)
        if "storageStats" in spec:
            scale = spec["storageStats"].get("scale", 1) if isinstance(
                spec["storageStats"], dict) else 1
            scale = scale if isinstance(scale, int) and scale > 0 else 1
            index_sizes = {index_name: 0 for index_name in coll.indexes}
            out["storageStats"] = {
                "size": size // scale, "count": len(docs),
                "avgObjSize": size // len(docs) if docs else 0,
                "storageSize": size // scale, "freeStorageSize": 0, "capped": False,
                "nindexes": len(coll.indexes), "indexDetails": {},
                "indexBuilds": [], "totalIndexSize": 0, "totalSize": size // scale,
                "indexSizes": index_sizes, "scaleFactor": scale,
            }
        if "count" in spec:
            out["count"] = len(docs)
    if "queryExecStats" in spec:
        out["queryExecStats"] = {"collectionScans": {"total": Int64(0),
                                                     "nonTailable": Int64(0)}}
    return [out]


def _index_stats(ctx: CommandContext, coll: Collection | None, spec: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict) or spec:
        raise CommandError(ErrorCode.Location28803,
                           "The $indexStats stage specification must be an empty object")
    if coll is None:
        return []
    since = _now()
    return [{"name": name, "key": dict(index.spec.key), "host": ctx.state.advertised_address,
             "accesses": {"ops": Int64(0), "since": since}, "spec": index.spec.to_document()}
            for name, index in coll.indexes.items()]


def check_placement(pipeline: list[dict[str, Any]]) -> None:
    """A statistics stage anywhere but first: 40602, as mongod answers."""
    for stage in pipeline[1:]:
        if next(iter(stage)) in STAGES:
            raise CommandError(ErrorCode.Location40602,
                               f"{next(iter(stage))} is only valid as the first stage in a "
                               "pipeline.")


def run(ctx: CommandContext, name: str, pipeline: list[dict[str, Any]],
        coll: Collection | None, foreign: engine.ForeignCollections) -> list[dict[str, Any]]:
    """The results of a pipeline on collection ``name`` that starts with a statistics stage."""
    first = next(iter(pipeline[0]))
    spec = pipeline[0][first]
    docs = _coll_stats(ctx, coll, name, spec) if first == "$collStats" \
        else _index_stats(ctx, coll, spec)
    return engine.run_pipeline(docs, pipeline[1:], foreign, ctx.variables)
