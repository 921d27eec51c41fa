"""Authentication and authorization for the embedded server.

:class:`AuthManager` is the server's one entry point: it holds the users
(:class:`~runtime.embedded.users.UserRegistry`), runs SCRAM conversations for ``saslStart``,
``saslContinue`` and ``hello``'s ``speculativeAuthenticate`` (see :mod:`~runtime.embedded.sasl`),
and, with ``runtime db --auth``, checks every command before it runs (see
:mod:`~runtime.embedded.authz`):

* before authentication only hello, saslStart/saslContinue, ping, buildInfo, logout and
  connectionStatus run; anything else is Unauthorized (13) "Command <name> requires
  authentication";
* the localhost exception: while no user exists, a client on a loopback address may run
  ``createUser`` on ``admin`` to create the first one;
* an authenticated user needs a role that grants the command's privilege, else 13 "not
  authorized on <db> to execute command <name>";
* a connection holds one user at a time: authenticating as another user needs a ``logout``
  first (mongod's 5626701 / 5626702), re-authenticating as the same user is fine;
* the command's :class:`Caller` (user and ``lsid``) is known to the code it runs (see
  :func:`current_caller`), so that cursors and sessions belong to the user who opened them.

Passwords, payloads and proofs never reach a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from bson.binary import Binary

from runtime.embedded.authz import PRE_AUTH_COMMANDS, requirements
from runtime.embedded.datastore import DataStore
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.roles import ANY_DATABASE, SUGGESTED_ROLE, Action, allows, privileges
from runtime.embedded.sasl import (
    CONVERSATION_ID,
    Conversation,
    auth_failed,
    client_first_user,
    payload_text,
)
from runtime.embedded.users import Mechanism, User, UserRegistry

log = logging.getLogger("runtime.embedded.auth")

__all__ = ["AuthManager", "Caller", "ConnectionAuth", "current_caller", "is_loopback_host"]

UserKey = tuple[str, str]  # (db, name)


@dataclass(frozen=True)
class Caller:
    """Who runs the current command under ``--auth``: the connection's user (None before
    authentication) and the command's ``lsid`` as sent (None without one)."""

    user: UserKey | None
    lsid: Any = None


# Set by AuthManager.authorize, which runs first for every command under --auth, so the
# cursors and sessions a command creates or uses can tell whose they are without every
# handler passing the connection along. Each connection runs in its own asyncio task, so
# the value never leaks between connections; without --auth it stays None.
_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    """The :class:`Caller` of the command being run; None when the server runs without
    ``--auth`` (then cursors and sessions are shared, as on mongod)."""
    return _caller.get()


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address: 127.0.0.0/8, ::1."""
    text = host.strip().strip("[]")
    if text.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _peer_is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return bool(host) and is_loopback_host(host)


@dataclass
class ConnectionAuth:
    """Who is authenticated on one connection, and the conversation in progress."""

    user: UserKey | None = None
    conversation: Conversation | None = None


def connection_auth(connection: dict[str, Any]) -> ConnectionAuth:
    """The connection's authentication state (created on first use)."""
    state = connection.get("auth")
    if not isinstance(state, ConnectionAuth):
        state = ConnectionAuth()
        connection["auth"] = state
    return state


