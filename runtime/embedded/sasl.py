"""SCRAM conversations as mongod speaks them over ``saslStart`` / ``saslContinue``.

The exchange (RFC 5802 via the ``scramp`` library):

1. ``saslStart {mechanism, payload: client-first}`` -> ``{conversationId, done: false,
   payload: server-first}``;
2. ``saslContinue {conversationId, payload: client-final}`` -> ``{done: false, payload:
   server-final}``, or ``done: true`` at once when the client asked for
   ``options: {skipEmptyExchange: true}``;
3. otherwise one more ``saslContinue`` with an empty payload -> ``{done: true}``.

An unknown user gets a conversation that looks like a real one (same salt every time, keys
nobody knows) and fails at the proof with the same "Authentication failed." as a wrong
password, so failures never tell whether the user exists.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from scramp import ScramMechanism  # type: ignore[import-untyped]

from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.users import ITERATIONS, Mechanism, User

AUTH_FAILED = "Authentication failed."
CONVERSATION_ID = 1  # mongod numbers the single conversation of a connection 1
_FAKE_SECRET = os.urandom(32)


def auth_failed() -> CommandError:
    """The one error every authentication failure gets (code 18)."""
    return CommandError(ErrorCode.AuthenticationFailed, AUTH_FAILED)


def payload_text(value: Any) -> str:
    """A SASL payload (BSON binary, or a string) as text; AuthenticationFailed if neither."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise auth_failed() from None
    if isinstance(value, str):
        return value
    raise auth_failed()


def client_first_user(text: str) -> str:
    """The user name in a SCRAM client-first message (``n,,n=<user>,r=<nonce>``), unescaped.

    Taken as sent: MongoDB does not SASLprep user names (only passwords).
    """
    parts = text.split(",", 3)
    if len(parts) < 4 or parts[0] not in ("n", "y") or parts[1] != "" \
            or not parts[2].startswith("n="):
        raise auth_failed()
    escaped = parts[2][2:]
    if not escaped or any(escaped[i:i + 3] not in ("=2C", "=3D")
                          for i, c in enumerate(escaped) if c == "="):
        raise auth_failed()
    return escaped.replace("=2C", ",").replace("=3D", "=")


@dataclass
class Conversation:
    """One SCRAM exchange in progress on a connection."""

    mechanism: Mechanism
    db: str
    user: str
    known: bool
    skip_empty_exchange: bool
    server: Any
    step: int = 1

    @classmethod
    def start(cls, mechanism: Mechanism, db: str, user: User | None, name: str,
              client_first: str, skip_empty_exchange: bool) -> tuple[Conversation, str]:
        """Process the client-first message; returns the conversation and the server-first."""
        credential = user.credentials.get(mechanism) if user is not None else None
        if credential is not None:
            info: tuple[bytes, bytes, bytes, int] = (
                credential.salt, credential.stored_key, credential.server_key,
                credential.iteration_count)
        else:
            digest = hmac.new(_FAKE_SECRET, f"{mechanism}:{db}.{name}".encode(),
                              hashlib.sha256).digest()
            info = (digest[:16], os.urandom(len(digest)), os.urandom(len(digest)),
                    ITERATIONS[mechanism])
        server = ScramMechanism(str(mechanism)).make_server(lambda _name: info)
        try:
            server.set_client_first(client_first)
            server_first = server.get_server_first()
        except Exception:  # scramp raises ScramException for any malformed message
            raise auth_failed() from None
        return cls(mechanism, db, name, credential is not None, skip_empty_exchange,
                   server), str(server_first)

    def step_client_final(self, client_final: str) -> str:
        """Verify the client proof; returns the server-final message (``v=...``)."""
        try:
            self.server.set_client_final(client_final)
            server_final = str(self.server.get_server_final())
        except Exception:
            raise auth_failed() from None
        if not self.known or not server_final.startswith("v="):
            raise auth_failed()
        self.step = 2
        return server_final
