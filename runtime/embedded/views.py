"""Read-only views (MongoDB 7.0 manual, "Views"): definitions, validation, resolution, reads.

A view is a document ``{_id: "db.view", viewOn, pipeline}`` in the database's
``system.views`` collection, written through the normal write path, so it is as durable as any
document and comes back after a restart. Reading a view resolves the chain of views it is
defined on down to a collection (``viewOn`` may name a collection that does not exist: the view is
then empty) and runs the concatenated pipelines, innermost first, followed by the reader's own
stages. Views are read-only: writes, index commands, renames and change streams on a view fail
with ``CommandNotSupportedOnView`` (166), as on mongod.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bson.timestamp import Timestamp

from runtime.embedded import engine
from runtime.embedded.changelog import ChangeEntry
from runtime.embedded.datastore import INTERNAL_DATABASES
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import MISSING, get_path, id_key, value_key
from runtime.embedded.storage import Catalog, Collection

if TYPE_CHECKING:
    from runtime.embedded.commands.registry import CommandContext

VIEWS_COLLECTION = "system.views"
#: mongod's limit on how many views a read may go through (ViewDepthLimitExceeded, 165).
MAX_VIEW_DEPTH = 20
_WRITING_STAGES = ("$out", "$merge")


def definition(catalog: Catalog, db: str, name: str) -> dict[str, Any] | None:
    """The stored definition of view ``db.name``, or ``None`` when it is not a view."""
    views = catalog.get(db, VIEWS_COLLECTION)
    if views is None or not views.docs:
        return None
    return views.get(id_key(f"{db}.{name}"))


def not_a_collection(db: str, name: str) -> CommandError:
    """mongod's refusal of an operation that needs a collection (166)."""
    return CommandError(ErrorCode.CommandNotSupportedOnView,
                        f"Namespace {db}.{name} is a view, not a collection")


def refuse(catalog: Catalog, db: str, name: Any) -> None:
    """Raise 166 when ``db.name`` is a view (writes, index commands, change streams)."""
    if type(name) is str and definition(catalog, db, name) is not None:
        raise not_a_collection(db, name)


def refused_writes(ctx: CommandContext, name: str, statements: int,
                   ordered: bool, **extra: Any) -> dict[str, Any] | None:
    """The reply of an insert/update/delete aimed at a view: one write error (166) per statement
    tried (the first only when ordered), as mongod answers; ``None`` when ``name`` is no view.
    Inside a transaction the error fails the command instead."""
    if definition(ctx.state.store.catalog, ctx.db, name) is None:
        return None
    error = not_a_collection(ctx.db, name)
    if ctx.transaction is not None:
        raise error
    failure = WriteError(error.code, error.message)
    errors = [failure.to_document(i) for i in range(1 if ordered else statements)]
    return {"n": 0, **extra, "writeErrors": errors, "ok": 1.0}


def list_infos(catalog: Catalog, db: str) -> list[dict[str, Any]]:
    """The views of a database as ``listCollections`` shows them."""
    views = catalog.get(db, VIEWS_COLLECTION)
    if views is None:
        return []
    infos = []
    prefix = f"{db}."
    for doc in views.docs.values():
        full = doc.get("_id")
        if type(full) is not str or not full.startswith(prefix):
            continue
        options: dict[str, Any] = {"viewOn": doc.get("viewOn"),
                                   "pipeline": doc.get("pipeline", [])}
        infos.append({"name": full[len(prefix):], "type": "view", "options": options,
                      "info": {"readOnly": True}})
    return sorted(infos, key=lambda info: info["name"])


# -- validation ---------------------------------------------------------------------------------


def _sub_pipelines(stage_name: str, spec: Any) -> Iterator[list[Any]]:
    if stage_name == "$facet" and isinstance(spec, dict):
        yield from (p for p in spec.values() if isinstance(p, list))
    elif stage_name in ("$lookup", "$unionWith") and isinstance(spec, dict) \
            and isinstance(spec.get("pipeline"), list):
        yield spec["pipeline"]