class AuthManager:
    """Users, SASL conversations and the authorization check of one server."""

    def __init__(self, store: DataStore, enabled: bool, file_users: list[User]) -> None:
        self.enabled = enabled
        self.users = UserRegistry(store, file_users)

    # -- authentication -----------------------------------------------------------------------

    def sasl_start(self, body: dict[str, Any], db: str,
                   connection: dict[str, Any]) -> dict[str, Any]:
        """``saslStart``: begin a SCRAM conversation; its reply (server-first)."""
        mechanism_name = body.get("mechanism")
        try:
            mechanism = Mechanism(str(mechanism_name))
        except ValueError:
            raise CommandError(ErrorCode.MechanismUnavailable,
                               f"Received authentication for mechanism {mechanism_name} "
                               "which is unknown or not enabled; use SCRAM-SHA-256 or "
                               "SCRAM-SHA-1") from None
        if db == "$external":
            raise CommandError(ErrorCode.MechanismUnavailable,
                               f"{mechanism} is not available on the $external "
                               "database; authenticate against the user's database")
        state = connection_auth(connection)
        state.conversation = None
        client_first = payload_text(body.get("payload"))
        name = client_first_user(client_first)
        options = body.get("options")
        skip = isinstance(options, dict) and bool(options.get("skipEmptyExchange"))
        user = self.users.get(db, name)
        try:
            conversation, server_first = Conversation.start(
                mechanism, db, user, name, client_first, skip)
        except CommandError:
            self._failed(name, db, mechanism, connection)
            raise
        state.conversation = conversation
        return {"conversationId": CONVERSATION_ID, "done": False,
                "payload": Binary(server_first.encode()), "ok": 1.0}

    def sasl_continue(self, body: dict[str, Any], connection: dict[str, Any]) -> dict[str, Any]:
        """``saslContinue``: the client-final step, or the empty final exchange."""
        state = connection_auth(connection)
        conversation = state.conversation
        if conversation is None:
            raise CommandError(ErrorCode.ProtocolError,
                               "No SASL session state found; send saslStart first")
        if body.get("conversationId") != CONVERSATION_ID:
            state.conversation = None
            raise CommandError(ErrorCode.ProtocolError, "sasl: Mismatched conversation id")
        if conversation.step == 2:
            state.conversation = None
            if payload_text(body.get("payload")):
                self._failed(conversation.user, conversation.db, conversation.mechanism,
                             connection)
                raise auth_failed()
            self._succeeded(state, conversation, connection)
            return {"conversationId": CONVERSATION_ID, "done": True, "payload": Binary(b""),
                    "ok": 1.0}
        try:
            server_final = conversation.step_client_final(payload_text(body.get("payload")))
        except CommandError:
            state.conversation = None
            self._failed(conversation.user, conversation.db, conversation.mechanism,
                         connection)
            raise
        done = conversation.skip_empty_exchange
        if done:
            state.conversation = None
            self._succeeded(state, conversation, connection)
        return {"conversationId": CONVERSATION_ID, "done": done,
                "payload": Binary(server_final.encode()), "ok": 1.0}

    def speculative(self, request: Any, connection: dict[str, Any]) -> dict[str, Any] | None:
        """``hello``'s ``speculativeAuthenticate``: the saslStart reply, or None to omit it.

        A failure is not an error here (as on mongod): the driver then authenticates
        normally and gets the error from ``saslStart``.
        """
        if not isinstance(request, dict) or "saslStart" not in request:
            return None
        db = request.get("db")
        if not isinstance(db, str) or not db:
            return None
        try:
            reply = self.sasl_start(request, db, connection)
        except CommandError:
            return None
        del reply["ok"]
        return reply

    def supported_mechanisms(self, value: Any) -> list[str] | None:
        """``hello``'s ``saslSupportedMechs: "<db>.<user>"``: that user's mechanisms."""
        if not isinstance(value, str) or "." not in value:
            return None
        db, name = value.split(".", 1)
        user = self.users.get(db, name)
        return user.mechanisms if user is not None else None

    def logout(self, db: str, connection: dict[str, Any]) -> None:
        """Forget the user authenticated on ``db`` (no-op if none)."""
        state = connection_auth(connection)
        if state.user is not None and state.user[0] == db:
            state.user = None

    def authenticated(self, connection: dict[str, Any]) -> User | None:
        """The user authenticated on the connection (None if none, or dropped since)."""
        who = connection_auth(connection).user
        return self.users.get(*who) if who is not None else None

    def _succeeded(self, state: ConnectionAuth, conversation: Conversation,
                   connection: dict[str, Any]) -> None:
        user = (conversation.db, conversation.user)
        if state.user is not None and state.user != user \
                and self.users.get(*state.user) is not None:
            _refuse_second_user(state.user, user, connection)
        state.user = user
        log.info("connection %s authenticated as %s@%s (%s)", connection.get("peer", "?"),
                 conversation.user, conversation.db, conversation.mechanism)

    @staticmethod
    def _failed(name: str, db: str, mechanism: Mechanism, connection: dict[str, Any]) -> None:
        log.info("authentication failed for %s@%s (%s) from %s", name, db, mechanism,
                 connection.get("peer", "?"))

    # -- authorization ------------------------------------------------------------------------

    def may_kill_any_cursor(self, connection: dict[str, Any]) -> bool:
        """Whether the connection may kill other users' cursors (mongod's killAnyCursor, held
        by clusterAdmin and root); always without ``--auth``."""
        if not self.enabled:
            return True
        user = self.authenticated(connection)
        return user is not None and allows(privileges(user.roles), ANY_DATABASE,
                                           Action.CLUSTER_ADMIN)

    def authorize(self, name: str, body: dict[str, Any], db: str,
                  connection: dict[str, Any]) -> None:
        """Raise Unauthorized (13) unless the connection may run the command."""
        state = connection_auth(connection)
        _caller.set(Caller(state.user, body.get("lsid")))
        if name in PRE_AUTH_COMMANDS:
            return
        user = self.authenticated(connection)
        if user is None:
            if name == "createUser" and db == "admin" and not self.users.any_users() \
                    and _peer_is_loopback(str(connection.get("peer", ""))):
                return  # the localhost exception: create the first user
            raise CommandError(ErrorCode.Unauthorized, f"Command {name} requires authentication")
        privs = privileges(user.roles)
        for scope, action in requirements(name, body, db, state.user):
            if not allows(privs, scope, action):
                where = "the cluster (every database)" if scope == ANY_DATABASE else scope
                raise CommandError(ErrorCode.Unauthorized,
                                   f"not authorized on {db} to execute command {name}: "
                                   f"user {user.name}@{user.db} needs the {action} privilege on "
                                   f"{where}; grant a role such as {SUGGESTED_ROLE[action]}")
        if name == "listDatabases" and not allows(privs, ANY_DATABASE, Action.LIST_DATABASES):
            _restrict_list_databases(body, privs)


