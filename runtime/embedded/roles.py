"""Built-in roles and the privileges they grant (a subset of MongoDB's, same names).

A privilege is an :class:`Action` on a scope: one database, or :data:`ANY_DATABASE` (every
database and the cluster itself). Database roles (``read``, ``readWrite``, ``dbAdmin``,
``userAdmin``, ``dbOwner``) grant their actions on the database they are granted on; the
``...AnyDatabase`` roles, ``clusterMonitor``, ``clusterAdmin`` and ``root`` exist only in the
``admin`` database and grant theirs on every database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runtime.embedded.errors import CommandError, ErrorCode

#: The scope of a privilege that holds on every database and on the cluster.
ANY_DATABASE = "*"


class Action(StrEnum):
    """What a command needs to be allowed to do."""

    FIND = "find"  # read documents (find, aggregate, count, distinct, getMore, change streams)
    WRITE = "write"  # insert, update, delete, findAndModify
    LIST = "list"  # collection and index metadata (listCollections, listIndexes, stats)
    MANAGE = "manage"  # create and drop collections and indexes, rename within a database
    DB_ADMIN = "dbAdmin"  # collMod, dropDatabase
    USER_ADMIN = "userAdmin"  # createUser, dropUser, updateUser, usersInfo, grant/revoke
    LIST_DATABASES = "listDatabases"  # every database, not only those the user may use
    CLUSTER_MONITOR = "clusterMonitor"  # serverStatus, getCmdLineOpts, hostInfo, getParameter
    CLUSTER_ADMIN = "clusterAdmin"  # setParameter, killAllSessions, configureFailPoint
    SYSTEM_USERS = "systemUsers"  # admin.system.users itself (stored keys): root only


class BuiltinRole(StrEnum):
    """The roles this server knows."""

    READ = "read"
    READ_WRITE = "readWrite"
    DB_ADMIN = "dbAdmin"
    USER_ADMIN = "userAdmin"
    DB_OWNER = "dbOwner"
    READ_ANY_DATABASE = "readAnyDatabase"
    READ_WRITE_ANY_DATABASE = "readWriteAnyDatabase"
    DB_ADMIN_ANY_DATABASE = "dbAdminAnyDatabase"
    USER_ADMIN_ANY_DATABASE = "userAdminAnyDatabase"
    CLUSTER_MONITOR = "clusterMonitor"
    CLUSTER_ADMIN = "clusterAdmin"
    ROOT = "root"


_READ = frozenset({Action.FIND, Action.LIST})
_READ_WRITE = _READ | {Action.WRITE, Action.MANAGE}
_DB_ADMIN = frozenset({Action.LIST, Action.MANAGE, Action.DB_ADMIN})
_USER_ADMIN = frozenset({Action.USER_ADMIN})

ROLE_ACTIONS: dict[BuiltinRole, frozenset[Action]] = {
    BuiltinRole.READ: _READ,
    BuiltinRole.READ_WRITE: _READ_WRITE,
    BuiltinRole.DB_ADMIN: _DB_ADMIN,
    BuiltinRole.USER_ADMIN: _USER_ADMIN,
    BuiltinRole.DB_OWNER: _READ_WRITE | _DB_ADMIN | _USER_ADMIN,
    BuiltinRole.READ_ANY_DATABASE: _READ | {Action.LIST_DATABASES},
    BuiltinRole.READ_WRITE_ANY_DATABASE: _READ_WRITE | {Action.LIST_DATABASES},
    BuiltinRole.DB_ADMIN_ANY_DATABASE: _DB_ADMIN | {Action.LIST_DATABASES},
    BuiltinRole.USER_ADMIN_ANY_DATABASE: _USER_ADMIN | {Action.LIST_DATABASES},
    BuiltinRole.CLUSTER_MONITOR: frozenset({Action.CLUSTER_MONITOR, Action.LIST_DATABASES}),
    BuiltinRole.CLUSTER_ADMIN: frozenset({Action.CLUSTER_MONITOR, Action.CLUSTER_ADMIN,
                                          Action.LIST_DATABASES}),
    BuiltinRole.ROOT: frozenset(Action),
}

#: Roles that exist only in ``admin`` and grant their actions on every database.
GLOBAL_ROLES = frozenset({
    BuiltinRole.READ_ANY_DATABASE, BuiltinRole.READ_WRITE_ANY_DATABASE,
    BuiltinRole.DB_ADMIN_ANY_DATABASE, BuiltinRole.USER_ADMIN_ANY_DATABASE,
    BuiltinRole.CLUSTER_MONITOR, BuiltinRole.CLUSTER_ADMIN, BuiltinRole.ROOT,
})

#: A role that grants each action, named in "not authorized" messages as a way out.
SUGGESTED_ROLE: dict[Action, str] = {
    Action.FIND: "read", Action.WRITE: "readWrite", Action.LIST: "read",
    Action.MANAGE: "readWrite", Action.DB_ADMIN: "dbAdmin", Action.USER_ADMIN: "userAdmin",
    Action.LIST_DATABASES: "readAnyDatabase", Action.CLUSTER_MONITOR: "clusterMonitor",
    Action.CLUSTER_ADMIN: "clusterAdmin", Action.SYSTEM_USERS: "root",
}


@dataclass(frozen=True, order=True)
class RoleGrant:
    """A role granted to a user: ``{role, db}``."""

    role: BuiltinRole
    db: str

    def to_document(self) -> dict[str, str]:
        """``{role, db}`` as stored in ``admin.system.users``."""
        return {"role": str(self.role), "db": self.db}

    @property
    def scope(self) -> str:
        """The database the role's actions hold on (:data:`ANY_DATABASE` for global roles)."""
        return ANY_DATABASE if self.role in GLOBAL_ROLES else self.db