def _check_stages(pipeline: list[Any], nested_in: str | None) -> None:
    """Stage shapes, and no ``$out``/``$merge``/``$changeStream`` at any depth."""
    for index, stage in enumerate(pipeline):
        if not isinstance(stage, dict):
            raise CommandError(ErrorCode.TypeMismatch,
                               "Each element of the 'pipeline' array must be an object")
        if len(stage) != 1:
            raise CommandError(ErrorCode.Location40323, "A pipeline stage specification object "
                               "must contain exactly one field.")
        name, spec = next(iter(stage.items()))
        if name in _WRITING_STAGES or name == "$changeStream":
            if nested_in == "$facet":
                raise CommandError(ErrorCode.Location40600,
                                   f"{name} is not allowed to be used within a $facet stage")
            if nested_in is not None:
                raise CommandError(ErrorCode.Location51047,
                                   f"{name} is not allowed within a {nested_in}'s sub-pipeline")
            raise CommandError(ErrorCode.OptionNotSupportedOnView,
                               f"The aggregation stage {name} in location {index} of the "
                               "pipeline cannot be used in the view definition because it "
                               "writes to disk or opens a change stream")
        if not engine.known_stage(name):
            raise CommandError(ErrorCode.Location40324, f"Unrecognized pipeline stage name: "
                               f"'{name}'")
        for sub in _sub_pipelines(name, spec):
            _check_stages(sub, name)


def _references(pipeline: list[Any]) -> Iterator[str]:
    """Namespaces (of the same database) a pipeline reads: $lookup, $graphLookup, $unionWith,
    also inside $facet and sub-pipelines."""
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            continue
        name, spec = next(iter(stage.items()))
        if name in ("$lookup", "$graphLookup") and isinstance(spec, dict):
            if type(spec.get("from")) is str:
                yield spec["from"]
        elif name == "$unionWith":
            if type(spec) is str:
                yield spec
            elif isinstance(spec, dict) and type(spec.get("coll")) is str:
                yield spec["coll"]
        for sub in _sub_pipelines(name, spec):
            yield from _references(sub)


def _dependencies(view: dict[str, Any]) -> set[str]:
    names = set(_references(view.get("pipeline") or []))
    if type(view.get("viewOn")) is str:
        names.add(view["viewOn"])
    return names


def _check_graph(catalog: Catalog, db: str, name: str, new: dict[str, Any]) -> None:
    """GraphContainsCycle (93) or ViewDepthLimitExceeded (165) if ``name`` defined as ``new``
    makes the database's view graph cyclic or too deep."""
    graph: dict[str, set[str]] = {}
    for info in list_infos(catalog, db):
        graph[info["name"]] = _dependencies(info["options"])
    graph[name] = _dependencies(new)
    depth: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> int:
        if node in path:
            cycle = " => ".join(f"{db}.{n}" for n in [*path[path.index(node):], node])
            raise CommandError(ErrorCode.GraphContainsCycle, f"View cycle detected: {cycle}")
        if node not in graph:
            return 0
        if node not in depth:
            below = max((visit(n, [*path, node]) for n in graph[node]), default=0)
            depth[node] = below + 1
            if depth[node] > MAX_VIEW_DEPTH:
                raise CommandError(ErrorCode.ViewDepthLimitExceeded,
                                   f"View depth too deep or view cycle detected. Maximum depth "
                                   f"is {MAX_VIEW_DEPTH}")
        return depth[node]

    visit(name, [])
    for other in sorted(graph):
        visit(other, [])


def _validated(catalog: Catalog, db: str, name: str, view_on: Any,
               pipeline: Any) -> dict[str, Any]:
    if type(view_on) is not str:
        raise CommandError(ErrorCode.TypeMismatch, "'viewOn' must be a string naming a "
                           "collection or view of the same database")
    if not view_on:
        raise CommandError(ErrorCode.BadValue, "'viewOn' cannot be empty")
    if not isinstance(pipeline, list):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field 'pipeline' is the wrong type, expected type 'array'")
    _check_stages(pipeline, None)
    new = {"viewOn": view_on, "pipeline": pipeline}
    _check_graph(catalog, db, name, new)
    return new


