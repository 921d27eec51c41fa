"""``runtime db --users-file PATH``: users defined in a JSON or YAML file.

The file is a list of users, or a mapping with a ``users`` list; each user is::

    {user: alice, db: admin, password: s3cret, roles: [readWrite, {role: read, db: other}],
     mechanisms: [SCRAM-SHA-256]}        # db defaults to admin, mechanisms to both SCRAM ones

Passwords are turned into SCRAM keys when the server starts and are never kept or logged.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import yaml

from runtime.embedded.errors import CommandError
from runtime.embedded.roles import parse_roles
from runtime.embedded.users import Mechanism, User, new_user

FLAG = "--users-file"
_KNOWN_KEYS = frozenset({"user", "db", "password", "roles", "mechanisms"})


class UsersFileError(Exception):
    """The users file cannot be used; the message names the file, the entry and the fix."""


def permission_warning(path: Path) -> str | None:
    """A warning when the file is readable by group or others (it holds passwords)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{FLAG} {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(mode):04o}) although it holds passwords; run chmod 600 {path}")
    return None


def load_users(path: Path) -> list[User]:
    """Parse the file and derive each user's credentials; :class:`UsersFileError` if invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"{FLAG} {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"{FLAG} {path}: not UTF-8 text") from None
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" \
            else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        # The parser's message may quote the file (and so a password): say where, not what.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else \
            f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UsersFileError(f"{FLAG} {path}: not valid JSON/YAML{where}; it must be a list "
                             "of {user, db, password, roles}") from None
    if isinstance(data, dict) and "users" in data:
        data = data["users"]
    if not isinstance(data, list):
        raise UsersFileError(f"{FLAG} {path}: expected a list of users (or a mapping with a "
                             "'users' list)")
    users: list[User] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(data, start=1):
        user = _user(path, index, entry)
        if (user.db, user.name) in seen:
            raise UsersFileError(f"{FLAG} {path}: entry {index}: user {user.name}@{user.db} "
                                 "is defined twice")
        seen.add((user.db, user.name))
        users.append(user)
    return users


def _user(path: Path, index: int, entry: Any) -> User:
    where = f"{FLAG} {path}: entry {index}"
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: must be a mapping with user, password and roles")
    unknown = sorted(str(k) for k in entry if k not in _KNOWN_KEYS)
    if unknown:
        raise UsersFileError(f"{where}: unknown key {unknown[0]!r} (allowed: "
                             f"{', '.join(sorted(_KNOWN_KEYS))})")
    name, db, password = entry.get("user"), entry.get("db", "admin"), entry.get("password")
    if not isinstance(name, str) or not name:
        raise UsersFileError(f"{where}: 'user' must be a non-empty string")
    if not isinstance(db, str) or not db or db == "$external":
        raise UsersFileError(f"{where}: 'db' must be a database name (default admin)")
    if not isinstance(password, str) or not password:
        raise UsersFileError(f"{where}: 'password' must be a non-empty string")
    mechanisms = entry.get("mechanisms")
    try:
        roles = parse_roles(entry.get("roles", []), db, FLAG)
        chosen = None if mechanisms is None else [Mechanism(m) for m in mechanisms]
        user = new_user(name, db, password, roles, chosen)
    except CommandError as exc:
        raise UsersFileError(f"{where} ({name}@{db}): {exc.message}") from None
    except (ValueError, TypeError):
        raise UsersFileError(f"{where} ({name}@{db}): 'mechanisms' must be a list of "
                             f"{', '.join(m.value for m in Mechanism)}") from None
    user.from_file = True
    return user
