"""Catalog commands: collections, databases and indexes."""

from __future__ import annotations

from typing import Any

from bson.int64 import Int64

from runtime.embedded import collation, engine, json_schema, views
from runtime.embedded.commands import arguments
from runtime.embedded.commands.catalog_args import (
    check_bool,
    check_collection_options,
    check_filter,
    wrong_type,
)
from runtime.embedded.commands.registry import (
    GENERIC_FIELDS,
    CommandContext,
    doc_option,
)
from runtime.embedded.cursors import first_batch_reply
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.indexes import check_index_spec, parse_index_spec, ttl_problem
from runtime.embedded.names import check_collection, check_new_collection, split_namespace
from runtime.embedded.storage import ID_INDEX, Collection

_CREATE_OPTIONS = {"capped", "size", "max", "validator", "validationLevel", "validationAction",
                   "changeStreamPreAndPostImages", "collation", "timeseries", "expireAfterSeconds",
                   "clusteredIndex", "storageEngine", "indexOptionDefaults", "viewOn", "pipeline",
                   "comment", "encryptedFields"}


# Fields create and collMod accept besides the options they store.
_CREATE_FIELDS = _CREATE_OPTIONS | {"create", "autoIndexId", "idIndex", "encryptedFields",
                                    "changeStreamPreAndPostImages", "temp", "flags"}
_COLL_MOD_FIELDS = _CREATE_OPTIONS | {"collMod", "index", "dryRun", "cappedSize", "cappedMax",
                                      "recordPreImages"}


def _reject_unknown_fields(ctx: CommandContext, known: set[str]) -> None:
    for key in ctx.body:
        if key not in known and key not in GENERIC_FIELDS:
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field '{ctx.name}.{key}' is an unknown field.")


def _require(ctx: CommandContext, name: str) -> Collection:
    coll = ctx.access.collection(ctx.db, name)
    if coll is None:
        raise CommandError(ErrorCode.NamespaceNotFound, f"ns does not exist: {ctx.namespace(name)}")
    return coll


async def create(ctx: CommandContext) -> dict[str, Any]:
    """Create a collection with options."""
    name = ctx.collection_name()
    _reject_unknown_fields(ctx, _CREATE_FIELDS)
    check_new_collection(ctx.db, name)
    check_collection_options(ctx.body, "create")
    json_schema.check_validator_options(ctx.body)
    if ctx.access.collection(ctx.db, name) is not None:
        raise CommandError(ErrorCode.NamespaceExists,
                           f"Collection {ctx.namespace(name)} already exists.")
    if views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
        raise CommandError(ErrorCode.NamespaceExists,
                           f"Namespace {ctx.namespace(name)} already exists (it is a view).")
    options = {k: v for k, v in ctx.body.items()  # IDL: an optional field holding null is absent
               if k in _CREATE_OPTIONS and k not in ("comment",) and v is not None}
    if "viewOn" in options or "pipeline" in options:
        if "viewOn" not in options:
            raise CommandError(ErrorCode.InvalidOptions,
                               "'pipeline' requires 'viewOn' to also be specified")
        views.create(ctx, name, options)
        return {"ok": 1.0}
    if collation.given(options.get("collation")):  # stored complete, as mongod lists it
        default = collation.parse(options.pop("collation"))
        if default is not None:
            options["collation"] = default.to_document()
    ctx.state.store.create_collection(ctx.unit, ctx.db, name, options)
    return {"ok": 1.0}