# -- catalog changes ----------------------------------------------------------------------------


def _views_collection(ctx: CommandContext) -> Collection:
    return ctx.state.store.ensure_collection(ctx.unit, ctx.db, VIEWS_COLLECTION)


def _publish(ctx: CommandContext, op: str, name: str, view: dict[str, Any] | None) -> None:
    """The change event of a view's creation, change or drop (``createView``, ``modifyView``,
    ``dropView``: streams show them as create/modify/drop, see :mod:`.change_streams`)."""
    if ctx.db in INTERNAL_DATABASES:
        return
    description = None if view is None else {"viewOn": view.get("viewOn"),
                                              "pipeline": view.get("pipeline", [])}
    ctx.unit.add(ChangeEntry(op=op, db=ctx.db, coll=name, cluster_time=Timestamp(0, 0),
                             wall_time=datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
                             operation_description=description))


def create(ctx: CommandContext, name: str, options: dict[str, Any]) -> None:
    """``create`` with ``viewOn`` (the name is free, checked by the caller)."""
    if ctx.transaction is not None:
        raise CommandError(ErrorCode.OperationNotSupportedInTransaction,
                           "Cannot create a view in a multi-document transaction.")
    if name.startswith("system."):
        raise CommandError(ErrorCode.InvalidNamespace,
                           f"Cannot create a view called '{name}': view names may not start "
                           "with 'system.'")
    not_for_views = sorted(k for k in options if k not in ("viewOn", "pipeline", "collation"))
    if not_for_views:
        raise CommandError(ErrorCode.InvalidOptions,
                           f"option not supported on a view: {not_for_views[0]}")
    store = ctx.state.store
    doc = {"_id": f"{ctx.db}.{name}",
           **_validated(store.catalog, ctx.db, name, options["viewOn"],
                        options.get("pipeline", []))}
    collation = options.get("collation")
    if collation and collation.get("locale") != "simple":
        # A view's collation is the default of every read through it, $group and $sort
        # included; the pipeline engine compares binary, so refuse rather than ignore it.
        raise CommandError(ErrorCode.BadValue, "views with a collation other than {locale: "
                           "'simple'} are not supported by the embedded server")
    store.insert(ctx.unit, _views_collection(ctx), doc)
    _publish(ctx, "createView", name, doc)


def modify(ctx: CommandContext, name: str, changes: dict[str, Any]) -> None:
    """``collMod`` of a view: a new ``viewOn`` and/or ``pipeline`` (the other one is kept)."""
    others = sorted(k for k in changes if k not in ("viewOn", "pipeline"))
    if others:
        raise CommandError(ErrorCode.InvalidOptions,
                           f"option not supported on a view: {others[0]}")
    store = ctx.state.store
    old = definition(store.catalog, ctx.db, name)
    assert old is not None
    view_on = changes.get("viewOn", old.get("viewOn"))
    pipeline = changes.get("pipeline", old.get("pipeline", []))
    new = {**old, **_validated(store.catalog, ctx.db, name, view_on, pipeline)}
    store.replace(ctx.unit, _views_collection(ctx), old, new, True)
    _publish(ctx, "modifyView", name, new)


def drop(ctx: CommandContext, name: str) -> dict[str, Any]:
    """``drop`` of a view: its definition goes, nothing else."""
    store = ctx.state.store
    old = definition(store.catalog, ctx.db, name)
    assert old is not None
    store.delete(ctx.unit, _views_collection(ctx), old)
    _publish(ctx, "dropView", name, None)
    return {"ns": f"{ctx.db}.{name}", "ok": 1.0}


# -- reads --------------------------------------------------------------------------------------


