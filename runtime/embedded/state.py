"""The server's shared state and the command dispatcher.

One asyncio event loop runs every command. A handler does not await between reading and writing
storage (only change-stream getMores await, and they hold no write state), so each command is
atomic with respect to every other, which is what makes 20 concurrent claimers safe.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson.int64 import Int64

from runtime.embedded import engine
from runtime.embedded.access import DirectAccess, Transaction, TransactionAccess
from runtime.embedded.change_streams import ChangeStreamCursor
from runtime.embedded.commands import COMMANDS
from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.cursors import CursorRegistry
from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.errors import CommandError, WriteError
from runtime.embedded.failpoints import FailPoints, Injected
from runtime.embedded.persistence import Persistence
from runtime.embedded.sessions import Session, SessionRegistry, no_such_transaction

log = logging.getLogger("runtime.embedded")

# Fields every command may carry that are about the request, not the command itself.
GENERIC_FIELDS = frozenset({"$db", "lsid", "$clusterTime", "$readPreference", "txnNumber",
                            "autocommit", "startTransaction", "readConcern", "writeConcern",
                            "comment", "maxTimeMS", "apiVersion", "apiStrict",
                            "apiDeprecationErrors", "$audit", "bypassDocumentValidation"})
RETRIED_REPLIES_KEPT = 32


@dataclass
class ServerConfig:
    """How the server was started."""

    host: str = "127.0.0.1"
    port: int = 27017
    dbpath: str | None = None
    oplog_size_mb: float = 64
    enable_test_commands: bool = False
    fsync: bool = False
    argv: list[str] = field(default_factory=list)


class CloseConnection(Exception):
    """Raised by a fail point to drop the client's connection without a reply."""