async def coll_mod(ctx: CommandContext) -> dict[str, Any]:
    """Change collection options (e.g. ``changeStreamPreAndPostImages``) or an index's TTL."""
    _reject_unknown_fields(ctx, _COLL_MOD_FIELDS)
    name = ctx.collection_name()
    check_collection(ctx.db, name)
    check_collection_options(ctx.body, "collMod")
    json_schema.check_validator_options(ctx.body)
    index_change = doc_option(ctx.body, "index")
    if index_change is not None:
        _check_index_change(index_change)
    changes = {k: v for k, v in ctx.body.items() if k in _CREATE_OPTIONS and k != "comment"}
    if views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
        views.modify(ctx, name, {**changes, **({"index": index_change} if index_change else {})})
        return {"ok": 1.0}
    if "viewOn" in changes or "pipeline" in changes:
        raise CommandError(ErrorCode.InvalidOptions,
                           "'viewOn' and 'pipeline' can only be changed on a view")
    coll = _require(ctx, name)
    reply: dict[str, Any] = {"ok": 1.0}
    if index_change is not None:
        target = None
        for index in coll.indexes.values():
            if index.spec.name == index_change.get("name") or dict(index.spec.key) == \
                    index_change.get("keyPattern"):
                target = index
        if target is None:
            raise CommandError(ErrorCode.IndexNotFound, "cannot find index for collMod")
        if "expireAfterSeconds" in index_change:
            if target.spec.name == ID_INDEX or len(target.spec.key) != 1:
                raise CommandError(ErrorCode.InvalidOptions,
                                   f"collMod: index '{target.spec.name}' cannot become a "
                                   "TTL index: TTL indexes are single-field indexes on a field "
                                   "other than _id")
            reply["expireAfterSeconds_old"] = target.spec.expire_after_seconds
            ctx.state.store.set_index_ttl(ctx.unit, coll, target.spec.name,
                                          float(index_change["expireAfterSeconds"]))
            reply["expireAfterSeconds_new"] = index_change["expireAfterSeconds"]
    # Every collMod is a "modify" event, even one that changes nothing (as in MongoDB).
    ctx.state.store.modify_collection(
        ctx.unit, coll, changes, {"index": index_change} if index_change is not None else {})
    return reply


_INDEX_CHANGE_FIELDS = frozenset({"name", "keyPattern", "expireAfterSeconds", "hidden",
                                  "unique", "prepareUnique", "forceNonUnique"})


def _check_index_change(change: dict[str, Any]) -> None:
    """``collMod.index``: types (TypeMismatch 14), unknown fields (40415), the TTL rule
    (InvalidOptions 72)."""
    unknown = sorted(k for k in change if k not in _INDEX_CHANGE_FIELDS)
    if unknown:
        raise CommandError(ErrorCode.Location40415,
                           f"BSON field 'collMod.index.{unknown[0]}' is an unknown field.")
    if "name" in change and not isinstance(change["name"], str):
        raise wrong_type("collMod.index.name", change["name"], "string")
    if "keyPattern" in change and not isinstance(change["keyPattern"], dict):
        raise wrong_type("collMod.index.keyPattern", change["keyPattern"], "object")
    if ("name" in change) == ("keyPattern" in change):
        raise CommandError(ErrorCode.InvalidOptions,
                           "collMod.index needs exactly one of 'name' and 'keyPattern' to "
                           "say which index to change")
    for flag in ("hidden", "unique", "prepareUnique", "forceNonUnique"):
        check_bool(change, flag, "collMod.index")
    if "expireAfterSeconds" in change:
        ttl = change["expireAfterSeconds"]
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise wrong_type("collMod.index.expireAfterSeconds", ttl, "long")
        problem = ttl_problem(ttl)
        if problem is not None:
            raise CommandError(ErrorCode.InvalidOptions, f"collMod: {problem}")


async def drop(ctx: CommandContext) -> dict[str, Any]:
    """Drop a collection."""
    name = ctx.collection_name()
    check_collection(ctx.db, name)
    if views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
        return views.drop(ctx, name)
    coll = _require(ctx, name)
    count = len(coll.indexes)
    ctx.state.store.drop_collection(ctx.unit, coll)
    return {"nIndexesWas": count, "ns": ctx.namespace(name), "ok": 1.0}


async def drop_database(ctx: CommandContext) -> dict[str, Any]:
    """Drop every collection of the database."""
    if ctx.db in ctx.state.store.catalog.databases:
        ctx.state.store.drop_database(ctx.unit, ctx.db)
    return {"dropped": ctx.db, "ok": 1.0}