def resolve(catalog: Catalog, db: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The collection a view (chain) reads and the pipeline that makes the view from it."""
    pipeline: list[dict[str, Any]] = []
    seen = 0
    view = definition(catalog, db, name)
    while view is not None:
        seen += 1
        if seen > MAX_VIEW_DEPTH:
            raise CommandError(ErrorCode.ViewDepthLimitExceeded,
                               f"View depth too deep or view cycle detected. Maximum depth is "
                               f"{MAX_VIEW_DEPTH}")
        stored_on, stored_pipeline = view.get("viewOn"), view.get("pipeline", [])
        if type(stored_on) is not str or not isinstance(stored_pipeline, list):
            raise CommandError(ErrorCode.InvalidViewDefinition,
                               f"invalid view definition in {db}.{VIEWS_COLLECTION}: "
                               f"{view.get('_id')!r} needs a string viewOn and an array "
                               "pipeline")
        pipeline = list(stored_pipeline) + pipeline
        name = stored_on
        view = definition(catalog, db, name)
    return name, pipeline


class ViewReader:
    """Lets ``$lookup``/``$unionWith`` read other collections and views of one database."""

    def __init__(self, ctx: CommandContext) -> None:
        self._ctx = ctx

    def documents(self, collection: str) -> list[dict[str, Any]]:
        """Every document of a collection, or of a view (its pipeline applied)."""
        return run(self._ctx, collection, [])


def _scan(ctx: CommandContext, coll: Collection, query: dict[str, Any]) -> list[dict[str, Any]]:
    docs, _ = ctx.access.candidates(coll, query, None)
    variables = ctx.variables
    return [d for d in docs if engine.matches(query, d, variables)]


def run(ctx: CommandContext, name: str, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents of collection or view ``name`` through ``stages``."""
    base, pipeline = resolve(ctx.state.store.catalog, ctx.db, name)
    pipeline = pipeline + stages
    coll = ctx.access.collection(ctx.db, base)
    query: dict[str, Any] = {}
    if pipeline and "$match" in pipeline[0] and isinstance(pipeline[0]["$match"], dict) \
            and "$text" not in pipeline[0]["$match"] and "$where" not in pipeline[0]["$match"]:
        query, pipeline = engine.validate_filter(pipeline[0]["$match"]), pipeline[1:]
    source = _scan(ctx, coll, query) if coll is not None else []
    return engine.run_pipeline(source, pipeline, ViewReader(ctx), ctx.variables)


def find_stages(query: dict[str, Any], sort: list[tuple[str, int]] | None, skip: int,
                limit: int | None) -> list[dict[str, Any]]:
    """A find's filter, sort, skip and limit as aggregation stages (how mongod reads views)."""
    stages: list[dict[str, Any]] = []
    if query:
        stages.append({"$match": query})
    if sort:
        stages.append({"$sort": dict(sort)})
    if skip:
        stages.append({"$skip": skip})
    if limit:
        stages.append({"$limit": limit})
    return stages


def distinct_values(docs: list[dict[str, Any]], key: str) -> list[Any]:
    """``distinct`` over documents: array elements count one by one, in BSON order."""
    values: dict[Any, Any] = {}
    for doc in docs:
        value = get_path(doc, key)
        if value is MISSING:
            continue
        for item in value if isinstance(value, list) else [value]:
            values.setdefault(value_key(item), item)
    return [values[k] for k in sorted(values)]


def find(ctx: CommandContext, name: str, query: dict[str, Any],
         sort: list[tuple[str, int]] | None, skip: int, limit: int | None,
         projection: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """``find`` on a view: its filter, sort, skip and limit run after the view's pipeline, then
    the find projection."""
    docs = run(ctx, name, find_stages(query, sort, skip, limit))
    if not projection:
        return iter(docs)
    variables = ctx.variables
    return (engine.project(d, projection, variables, query) for d in docs)


def count(ctx: CommandContext, name: str, query: dict[str, Any], skip: int,
          limit: int | None) -> dict[str, Any]:
    """``count`` on a view (PyMongo's ``estimated_document_count`` sends it)."""
    return {"n": len(run(ctx, name, find_stages(query, None, skip, limit))), "ok": 1.0}


def distinct(ctx: CommandContext, name: str, key: str, query: dict[str, Any]) -> dict[str, Any]:
    """``distinct`` on a view."""
    docs = run(ctx, name, find_stages(query, None, 0, None))
    return {"values": distinct_values(docs, key), "ok": 1.0}
