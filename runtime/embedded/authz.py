"""Which privileges each command needs (``runtime db --auth``).

Commands fall into classes: reading documents, writing them, catalog metadata, managing
collections and indexes, database administration, user administration, cluster monitoring and
cluster administration (see :class:`~runtime.embedded.roles.Action`). A command not listed here
needs cluster administration, so a new command is closed until it is classified.

``admin.system.users`` holds every user's stored keys: touching it directly (find, aggregate,
insert, ..., or ``$lookup``/``$out``/``$merge`` naming it) needs ``root``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.embedded.roles import ANY_DATABASE, GLOBAL_ROLES, Action

Requirement = tuple[str, Action]  # (database or ANY_DATABASE, action)

#: Commands mongod runs before authentication (its ``requiresAuth() == false`` set).
PRE_AUTH_COMMANDS = frozenset({
    "hello", "isMaster", "ismaster", "saslStart", "saslContinue", "logout", "ping",
    "buildInfo", "buildinfo", "connectionStatus",
})

#: Commands any authenticated user may run (they act on the caller's own sessions, cursors and
#: transactions, or say nothing about data).
AUTHENTICATED_COMMANDS = frozenset({
    "endSessions", "startSession", "refreshSessions", "killSessions", "commitTransaction",
    "abortTransaction", "killCursors", "whatsmyuri", "listCommands", "listDatabases",
})

_DB_ACTIONS: dict[str, Action] = {
    **dict.fromkeys(("find", "count", "distinct", "getMore", "aggregate", "dataSize", "dbHash"),
                    Action.FIND),
    **dict.fromkeys(("listCollections", "listIndexes", "dbStats", "collStats"), Action.LIST),
    **dict.fromkeys(("insert", "update", "delete", "findAndModify", "findandmodify"),
                    Action.WRITE),
    **dict.fromkeys(("create", "createIndexes", "drop", "dropIndexes", "deleteIndexes"),
                    Action.MANAGE),
    **dict.fromkeys(("collMod", "dropDatabase", "validate", "profile", "planCacheClear",
                     "planCacheClearFilters", "planCacheListFilters"), Action.DB_ADMIN),
    **dict.fromkeys(("createUser", "updateUser", "dropUser", "dropAllUsersFromDatabase",
                     "grantRolesToUser", "revokeRolesFromUser", "usersInfo"),
                    Action.USER_ADMIN),
}

_CLUSTER_ACTIONS: dict[str, Action] = {
    **dict.fromkeys(("serverStatus", "getCmdLineOpts", "hostInfo", "getLog", "getParameter",
                     "replSetGetStatus", "getDefaultRWConcern", "top", "lockInfo",
                     "connPoolStats", "getClusterParameter", "replSetGetConfig"),
                    Action.CLUSTER_MONITOR),
    **dict.fromkeys(("setParameter", "killAllSessions", "configureFailPoint", "killOp",
                     "fsync", "fsyncUnlock", "logRotate", "dropConnections",
                     "setFeatureCompatibilityVersion"), Action.CLUSTER_ADMIN),
}

GLOBAL_ROLE_NAMES = frozenset(str(r) for r in GLOBAL_ROLES)
SYSTEM_USERS_DB, SYSTEM_USERS_COLL = "admin", "system.users"
_SYSTEM_USERS = (ANY_DATABASE, Action.SYSTEM_USERS)


def requirements(name: str, body: dict[str, Any], db: str,
                 caller: tuple[str, str] | None) -> list[Requirement]:
    """The privileges ``name`` needs; empty for commands any authenticated user may run.

    ``caller`` is the authenticated ``(db, user)``, for commands about oneself (usersInfo).
    """
    if name in PRE_AUTH_COMMANDS or name in AUTHENTICATED_COMMANDS:
        return []
    if name == "explain":
        inner = body.get("explain")
        if isinstance(inner, dict) and inner:
            return requirements(next(iter(inner)), inner, db, caller)
        return [(db, Action.FIND)]
    if name == "renameCollection":
        return _rename(body)
    if name == "usersInfo":
        return _users_info(body, db, caller)
    cluster = _CLUSTER_ACTIONS.get(name)
    action = _DB_ACTIONS.get(name)
    if cluster is not None or action is None:
        return [(ANY_DATABASE, cluster or Action.CLUSTER_ADMIN)]
    needed: list[Requirement] = [(db, action)]
    target = body.get(name)
    if db == SYSTEM_USERS_DB and target == SYSTEM_USERS_COLL:
        needed.append(_SYSTEM_USERS)
    if name == "dropDatabase" and db == SYSTEM_USERS_DB:
        needed.append(_SYSTEM_USERS)
    if name == "aggregate":
        needed += _pipeline(body, db)
    elif name in ("createUser", "updateUser", "grantRolesToUser") \
            and isinstance(body.get("roles"), list):
        needed += _role_scopes(body["roles"], db)
    return needed


def _role_scopes(roles: list[Any], db: str) -> list[Requirement]:
    """Granting a role needs user administration where the role holds (all databases for
    the global roles, so ``userAdmin`` on admin cannot hand out ``root``)."""
    needed: list[Requirement] = []
    for role in roles:
        if isinstance(role, dict):
            name, role_db = role.get("role"), role.get("db")
        else:
            name, role_db = role, db
        if not isinstance(role_db, str):
            continue  # the handler reports the malformed role
        needed.append((role_db, Action.USER_ADMIN))
        if name in GLOBAL_ROLE_NAMES:
            needed.append((ANY_DATABASE, Action.USER_ADMIN))
    return needed


def _rename(body: dict[str, Any]) -> list[Requirement]:
    needed: list[Requirement] = []
    for field, actions in (("renameCollection", (Action.FIND, Action.MANAGE)),
                           ("to", (Action.WRITE, Action.MANAGE))):
        namespace = body.get(field)
        if not isinstance(namespace, str) or "." not in namespace:
            continue  # the handler reports the bad namespace
        ns_db, coll = namespace.split(".", 1)
        needed += [(ns_db, a) for a in actions]
        if ns_db == SYSTEM_USERS_DB and coll == SYSTEM_USERS_COLL:
            needed.append(_SYSTEM_USERS)
    return needed or [(ANY_DATABASE, Action.CLUSTER_ADMIN)]


def _users_info(body: dict[str, Any], db: str,
                caller: tuple[str, str] | None) -> list[Requirement]:
    needed: list[Requirement] = []
    if body.get("showCredentials"):
        needed.append(_SYSTEM_USERS)
    if body.get("forAllDBs") or body.get("usersInfo") == {"forAllDBs": True}:
        return [*needed, (ANY_DATABASE, Action.USER_ADMIN)]
    value = body.get("usersInfo")
    targets = value if isinstance(value, list) else [value]
    for target in targets:
        if isinstance(target, str):
            who = (db, target)
        elif isinstance(target, dict) and isinstance(target.get("user"), str):
            who = (str(target.get("db", db)), target["user"])
        else:  # usersInfo: 1 lists the database's users
            needed.append((db, Action.USER_ADMIN))
            continue
        if who != caller:  # everyone may see their own user
            needed.append((who[0], Action.USER_ADMIN))
    return needed


def _pipeline(body: dict[str, Any], db: str) -> list[Requirement]:
    needed: list[Requirement] = []
    pipeline = body.get("pipeline")
    if isinstance(pipeline, list) and pipeline and isinstance(pipeline[0], dict):
        stream = pipeline[0].get("$changeStream")
        if isinstance(stream, dict) and stream.get("allChangesForCluster"):
            needed.append((ANY_DATABASE, Action.FIND))
    for stage, spec in _stages(pipeline):
        for target_db, coll, writes in _targets(stage, spec, db):
            needed.append((target_db, Action.WRITE if writes else Action.FIND))
            if writes:
                needed.append((target_db, Action.MANAGE))
            if target_db == SYSTEM_USERS_DB and coll == SYSTEM_USERS_COLL:
                needed.append(_SYSTEM_USERS)
    return needed


def _stages(value: Any) -> Iterator[tuple[str, Any]]:
    """Every ``($stage, spec)`` in a pipeline, sub-pipelines ($lookup, $facet, ...) included."""
    if isinstance(value, list):
        for item in value:
            yield from _stages(item)
    elif isinstance(value, dict):
        for key, spec in value.items():
            if isinstance(key, str) and key.startswith("$"):
                yield key, spec
            yield from _stages(spec)


def _targets(stage: str, spec: Any, db: str) -> Iterator[tuple[str, Any, bool]]:
    """Collections a stage reads or writes: ``(db, collection, writes)``."""
    if stage in ("$lookup", "$graphLookup") and isinstance(spec, dict):
        source = spec.get("from")
        if isinstance(source, dict):
            yield str(source.get("db", db)), source.get("coll"), False
        else:
            yield db, source, False
    elif stage == "$unionWith":
        coll = spec.get("coll") if isinstance(spec, dict) else spec
        yield db, coll, False
    elif stage == "$out":
        if isinstance(spec, dict):
            yield str(spec.get("db", db)), spec.get("coll"), True
        else:
            yield db, spec, True
    elif stage == "$merge":
        into = spec.get("into") if isinstance(spec, dict) else spec
        if isinstance(into, dict):
            yield str(into.get("db", db)), into.get("coll"), True
        else:
            yield db, into, True
