"""Users and their SCRAM credentials.

Users live where mongod keeps them, in ``admin.system.users`` (``_id`` is ``"<db>.<user>"``),
so they persist with ``--dbpath``; only SCRAM keys are stored (salt, StoredKey, ServerKey,
iteration count), never the password. Users named in ``--users-file`` are kept in memory
next to them (the file stays the source of truth for those) and cannot be changed by commands.

MongoDB's SCRAM-SHA-1 hashes ``"<user>:mongo:<password>"`` with MD5 (hex) and uses that as the
password; SCRAM-SHA-256 uses the password itself after SASLprep (RFC 4013).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bson.binary import Binary
from scramp import ScramMechanism  # type: ignore[import-untyped]

from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import id_key
from runtime.embedded.roles import RoleGrant, parse_roles

USERS_DB = "admin"
USERS_COLLECTION = "system.users"


class Mechanism(StrEnum):
    """SASL mechanisms this server speaks."""

    SCRAM_SHA_1 = "SCRAM-SHA-1"
    SCRAM_SHA_256 = "SCRAM-SHA-256"


#: mongod's default iteration counts (scramSHA256IterationCount / scramIterationCount).
ITERATIONS = {Mechanism.SCRAM_SHA_1: 10_000, Mechanism.SCRAM_SHA_256: 15_000}


def mongo_sha1_password(user: str, password: str) -> str:
    """The password SCRAM-SHA-1 uses for MongoDB: hex MD5 of ``user:mongo:password``."""
    return hashlib.md5(f"{user}:mongo:{password}".encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ScramCredential:
    """What the server needs to verify one mechanism's proofs (no password)."""

    iteration_count: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, mechanism: Mechanism, user: str, password: str) -> ScramCredential:
        """Fresh salt and keys for ``password`` (raises CommandError if it cannot be prepared)."""
        secret = mongo_sha1_password(user, password) if mechanism is Mechanism.SCRAM_SHA_1 \
            else password
        try:
            salt, stored, server, count = ScramMechanism(str(mechanism)).make_auth_info(
                secret, ITERATIONS[mechanism])
        except Exception:  # scramp's SASLprep rejects prohibited characters
            raise CommandError(ErrorCode.BadValue,
                               "the password contains characters SASLprep prohibits "
                               "(control or unassigned characters); choose another") from None
        return cls(int(count), bytes(salt), stored, server)

    def to_document(self) -> dict[str, Any]:
        """The form mongod stores (base64 strings)."""
        return {"iterationCount": self.iteration_count,
                "salt": base64.b64encode(self.salt).decode(),
                "storedKey": base64.b64encode(self.stored_key).decode(),
                "serverKey": base64.b64encode(self.server_key).decode()}

    @classmethod
    def from_document(cls, doc: Any) -> ScramCredential:
        """Inverse of :meth:`to_document`; ValueError if malformed."""
        if not isinstance(doc, dict):
            raise ValueError("credential is not a document")
        count = doc.get("iterationCount")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("bad iterationCount")
        parts = [doc.get(k) for k in ("salt", "storedKey", "serverKey")]
        if not all(isinstance(p, str) for p in parts):
            raise ValueError("salt, storedKey and serverKey must be base64 strings")
        salt, stored, server = (base64.b64decode(p, validate=True) for p in parts)  # type: ignore[arg-type]
        return cls(count, salt, stored, server)


@dataclass
class User:
    """One user: name, authentication database, roles and credentials."""

    name: str
    db: str
    roles: list[RoleGrant]
    credentials: dict[Mechanism, ScramCredential]
    user_id: uuid.UUID = field(default_factory=uuid.uuid4)
    custom_data: dict[str, Any] | None = None
    from_file: bool = False

    @property
    def key(self) -> str:
        """``"<db>.<user>"``: the ``_id`` in ``admin.system.users``."""
        return f"{self.db}.{self.name}"

    @property
    def mechanisms(self) -> list[str]:
        """Mechanisms the user can authenticate with, in mongod's order."""
        return [str(m) for m in Mechanism if m in self.credentials]

    def to_document(self) -> dict[str, Any]:
        """The ``admin.system.users`` document."""
        doc: dict[str, Any] = {
            "_id": self.key, "userId": Binary.from_uuid(self.user_id), "user": self.name,
            "db": self.db,
            "credentials": {str(m): c.to_document() for m, c in self.credentials.items()},
            "roles": [g.to_document() for g in self.roles],
        }
        if self.custom_data is not None:
            doc["customData"] = self.custom_data
        return doc

    def info(self, show_credentials: bool) -> dict[str, Any]:
        """An entry of a ``usersInfo`` reply."""
        doc: dict[str, Any] = {"_id": self.key, "userId": Binary.from_uuid(self.user_id),
                               "user": self.name, "db": self.db,
                               "roles": [g.to_document() for g in self.roles],
                               "mechanisms": self.mechanisms}
        if self.custom_data is not None:
            doc["customData"] = self.custom_data
        if show_credentials:
            doc["credentials"] = {str(m): c.to_document() for m, c in self.credentials.items()}
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> User:
        """Parse a stored user; ValueError (or CommandError) if it is malformed."""
        name, db = doc.get("user"), doc.get("db")
        if not isinstance(name, str) or not isinstance(db, str):
            raise ValueError("user and db must be strings")
        creds: dict[Mechanism, ScramCredential] = {}
        raw_creds = doc.get("credentials")
        if not isinstance(raw_creds, dict):
            raise ValueError("credentials must be a document")
        for mech in Mechanism:
            if str(mech) in raw_creds:
                creds[mech] = ScramCredential.from_document(raw_creds[str(mech)])
        user_id = doc.get("userId")
        custom = doc.get("customData")
        return cls(name=name, db=db, roles=parse_roles(doc.get("roles", []), db, "system.users"),
                   credentials=creds,
                   user_id=user_id.as_uuid() if isinstance(user_id, Binary) else uuid.uuid4(),
                   custom_data=custom if isinstance(custom, dict) else None)