async def rename_collection(ctx: CommandContext) -> dict[str, Any]:
    """Rename ``db.a`` to ``db.b`` (``dropTarget`` honoured)."""
    source, target = ctx.body.get("renameCollection"), ctx.body.get("to")
    src_db, src_name = split_namespace(source, "renameCollection")
    dst_db, dst_name = split_namespace(target, "renameCollection.to")
    check_bool(ctx.body, "dropTarget", "renameCollection")
    check_bool(ctx.body, "stayTemp", "renameCollection")
    check_new_collection(dst_db, dst_name)
    if (src_db, src_name) == (dst_db, dst_name):
        raise CommandError(ErrorCode.IllegalOperation,
                           f"Can't rename a collection to itself: {source}")
    store = ctx.state.store
    if views.definition(store.catalog, src_db, src_name) is not None:
        raise CommandError(ErrorCode.CommandNotSupportedOnView, f"cannot rename view: {source}")
    if views.definition(store.catalog, dst_db, dst_name) is not None:
        raise CommandError(ErrorCode.NamespaceExists,
                           f"a view already exists with that name: {target}")
    coll = store.catalog.get(src_db, src_name)
    if coll is None:
        raise CommandError(ErrorCode.NamespaceNotFound,
                           f"Source collection {source} does not exist")
    existing = store.catalog.get(dst_db, dst_name)
    if existing is not None:
        if not ctx.body.get("dropTarget"):
            raise CommandError(ErrorCode.NamespaceExists, f"target namespace {target} exists")
        store.drop_collection(ctx.unit, existing)
    store.rename_collection(ctx.unit, coll, dst_db, dst_name)
    return {"ok": 1.0}


async def list_collections(ctx: CommandContext) -> dict[str, Any]:
    """Collections of the database, filtered."""
    check_bool(ctx.body, "nameOnly", "listCollections")
    check_bool(ctx.body, "authorizedCollections", "listCollections")
    query = engine.validate_filter(check_filter(ctx.body, "listCollections"))
    name_only = bool(ctx.body.get("nameOnly"))
    infos = []
    every = [c.info() for c in ctx.state.store.catalog.collections(ctx.db)]
    every += views.list_infos(ctx.state.store.catalog, ctx.db)
    for info in sorted(every, key=lambda i: str(i["name"])):
        if engine.matches(query, info, ctx.variables):
            infos.append({"name": info["name"], "type": info["type"]} if name_only else info)
    batch_size = arguments.cursor_batch_size(ctx.body)
    return first_batch_reply(ctx.state.cursors, f"{ctx.db}.$cmd.listCollections", iter(infos),
                             batch_size)


async def list_databases(ctx: CommandContext) -> dict[str, Any]:
    """Databases that hold at least one collection."""
    check_bool(ctx.body, "nameOnly", "listDatabases")
    check_bool(ctx.body, "authorizedDatabases", "listDatabases")
    query = engine.validate_filter(check_filter(ctx.body, "listDatabases"))
    databases = []
    for name in sorted(ctx.state.store.catalog.databases):
        entry: dict[str, Any] = {"name": name, "sizeOnDisk": Int64(0), "empty": False}
        if engine.matches(query, entry, ctx.variables):
            databases.append({"name": name} if ctx.body.get("nameOnly") else entry)
    return {"databases": databases, "totalSize": Int64(0), "totalSizeMb": Int64(0), "ok": 1.0}


async def create_indexes(ctx: CommandContext) -> dict[str, Any]:
    """Create indexes (existing identical ones are a no-op; conflicting ones are errors)."""
    name = ctx.collection_name()
    raw = ctx.body.get("indexes")
    if raw is None:
        raise CommandError(ErrorCode.Location40414,
                           "BSON field 'createIndexes.indexes' is missing but a "
                           "required field")
    if not isinstance(raw, list):
        raise wrong_type("createIndexes.indexes", raw, "array")
    if not raw:
        raise CommandError(ErrorCode.BadValue, "Must specify at least one index to create")
    current = ctx.access.collection(ctx.db, name)  # its default collation applies to new indexes
    default = current.options.get("collation") if current is not None else None
    specs = [parse_index_spec(check_index_spec(r, i), default) for i, r in enumerate(raw)]
    views.refuse(ctx.state.store.catalog, ctx.db, name)
    created = ctx.access.collection(ctx.db, name) is None
    coll = ctx.access.ensure(ctx.db, name)
    before = len(coll.indexes)
    store = ctx.state.store
    for spec in specs:
        same_name = coll.indexes.get(spec.name)
        same_key = next((i for i in coll.indexes.values() if i.spec.key == spec.key and
                         i.collation == spec.collation), None)  # collations may differ
        if same_name is not None or same_key is not None:
            existing = same_name or same_key
            assert existing is not None
            if existing.spec.to_document() == spec.to_document():
                continue
            if same_name is not None and same_name.spec.key != spec.key:
                raise CommandError(ErrorCode.IndexKeySpecsConflict,
                                   f"An existing index has the same name as the requested "
                                   f"index but a different key: {spec.name}")
            raise CommandError(ErrorCode.IndexOptionsConflict,
                               f"An equivalent index already exists with a different name "
                               f"or options: {existing.spec.name}")
        store.create_index(ctx.unit, coll, spec)
    return {"numIndexesBefore": before, "numIndexesAfter": len(coll.indexes),
            "createdCollectionAutomatically": created, "ok": 1.0}


