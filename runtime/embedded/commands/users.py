"""Authentication and user-management commands.

``saslStart``, ``saslContinue``, ``logout`` and ``connectionStatus`` authenticate a connection;
``createUser``, ``updateUser``, ``dropUser``, ``dropAllUsersFromDatabase``, ``usersInfo``,
``grantRolesToUser`` and ``revokeRolesFromUser`` manage the users stored in
``admin.system.users``. Who may run them is decided before they run (see
:mod:`runtime.embedded.authz`). Passwords are turned into SCRAM keys here and never stored,
echoed or logged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.roles import RoleGrant, parse_roles, privileges
from runtime.embedded.users import Mechanism, ScramCredential, User, new_user

_USER_FIELDS = frozenset({"pwd", "roles", "customData", "mechanisms", "digestPassword",
                          "authenticationRestrictions", "comment"})


async def sasl_start(ctx: CommandContext) -> dict[str, Any]:
    """Begin a SCRAM-SHA-256 / SCRAM-SHA-1 conversation."""
    return ctx.state.auth.sasl_start(ctx.body, ctx.db, ctx.connection)


async def sasl_continue(ctx: CommandContext) -> dict[str, Any]:
    """Continue the connection's SCRAM conversation."""
    return ctx.state.auth.sasl_continue(ctx.body, ctx.connection)


async def logout(ctx: CommandContext) -> dict[str, Any]:
    """Forget the user authenticated on this database."""
    ctx.state.auth.logout(ctx.db, ctx.connection)
    return {"ok": 1.0}


async def connection_status(ctx: CommandContext) -> dict[str, Any]:
    """The authenticated user and its roles (and privileges with ``showPrivileges``)."""
    user = ctx.state.auth.authenticated(ctx.connection)
    info: dict[str, Any] = {
        "authenticatedUsers": [{"user": user.name, "db": user.db}] if user else [],
        "authenticatedUserRoles": [g.to_document() for g in user.roles] if user else [],
    }
    if ctx.body.get("showPrivileges"):
        privs = sorted(privileges(user.roles)) if user else []
        info["authenticatedUserPrivileges"] = [
            {"resource": {"db": "" if scope == "*" else scope}, "actions": [str(action)]}
            for scope, action in privs]
    return {"authInfo": info, "ok": 1.0}


def _name(ctx: CommandContext) -> str:
    value = ctx.body.get(ctx.name)
    if not isinstance(value, str) or not value:
        raise CommandError(ErrorCode.TypeMismatch,
                           f"{ctx.name} needs the user name as a non-empty string, e.g. "
                           f"{{{ctx.name}: 'alice'}}")
    if ctx.db == "$external":
        raise CommandError(ErrorCode.BadValue,
                           f"{ctx.name}: users on $external are not supported; use a "
                           "database such as admin")
    return value


def _check_fields(ctx: CommandContext) -> None:
    from runtime.embedded.commands.registry import GENERIC_FIELDS

    for key in ctx.body:
        if key != ctx.name and key not in GENERIC_FIELDS and key not in _USER_FIELDS:
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field '{ctx.name}.{key}' is an unknown field.")


def _mechanisms(ctx: CommandContext) -> list[Mechanism] | None:
    raw = ctx.body.get("mechanisms")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise CommandError(ErrorCode.BadValue,
                           f"{ctx.name}: 'mechanisms' must be a non-empty array of "
                           "SCRAM-SHA-1 and/or SCRAM-SHA-256")
    try:
        return [Mechanism(m) for m in raw]
    except ValueError:
        raise CommandError(ErrorCode.BadValue,
                           f"{ctx.name}: unknown mechanism in 'mechanisms'; use "
                           "SCRAM-SHA-1 and/or SCRAM-SHA-256") from None


def _password(ctx: CommandContext, required: bool) -> str | None:
    if ctx.body.get("pwd") is None:  # IDL: an optional field holding null is absent
        if required:
            raise CommandError(ErrorCode.BadValue,
                               "Must provide a 'pwd' field for all user documents, except "
                               "those with '$external' as the user's source db")
        return None
    pwd = ctx.body["pwd"]
    if not isinstance(pwd, str):
        raise CommandError(ErrorCode.TypeMismatch,
                           f"BSON field '{ctx.name}.pwd' is the wrong type, expected "
                           "type 'string'")
    if not pwd:
        raise CommandError(ErrorCode.BadValue, "User passwords must not be empty")
    if ctx.body.get("digestPassword") is False:
        raise CommandError(ErrorCode.BadValue,
                           f"{ctx.name}: digestPassword: false is not supported (the "
                           "server derives SCRAM keys itself); leave it out")
    return pwd


def _custom_data(ctx: CommandContext) -> dict[str, Any] | None:
    custom = ctx.body.get("customData")
    if custom is not None and not isinstance(custom, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           f"BSON field '{ctx.name}.customData' is the wrong type, "
                           "expected type 'object'")
    return custom


def _existing(ctx: CommandContext, name: str) -> User:
    user = ctx.state.auth.users.get(ctx.db, name)
    if user is None:
        raise CommandError(ErrorCode.UserNotFound,
                           f"Could not find user \"{name}\" for db \"{ctx.db}\"")
    if user.from_file:
        raise CommandError(ErrorCode.BadValue,
                           f"{ctx.name}: user {name}@{ctx.db} is defined in --users-file; "
                           "edit that file and restart the server to change it")
    return dataclasses.replace(user)  # the registry's copy is shared: change a new one