def new_user(name: str, db: str, password: str, roles: list[RoleGrant],
             mechanisms: list[Mechanism] | None = None) -> User:
    """A user with fresh credentials for ``mechanisms`` (default: both SCRAM mechanisms)."""
    chosen = mechanisms or list(Mechanism)
    return User(name=name, db=db, roles=roles,
                credentials={m: ScramCredential.derive(m, name, password) for m in chosen})


class UserRegistry:
    """Looks users up in ``admin.system.users`` and in the users file; stores new ones."""

    def __init__(self, store: DataStore, file_users: list[User]) -> None:
        self.store = store
        self.file_users = {(u.db, u.name): u for u in file_users}
        # key -> (stored document, parsed user): every command of an authenticated connection
        # looks its user up; a write replaces the document, which invalidates the entry.
        self._parsed: dict[str, tuple[dict[str, Any], User | None]] = {}

    def get(self, db: str, name: str) -> User | None:
        """The user ``name`` of database ``db``, or None.

        The result is shared: change a copy (``dataclasses.replace``) and :meth:`save` it.
        """
        found = self.file_users.get((db, name))
        if found is not None:
            return found
        coll = self.store.catalog.get(USERS_DB, USERS_COLLECTION)
        if coll is None:
            return None
        key = f"{db}.{name}"
        doc = coll.get(id_key(key))
        if doc is None:
            self._parsed.pop(key, None)
            return None
        cached = self._parsed.get(key)
        if cached is not None and cached[0] is doc:
            return cached[1]
        try:
            user: User | None = User.from_document(doc)
        except (ValueError, CommandError):
            user = None  # a malformed record (written by hand) authenticates nobody
        self._parsed[key] = (doc, user)
        return user

    def users(self, db: str | None = None) -> list[User]:
        """Every user (of ``db`` when given), sorted by key."""
        found = {u.key: u for u in self.file_users.values() if db is None or u.db == db}
        coll = self.store.catalog.get(USERS_DB, USERS_COLLECTION)
        if coll is not None:
            for doc in coll.docs.values():
                try:
                    user = User.from_document(doc)
                except (ValueError, CommandError):
                    continue
                if (db is None or user.db == db) and user.key not in found:
                    found[user.key] = user
        return [found[k] for k in sorted(found)]

    def any_users(self) -> bool:
        """Whether at least one user exists (ends the localhost exception)."""
        if self.file_users:
            return True
        coll = self.store.catalog.get(USERS_DB, USERS_COLLECTION)
        return coll is not None and bool(coll.docs)

    def save(self, unit: WriteUnit, user: User) -> None:
        """Insert or replace a stored user (file users cannot be changed)."""
        self._refuse_file_user(user.db, user.name)
        coll = self.store.ensure_collection(unit, USERS_DB, USERS_COLLECTION)
        doc = user.to_document()
        old = coll.get(id_key(user.key))
        if old is None:
            self.store.insert(unit, coll, doc)
        else:
            self.store.replace(unit, coll, old, doc, is_replacement=True)

    def delete(self, unit: WriteUnit, db: str, name: str) -> bool:
        """Remove a stored user; False if there is none."""
        self._refuse_file_user(db, name)
        coll = self.store.catalog.get(USERS_DB, USERS_COLLECTION)
        doc = coll.get(id_key(f"{db}.{name}")) if coll is not None else None
        if coll is None or doc is None:
            return False
        self.store.delete(unit, coll, doc)
        return True

    def _refuse_file_user(self, db: str, name: str) -> None:
        if (db, name) in self.file_users:
            raise CommandError(ErrorCode.BadValue,
                               f"user {name}@{db} is defined in --users-file; edit that "
                               "file and restart the server to change it")