class ServerState:
    """Storage, sessions, cursors and fail points, plus the command dispatcher."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        persistence = Persistence(Path(config.dbpath), config.fsync) if config.dbpath else None
        if persistence is not None:
            persistence.open()
        self.store = DataStore(int(config.oplog_size_mb * 1024 * 1024), persistence)
        self.sessions = SessionRegistry()
        self.cursors = CursorRegistry()
        self.failpoints = FailPoints()
        self.started = time.monotonic()
        self.advertised_address = f"{config.host}:{config.port}"
        self.connection_count = 0
        self.connections_made = 0
        self.opcounters: Counter[str] = Counter()

    # -- sessions -----------------------------------------------------------------------------

    def end_session(self, lsid: Any) -> None:
        """``endSessions``: abort the session's transaction and forget it."""
        session = self.sessions.end(lsid)
        if session is not None:
            self._abort(session)

    def abort_all_sessions(self) -> None:
        """``killAllSessions``."""
        for session in list(self.sessions.sessions.values()):
            self._abort(session)
        self.sessions.sessions.clear()

    def expire_sessions(self) -> None:
        """Abort transactions of sessions idle past the logical session timeout."""
        for session in self.sessions.expired():
            self._abort(session)

    def _abort(self, session: Session) -> None:
        if session.transaction is not None and session.txn_state == "in_progress":
            session.transaction.release(self.store)
            session.txn_state = "aborted"
        session.transaction = None

    async def finish_transaction(self, ctx: CommandContext, commit: bool) -> dict[str, Any]:
        """Commit or abort the transaction named by the command's lsid and txnNumber."""
        session = ctx.session
        txn_number = ctx.body.get("txnNumber")
        if session is None or not isinstance(txn_number, int):
            raise CommandError(50768, "commitTransaction and abortTransaction need a session "
                               "and a txnNumber")
        if txn_number != session.last_txn_number:
            raise no_such_transaction(txn_number)
        if commit:
            if session.txn_state == "committed":
                return {"ok": 1.0}
            if session.txn_state != "in_progress" or session.transaction is None:
                raise no_such_transaction(txn_number)
            txn = session.transaction
            try:
                if txn.failed is not None:
                    raise txn.failed
                unit = TransactionAccess(self.store, txn).commit()
                self.store.commit(unit)
            except CommandError:
                txn.release(self.store)
                session.txn_state = "aborted"
                session.transaction = None
                raise
            txn.release(self.store)
            session.txn_state = "committed"
            session.transaction = None
            return {"ok": 1.0}
        if session.txn_state == "committed":
            raise CommandError(256, "Transaction has been committed; it cannot be aborted.")
        if session.txn_state != "in_progress":
            raise no_such_transaction(txn_number)
        self._abort(session)
        return {"ok": 1.0}

    def _transaction_for(self, name: str, body: dict[str, Any],
                         session: Session | None) -> Transaction | None:
        """Start or continue the transaction a command belongs to; None outside transactions."""
        if body.get("autocommit", True) is not False:
            if body.get("startTransaction"):
                raise CommandError(50768, "startTransaction requires autocommit: false")
            return None
        txn_number = body.get("txnNumber")
        if session is None or not isinstance(txn_number, int):
            raise CommandError(50768, "a transaction needs lsid and txnNumber")
        if name in ("commitTransaction", "abortTransaction"):
            return session.transaction
        info = COMMANDS.get(name)
        if info is not None and not info.in_transaction:
            raise CommandError(263, f"Cannot run '{name}' in a multi-document transaction.")
        if body.get("startTransaction"):
            if txn_number < session.last_txn_number:
                raise CommandError(225, f"Cannot start transaction {txn_number} because a newer "
                                   f"transaction {session.last_txn_number} has already started")
            if txn_number == session.last_txn_number and session.txn_state != "none":
                raise CommandError(263 if session.txn_state == "in_progress" else 256,
                                   f"transaction {txn_number} has already been started")
            self._abort(session)
            if "writeConcern" in body:
                raise CommandError(72, "writeConcern is not allowed within a multi-statement "
                                   "transaction")
            session.last_txn_number = txn_number
            session.transaction = Transaction(lsid=body["lsid"], txn_number=txn_number)
            session.txn_state = "in_progress"
            return session.transaction
        if txn_number != session.last_txn_number or session.txn_state != "in_progress" \
                or session.transaction is None:
            if txn_number == session.last_txn_number and session.txn_state == "committed":
                raise CommandError(256, "Transaction has been committed")
            raise no_such_transaction(txn_number)
        if "writeConcern" in body:
            raise CommandError(72, "writeConcern is not allowed within a multi-statement "
                               "transaction")
        return session.transaction

    # -- dispatch -----------------------------------------------------------------------------

    def injected_failure(self, name: str, body: dict[str, Any],
                         connection: dict[str, Any]) -> Injected | None:
        """A fail point's failure for this command, if one is configured and fires."""
        if not self.failpoints.points:
            return None
        is_stream = False
        if name == "getMore":
            cursor = self.cursors.cursors.get(body.get("getMore"))  # type: ignore[arg-type]
            is_stream = isinstance(cursor, ChangeStreamCursor)
        return self.failpoints.check(name, connection.get("app_name"), is_stream)

    async def execute(self, body: dict[str, Any], connection: dict[str, Any]) -> dict[str, Any]:
        """Run one command and return its reply document (errors included, never raised)."""
        try:
            reply = await self._execute(body, connection)
        except CommandError as exc:
            reply = exc.to_document()
        except WriteError as exc:
            reply = exc.as_command_error().to_document()
        except CloseConnection:
            raise
        except Exception as exc:  # a bug must cost one command, never the server
            log.exception("internal error in command %s", next(iter(body), "?"))
            reply = CommandError(1, f"internal error: {type(exc).__name__}: {exc}").to_document()
        ts = self.store.clock.now()
        reply["operationTime"] = ts
        reply["$clusterTime"] = {"clusterTime": ts, "signature": {
            "hash": b"\x00" * 20, "keyId": Int64(0)}}
        return reply

    async def _execute(self, body: dict[str, Any], connection: dict[str, Any]) -> dict[str, Any]:
        if not body:
            raise CommandError(59, "empty command document")
        name = next(iter(body))
        db = body.get("$db")
        if not isinstance(db, str) or not db:
            raise CommandError(40571, "OP_MSG requests require a $db argument")
        info = COMMANDS.get(name)
        if info is None or info.test_only and not self.config.enable_test_commands:
            raise CommandError(59, f"no such command: '{name}'")
        if info.admin_only and db != "admin":
            raise CommandError(13, f"{name} may only be run against the admin database.")
        self.opcounters["command"] += 1
        injected = self.injected_failure(name, body, connection)
        if injected is not None:
            if injected.close_connection:
                raise CloseConnection()
            if injected.error is not None:
                raise injected.error
        session = self.sessions.get(body.get("lsid"))
        transaction = self._transaction_for(name, body, session)
        txn_number = body.get("txnNumber")
        retryable = (info.retryable_write and transaction is None and session is not None
                     and isinstance(txn_number, int))
        if retryable:
            assert session is not None and isinstance(txn_number, int)
            if txn_number in session.retry_replies:
                return dict(session.retry_replies[txn_number])
            if txn_number < session.last_txn_number:
                raise CommandError(225, f"Retryable write with txnNumber {txn_number} is prohibited "
                                   f"on session because a newer retryable write with txnNumber "
                                   f"{session.last_txn_number} has already started on this session.")
            session.last_txn_number = txn_number
            session.txn_state = "none"
        unit = WriteUnit()
        access = (TransactionAccess(self.store, transaction) if transaction is not None
                  and name not in ("commitTransaction", "abortTransaction")
                  else DirectAccess(self.store, unit))
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        ctx = CommandContext(
            state=self,
            name=name,
            body=body,
            db=db,
            access=access,
            unit=unit,
            session=session,
            transaction=transaction,
            variables=engine.system_variables(now, self.store.clock.now()),
            now=now,
            connection=connection,
        )
        try:
            reply = await info.handler(ctx)
        except CommandError as exc:
            if transaction is not None and name not in ("commitTransaction", "abortTransaction"):
                # Any error inside a transaction aborts it, as on a real server.
                assert session is not None
                self._abort(session)
                if "TransientTransactionError" not in exc.labels and exc.code in (112, 251):
                    exc.labels.append("TransientTransactionError")
            raise
        finally:
            self.store.commit(unit)
        if retryable and reply.get("ok"):
            assert session is not None and isinstance(txn_number, int)
            session.retry_replies[txn_number] = dict(reply)
            while len(session.retry_replies) > RETRIED_REPLIES_KEPT:
                del session.retry_replies[min(session.retry_replies)]
        return reply