async def create_user(ctx: CommandContext) -> dict[str, Any]:
    """Create a user with SCRAM credentials (both mechanisms unless ``mechanisms`` says)."""
    _check_fields(ctx)
    name = _name(ctx)
    password = _password(ctx, required=True)
    assert password is not None
    if "roles" not in ctx.body:
        raise CommandError(ErrorCode.BadValue, "createUser needs a 'roles' array (it may be empty)")
    roles = parse_roles(ctx.body["roles"], ctx.db, "createUser")
    registry = ctx.state.auth.users
    if registry.get(ctx.db, name) is not None:
        raise CommandError(ErrorCode.UserAlreadyExists, f"User \"{name}@{ctx.db}\" already exists")
    user = new_user(name, ctx.db, password, roles, _mechanisms(ctx))
    user.custom_data = _custom_data(ctx)
    registry.save(ctx.unit, user)
    return {"ok": 1.0}


async def update_user(ctx: CommandContext) -> dict[str, Any]:
    """Change a user's password, roles, mechanisms or customData."""
    _check_fields(ctx)
    name = _name(ctx)
    user = _existing(ctx, name)
    password = _password(ctx, required=False)
    mechanisms = _mechanisms(ctx)
    if password is None and mechanisms is None and ctx.body.get("roles") is None \
            and ctx.body.get("customData") is None:
        raise CommandError(ErrorCode.BadValue,
                           "updateUser: nothing to update; give pwd, roles, mechanisms or "
                           "customData")
    if password is not None:
        chosen = mechanisms or [Mechanism(m) for m in user.mechanisms] or list(Mechanism)
        user.credentials = {m: ScramCredential.derive(m, name, password) for m in chosen}
    elif mechanisms is not None:
        missing = [m for m in mechanisms if m not in user.credentials]
        if missing:
            raise CommandError(ErrorCode.BadValue,
                               f"updateUser: adding {missing[0]} needs the password; "
                               "give pwd as well")
        user.credentials = {m: c for m, c in user.credentials.items() if m in mechanisms}
    if ctx.body.get("roles") is not None:
        user.roles = parse_roles(ctx.body["roles"], ctx.db, "updateUser")
    if ctx.body.get("customData") is not None:
        user.custom_data = _custom_data(ctx)
    ctx.state.auth.users.save(ctx.unit, user)
    return {"ok": 1.0}


async def drop_user(ctx: CommandContext) -> dict[str, Any]:
    """Remove a user; connections authenticated as it lose their access at once."""
    name = _name(ctx)
    if not ctx.state.auth.users.delete(ctx.unit, ctx.db, name):
        raise CommandError(ErrorCode.UserNotFound,
                           f"Could not find user \"{name}\" for db \"{ctx.db}\"")
    return {"ok": 1.0}


async def drop_all_users(ctx: CommandContext) -> dict[str, Any]:
    """Remove every stored user of the database."""
    registry = ctx.state.auth.users
    dropped = 0
    for user in registry.users(ctx.db):
        if not user.from_file and registry.delete(ctx.unit, user.db, user.name):
            dropped += 1
    return {"n": dropped, "ok": 1.0}


def _grant_change(ctx: CommandContext, grant: bool) -> dict[str, Any]:
    name = _name(ctx)
    user = _existing(ctx, name)
    changes = parse_roles(ctx.body.get("roles"), ctx.db, ctx.name)
    roles: list[RoleGrant] = list(user.roles)
    for role in changes:
        if grant and role not in roles:
            roles.append(role)
        elif not grant and role in roles:
            roles.remove(role)
    user.roles = roles
    ctx.state.auth.users.save(ctx.unit, user)
    return {"ok": 1.0}


async def grant_roles(ctx: CommandContext) -> dict[str, Any]:
    """Add roles to a user."""
    return _grant_change(ctx, grant=True)


async def revoke_roles(ctx: CommandContext) -> dict[str, Any]:
    """Remove roles from a user."""
    return _grant_change(ctx, grant=False)


async def users_info(ctx: CommandContext) -> dict[str, Any]:
    """Users of the database, named users, or all (``forAllDBs``); keys only with
    ``showCredentials`` (root)."""
    registry = ctx.state.auth.users
    value = ctx.body.get("usersInfo")
    show = bool(ctx.body.get("showCredentials"))
    if ctx.body.get("forAllDBs") or value == {"forAllDBs": True}:
        found = registry.users()
    elif value == 1 or value == 1.0:
        found = registry.users(ctx.db)
    else:
        found = []
        for target in value if isinstance(value, list) else [value]:
            if isinstance(target, str):
                who = (ctx.db, target)
            elif isinstance(target, dict) and isinstance(target.get("user"), str) \
                    and isinstance(target.get("db", ctx.db), str):
                who = (target.get("db", ctx.db), target["user"])
            else:
                raise CommandError(ErrorCode.BadValue,
                                   "usersInfo takes 1, a user name, {user, db}, an array "
                                   "of those, or {forAllDBs: true}")
            user = registry.get(*who)
            if user is not None:
                found.append(user)
    return {"users": [u.info(show) for u in found], "ok": 1.0}