async def list_indexes(ctx: CommandContext) -> dict[str, Any]:
    """The indexes of a collection."""
    name = ctx.collection_name()
    views.refuse(ctx.state.store.catalog, ctx.db, name)
    coll = _require(ctx, name)
    docs = [i.spec.to_document() for i in coll.indexes.values()]
    batch_size = arguments.cursor_batch_size(ctx.body)
    return first_batch_reply(ctx.state.cursors, ctx.namespace(f"$cmd.listIndexes.{name}"),
                             iter(docs), batch_size)


async def drop_indexes(ctx: CommandContext) -> dict[str, Any]:
    """Drop one index by name or key, several by name, or all but ``_id_`` with ``"*"``."""
    wanted = ctx.body.get("index")
    if wanted is None:
        raise CommandError(ErrorCode.Location40414,
                           "BSON field 'dropIndexes.index' is missing but a required "
                           "field")
    if isinstance(wanted, list) and not all(type(n) is str for n in wanted):
        bad = next(n for n in wanted if type(n) is not str)
        raise wrong_type("dropIndexes.index", bad, "string")
    if not isinstance(wanted, str | list | dict):
        raise wrong_type("dropIndexes.index", wanted, "string, array or object")
    views.refuse(ctx.state.store.catalog, ctx.db, ctx.collection_name())
    coll = _require(ctx, ctx.collection_name())
    count = len(coll.indexes)
    names: list[str]
    if wanted == "*":
        names = [n for n in coll.indexes if n != ID_INDEX]
    elif type(wanted) is str:
        names = [wanted]
    elif isinstance(wanted, list):
        names = list(wanted)
    elif isinstance(wanted, dict):
        names = [i.spec.name for i in coll.indexes.values() if dict(i.spec.key) == wanted]
        if not names:
            raise CommandError(ErrorCode.IndexNotFound, f"can't find index with key: {wanted}")
    else:
        raise CommandError(ErrorCode.TypeMismatch,
                           "'index' must be a name, a key pattern, a list or '*'")
    for name in names:
        if name == ID_INDEX:
            raise CommandError(ErrorCode.InvalidOptions, "cannot drop _id index")
        if name not in coll.indexes:
            raise CommandError(ErrorCode.IndexNotFound, f"index not found with name [{name}]")
    for name in names:
        ctx.state.store.drop_index(ctx.unit, coll, name)
    return {"nIndexesWas": count, "ok": 1.0}


async def db_stats(ctx: CommandContext) -> dict[str, Any]:
    """Rough statistics of a database."""
    colls = ctx.state.store.catalog.collections(ctx.db)
    return {"db": ctx.db, "collections": len(colls),
            "views": len(views.list_infos(ctx.state.store.catalog, ctx.db)),
            "objects": sum(len(c.docs) for c in colls),
            "indexes": sum(len(c.indexes) for c in colls), "ok": 1.0}


async def coll_stats(ctx: CommandContext) -> dict[str, Any]:
    """Rough statistics of a collection."""
    views.refuse(ctx.state.store.catalog, ctx.db, ctx.collection_name())
    coll = _require(ctx, ctx.collection_name())
    return {"ns": coll.namespace, "count": len(coll.docs), "nindexes": len(coll.indexes),
            "ok": 1.0}