def parse_role(value: Any, default_db: str, command: str) -> RoleGrant:
    """A role as a command or users file names it: ``"read"`` (the user's db) or ``{role, db}``.

    Raises RoleNotFound (31) for an unknown role or a global role outside ``admin``.
    """
    if isinstance(value, str):
        name, db = value, default_db
    elif isinstance(value, dict) and isinstance(value.get("role"), str) \
            and isinstance(value.get("db"), str):
        name, db = value["role"], value["db"]
    else:
        raise CommandError(ErrorCode.BadValue, f"{command}: a role must be a role name string or a "
                           "{role: <name>, db: <database>} document")
    try:
        role = BuiltinRole(name)
    except ValueError:
        raise CommandError(ErrorCode.RoleNotFound,
                           f"Could not find role: {name}@{db} (known roles: "
                           f"{', '.join(r.value for r in BuiltinRole)})") from None
    if role in GLOBAL_ROLES and db != "admin":
        raise CommandError(ErrorCode.RoleNotFound,
                           f"Could not find role: {name}@{db} ({name} exists only in "
                           "the admin database; grant {role: '" + name + "', db: 'admin'})")
    return RoleGrant(role, db)


def parse_roles(value: Any, default_db: str, command: str) -> list[RoleGrant]:
    """A ``roles`` array; duplicates are dropped, order kept."""
    if not isinstance(value, list):
        raise CommandError(ErrorCode.TypeMismatch, f"{command}: 'roles' must be an array of roles")
    grants: list[RoleGrant] = []
    for item in value:
        grant = parse_role(item, default_db, command)
        if grant not in grants:
            grants.append(grant)
    return grants


def privileges(grants: Iterable[RoleGrant]) -> set[tuple[str, Action]]:
    """``(scope, action)`` pairs the roles grant."""
    result: set[tuple[str, Action]] = set()
    for grant in grants:
        for action in ROLE_ACTIONS[grant.role]:
            result.add((grant.scope, action))
    return result


def allows(privs: set[tuple[str, Action]], scope: str, action: Action) -> bool:
    """Whether ``privs`` allow ``action`` on ``scope`` (a database, or ANY_DATABASE)."""
    return (ANY_DATABASE, action) in privs or (scope, action) in privs