def _refuse_second_user(previous: UserKey, user: UserKey, connection: dict[str, Any]) -> None:
    """mongod 7.0 keeps one user per connection: another needs a ``logout`` first.

    Checked only once the proof is verified (a wrong password still gets the usual
    AuthenticationFailed), with mongod's codes and messages (the second one lacks a space
    there too).
    """
    log.info("connection %s refused to authenticate as %s@%s: already authenticated as %s@%s",
             connection.get("peer", "?"), user[1], user[0], previous[1], previous[0])
    shown = f"{previous[1]}@{previous[0]}"
    if previous[0] == user[0]:
        raise CommandError(ErrorCode.Location5626701,
                           "Each client connection may only be authenticated once. "
                           f"Previously authenticated as: {shown}")
    raise CommandError(ErrorCode.Location5626702,
                       "Client has attempted to authenticate on multiple databases."
                       f"Already authenticated as: {shown}")


def _restrict_list_databases(body: dict[str, Any], privs: set[tuple[str, Action]]) -> None:
    """Show only the databases the user holds a privilege on (mongod's authorizedDatabases)."""
    if body.get("authorizedDatabases") is False:
        raise CommandError(ErrorCode.Unauthorized,
                           "not authorized on admin to execute command listDatabases with "
                           "authorizedDatabases: false; grant a role such as readAnyDatabase")
    allowed = sorted({scope for scope, _ in privs if scope != ANY_DATABASE})
    original = body.get("filter")
    restriction = {"name": {"$in": allowed}}
    body["filter"] = {"$and": [original, restriction]} if isinstance(original, dict) \
        else restriction
