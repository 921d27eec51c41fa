"""The server's shared state and the command dispatcher.

One asyncio event loop runs every command. A handler does not await between reading and writing
storage (only change-stream getMores and long reads await, and they hold no write state; see
:mod:`runtime.embedded.scans`), so each write command is atomic with respect to every other,
which is what makes 20 concurrent claimers safe.

Sessions, retryable writes and transactions follow MongoDB's rules (see ``_execute``):

* a retryable write (``txnNumber`` outside a transaction) whose ``txnNumber`` equals the
  session's latest returns the recorded reply without running again; an older one is
  ``TransactionTooOld`` (225);
* a transaction is opened by ``startTransaction`` with a new ``txnNumber``; any error in one of
  its statements aborts it; ``commitTransaction`` is idempotent; abort after commit is 256,
  commit after abort is 251;
* errors carry the labels MongoDB adds: ``RetryableWriteError`` (retryable writes, commit and
  abort failing with a retryable code), ``TransientTransactionError`` (statements of a
  transaction failing with a transient code, and 251), ``ResumableChangeStreamError``
  (change-stream getMores failing with a resumable code).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson.int64 import Int64

from runtime.embedded import deadlines, engine
from runtime.embedded.access import DirectAccess, SnapshotAccess, Transaction, TransactionAccess
from runtime.embedded.auth import AuthManager
from runtime.embedded.change_streams import ChangeStreamCursor
from runtime.embedded.commands import COMMANDS
from runtime.embedded.commands.registry import GENERIC_FIELDS, CommandContext, Handler
from runtime.embedded.cursors import CursorRegistry
from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.error_labels import (
    RETRYABLE_WRITE_CODES,
    RETRYABLE_WRITE_LABEL,
    add_labels,
)
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.failpoints import FailPoints, Injected
from runtime.embedded.generic_arguments import check_generic_arguments, has_time_limit, txn_number
from runtime.embedded.operations import Operations
from runtime.embedded.persistence import Persistence
from runtime.embedded.read_concern import add_read_time, snapshot_view
from runtime.embedded.sessions import Session, SessionRegistry, no_such_transaction
from runtime.embedded.users import User

log = logging.getLogger("runtime.embedded")

__all__ = ["GENERIC_FIELDS", "CloseConnection", "ServerConfig", "ServerState"]


FINISH_COMMANDS = frozenset({"commitTransaction", "abortTransaction"})
HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
DEFAULT_TRANSACTION_LIFETIME_S = 60
#: The ``$clusterTime`` signature of every reply (no keys: nothing is signed).
_NO_SIGNATURE_HASH = b"\x00" * 20
_NO_SIGNATURE_KEY = Int64(0)


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
    auth: bool = False  # --auth: every command needs an authenticated, authorized user
    users: list[User] = field(default_factory=list)  # from --users-file (credentials only)


class CloseConnection(Exception):
    """Raised by a fail point to drop the client's connection without a reply."""


@dataclass(slots=True)
class _Request:
    """What the dispatcher worked out about a command before running it."""

    name: str
    in_transaction: bool  # autocommit: false (a statement, commit or abort of a transaction)
    finishes_transaction: bool  # commitTransaction / abortTransaction
    retryable_write: bool  # txnNumber on a retryable write command outside a transaction
    change_stream_get_more: bool = False


class ServerState:
    """Storage, sessions, cursors and fail points, plus the command dispatcher."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        persistence = Persistence(Path(config.dbpath), config.fsync) if config.dbpath else None
        if persistence is not None:
            persistence.open()
        self.store = DataStore(int(config.oplog_size_mb * 1024 * 1024), persistence)
        self.auth = AuthManager(self.store, config.auth, config.users)
        self.sessions = SessionRegistry(self.store.retry_records)
        self.cursors = CursorRegistry()
        self._time_limited_cursors: set[int] = set()
        self.failpoints = FailPoints()
        self.started = time.monotonic()
        self.advertised_address = f"{config.host}:{config.port}"
        self.connection_count = 0
        self.connections_made = 0
        self.opcounters: Counter[str] = Counter()
        # setParameter transactionLifetimeLimitSeconds: older transactions are aborted.
        self.transaction_lifetime_s: float = DEFAULT_TRANSACTION_LIFETIME_S
        self.operations = Operations()  # connections and their running commands ($currentOp)

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
        """Abort transactions past their lifetime and those of sessions idle too long."""
        for session in self.sessions.expired():
            self._abort(session)
        limit = time.monotonic() - self.transaction_lifetime_s
        for session in self.sessions.sessions.values():
            txn = session.transaction
            if txn is not None and session.txn_state == "in_progress" and txn.started < limit:
                log.info("aborting transaction %d: older than transactionLifetimeLimitSeconds "
                         "(%g)", txn.txn_number, self.transaction_lifetime_s)
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
            raise CommandError(ErrorCode.NotARetryableWriteCommand,
                               f"{ctx.name} needs a session (lsid) and a txnNumber")
        if txn_number < session.last_txn_number:
            raise _too_old(txn_number, session)
        if txn_number > session.last_txn_number:
            raise no_such_transaction(txn_number)
        if commit:
            if session.txn_state == "committed":
                return {"ok": 1.0}  # a retried commit
            if session.txn_state != "in_progress" or session.transaction is None:
                raise no_such_transaction(txn_number)
            txn = session.transaction
            try:
                if txn.failed is not None:
                    raise txn.failed
                unit = TransactionAccess(self.store, txn).commit()
                if unit.ops:  # durable, so a retried commit after a restart still succeeds
                    unit.retry = session.retry_record(None)
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
            raise CommandError(ErrorCode.TransactionCommitted,
                               "Transaction has been committed; it cannot be aborted.")
        if session.txn_state != "in_progress":
            raise no_such_transaction(txn_number)
        self._abort(session)
        return {"ok": 1.0}

    def _transaction_for(self, name: str, body: dict[str, Any],
                         session: Session | None) -> Transaction | None:
        """Start or continue the transaction a command belongs to; None outside transactions."""
        if "autocommit" not in body and "startTransaction" not in body:
            return None  # (the common case: neither field, no transaction)
        if body.get("autocommit", True) is not False:
            if body.get("startTransaction"):
                raise CommandError(ErrorCode.NotARetryableWriteCommand,
                                   "startTransaction requires autocommit: false")
            if body.get("autocommit") is not None:  # IDL: null is absent
                raise CommandError(ErrorCode.InvalidOptions,
                                   "autocommit may only be specified as false")
            return None
        txn_number = body.get("txnNumber")
        if session is None or not isinstance(txn_number, int):
            raise CommandError(ErrorCode.NotARetryableWriteCommand,
                               "a transaction needs lsid and txnNumber")
        if name in FINISH_COMMANDS:
            return session.transaction
        info = COMMANDS.get(name)
        if info is not None and not info.in_transaction:
            raise CommandError(ErrorCode.OperationNotSupportedInTransaction,
                               f"Cannot run '{name}' in a multi-document transaction.")
        if "writeConcern" in body:
            raise CommandError(ErrorCode.InvalidOptions,
                               "writeConcern is not allowed within a multi-statement "
                               "transaction")
        if txn_number < session.last_txn_number:
            raise _too_old(txn_number, session)
        if body.get("startTransaction"):
            if txn_number == session.last_txn_number:
                if session.txn_state == "committed":
                    raise CommandError(ErrorCode.TransactionCommitted,
                                       f"Transaction {txn_number} has already been "
                                       "committed")
                raise CommandError(ErrorCode.ConflictingOperationInProgress,
                                   f"Cannot start a transaction with txnNumber "
                                   f"{txn_number}: it has already been used on this session")
            view = snapshot_view(self.store, name, body, True)  # (a bad readConcern fails)
            self._abort(session)
            session.last_txn_number = txn_number
            session.retry_reply = None
            session.transaction = Transaction(lsid=body["lsid"], txn_number=txn_number,
                                              snapshot=view)
            session.txn_state = "in_progress"
            return session.transaction
        if txn_number == session.last_txn_number and session.txn_state == "committed":
            raise CommandError(ErrorCode.TransactionCommitted,
                               f"Transaction {txn_number} has been committed")
        if txn_number != session.last_txn_number or session.txn_state != "in_progress" \
                or session.transaction is None:
            raise no_such_transaction(txn_number)
        if "readConcern" in body:
            raise CommandError(ErrorCode.InvalidOptions,
                               "Only the first command in a transaction may specify a "
                               "readConcern")
        return session.transaction

    # -- dispatch -----------------------------------------------------------------------------

    def injected_failure(self, name: str, body: dict[str, Any],
                         connection: dict[str, Any]) -> Injected | None:
        """A fail point's failure for this command, if one is configured and fires."""
        if not self.failpoints.points or name == "configureFailPoint":
            return None
        app_name = connection.get("app_name")
        if app_name is None and name in HELLO_COMMANDS:
            # A handshake names its application itself (the connection learns it only when
            # the hello runs), so appName-targeted fail points can fail the handshake too.
            client = body.get("client")
            app = client.get("application") if isinstance(client, dict) else None
            app_name = app.get("name") if isinstance(app, dict) else None
        time_limited = has_time_limit(body) or (
            name == "getMore" and body.get("getMore") in self._time_limited_cursors)
        return self.failpoints.check(name, app_name,
                                     self._is_change_stream_get_more(name, body), time_limited)

    def _remember_time_limit(self, body: dict[str, Any], reply: dict[str, Any]) -> None:
        """A cursor opened with ``maxTimeMS`` keeps a time limit for its getMores (mongod
        counts the limit over the cursor's life), which ``maxTimeAlwaysTimeOut`` honours."""
        cursor = reply.get("cursor")
        if not has_time_limit(body) or not isinstance(cursor, dict) or not cursor.get("id"):
            return
        if len(self._time_limited_cursors) > 10_000:  # forget cursors that are gone
            self._time_limited_cursors &= set(self.cursors.cursors)
        self._time_limited_cursors.add(cursor["id"])

    def _is_change_stream_get_more(self, name: str, body: dict[str, Any]) -> bool:
        if name != "getMore":
            return False
        cursor_id = body.get("getMore")
        if not isinstance(cursor_id, int):
            return False
        return isinstance(self.cursors.cursors.get(cursor_id), ChangeStreamCursor)

    async def execute(self, body: dict[str, Any], connection: dict[str, Any]) -> dict[str, Any]:
        """Run one command and return its reply document (errors included, never raised)."""
        self.operations.begin(connection, body)
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
            reply = CommandError(ErrorCode.InternalError,
                                 f"internal error: {type(exc).__name__}: {exc}").to_document()
        finally:
            self.operations.end(connection)
        if "maxTimeMS" in body:
            self._remember_time_limit(body, reply)
        ts = self.store.clock.now()
        reply["operationTime"] = ts
        reply["$clusterTime"] = {"clusterTime": ts, "signature": {
            "hash": _NO_SIGNATURE_HASH, "keyId": _NO_SIGNATURE_KEY}}
        return reply

    async def _execute(self, body: dict[str, Any], connection: dict[str, Any]) -> dict[str, Any]:
        if not body:
            raise CommandError(ErrorCode.CommandNotFound, "empty command document")
        name = next(iter(body))
        db = body.get("$db")
        if type(db) is not str or not db:  # (bson Code is a str subclass)
            raise CommandError(ErrorCode.Location40571, "OP_MSG requests require a $db argument")
        info = COMMANDS.get(name)
        if info is None or (info.test_only and not self.config.enable_test_commands):
            raise CommandError(ErrorCode.CommandNotFound, f"no such command: '{name}'")
        if info.admin_only and db != "admin":
            raise CommandError(ErrorCode.Unauthorized,
                               f"{name} may only be run against the admin database.")
        if self.auth.enabled:
            self.auth.authorize(name, body, db, connection)
        self.opcounters["command"] += 1
        check_generic_arguments(name, body)
        number = txn_number(body)
        in_transaction = body.get("autocommit", True) is False
        request = _Request(
            name=name,
            in_transaction=in_transaction,
            finishes_transaction=name in FINISH_COMMANDS,
            retryable_write=info.retryable_write and number is not None
            and not in_transaction,
        )
        if number is not None and not in_transaction and not request.retryable_write \
                and not request.finishes_transaction:
            raise CommandError(ErrorCode.NotARetryableWriteCommand,
                               f"txnNumber may only be provided for multi-document "
                               f"transactions and retryable write commands; '{name}' is "
                               "neither")
        injected = self.injected_failure(name, body, connection)
        if injected is not None and injected.block_ms > 0:
            # Before any session bookkeeping, so a retry sent meanwhile runs first, cleanly.
            await asyncio.sleep(injected.block_ms / 1000)
        request.change_stream_get_more = self._is_change_stream_get_more(name, body)
        try:
            reply = await self._run(request, body, db, info.handler, connection, injected)
        except CommandError as exc:
            if injected is None or injected.explicit_labels is None \
                    or exc is not injected.error:
                add_labels(exc, request, injected is not None and exc is injected.error)
            raise
        if injected is not None and injected.write_concern_error is not None:
            reply = dict(reply)
            reply["writeConcernError"] = injected.write_concern_error
            if injected.explicit_labels is not None:
                reply["errorLabels"] = list(injected.explicit_labels)
            elif request.retryable_write and \
                    injected.write_concern_error.get("code") in RETRYABLE_WRITE_CODES:
                reply["errorLabels"] = [RETRYABLE_WRITE_LABEL]
        return reply

    async def _run(self, request: _Request, body: dict[str, Any], db: str, handler: Handler,
                   connection: dict[str, Any], injected: Injected | None) -> dict[str, Any]:
        name = request.name
        session = self.sessions.get(body.get("lsid"))
        if body.get("txnNumber") is not None and session is None:
            raise CommandError(ErrorCode.InvalidOptions,
                               "Transaction number requires a session ID (lsid) to also be "
                               "specified")
        transaction = self._transaction_for(name, body, session)
        statement_of = transaction if not request.finishes_transaction else None
        try:
            if injected is not None:
                if injected.close_connection:
                    raise CloseConnection()
                if injected.error is not None:
                    error = injected.error
                    if injected.explicit_labels is not None:
                        error.labels = list(injected.explicit_labels)
                    raise error
            close_after = False
            if request.retryable_write:
                assert session is not None
                txn_number = body["txnNumber"]
                recorded = self._begin_retryable_write(session, txn_number)
                if recorded is not None:
                    return recorded
                point = self.failpoints.check_retryable_write() \
                    if self.failpoints.points else None
                if point is not None:
                    if point.error is not None:
                        raise point.error
                    close_after = point.close_after_write
            reply = await self._call(name, body, db, handler, connection, session, transaction,
                                     request.retryable_write)
        except Exception as exc:
            if statement_of is not None:
                # Any error inside a transaction aborts it, as on a real server.
                assert session is not None
                self._abort(session)
                if isinstance(exc, CloseConnection | CommandError):
                    raise
                raise CommandError(ErrorCode.InternalError,
                                   f"internal error: {type(exc).__name__}: {exc}") from exc
            raise
        if request.retryable_write and reply.get("ok"):
            assert session is not None
            session.retry_reply = dict(reply)
            if close_after:
                raise CloseConnection()
        return reply

    def _begin_retryable_write(self, session: Session, txn_number: int) -> dict[str, Any] | None:
        """Session bookkeeping of a retryable write; the recorded reply if it is a retry."""
        if txn_number < session.last_txn_number:
            raise _too_old(txn_number, session)
        if txn_number == session.last_txn_number:
            if session.txn_state != "none":
                raise CommandError(ErrorCode.TransactionTooOld,
                                   f"Cannot run a retryable write with txnNumber "
                                   f"{txn_number}: a transaction has used that number on this "
                                   "session")
            if session.retry_reply is not None:
                return dict(session.retry_reply)
            return None  # the earlier attempt failed: run it again
        # A newer txnNumber ends whatever the session did before, an open transaction included.
        self._abort(session)
        session.last_txn_number = txn_number
        session.retry_reply = None
        session.txn_state = "none"
        return None

    async def _call(self, name: str, body: dict[str, Any], db: str, handler: Handler,
                    connection: dict[str, Any], session: Session | None,
                    transaction: Transaction | None, retryable: bool = False) -> dict[str, Any]:
        unit = WriteUnit()
        view = snapshot_view(self.store, name, body, False) \
            if transaction is None and "readConcern" in body else None
        access = (TransactionAccess(self.store, transaction) if transaction is not None
                  and name not in FINISH_COMMANDS
                  else DirectAccess(self.store, unit) if view is None
                  else SnapshotAccess(self.store, unit, view))
        if body.get("bypassDocumentValidation") is True and not isinstance(access,
                                                                           SnapshotAccess):
            access.bypass_validation = True
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
        # maxTimeMS of a getMore is a change stream's await time, not a limit. (Without one the
        # deadline is already unset: every command clears it when it ends.)
        if "maxTimeMS" in body and name != "getMore":
            deadlines.start(body["maxTimeMS"])
        try:
            reply = await handler(ctx)
            if view is not None:
                add_read_time(reply, view.at)
            if retryable and unit.ops and reply.get("ok") and session is not None:
                unit.retry = session.retry_record(reply)  # logged with the write itself
        finally:
            deadlines.clear()
            self.store.commit(unit)
        return reply


def _too_old(txn_number: int, session: Session) -> CommandError:
    return CommandError(ErrorCode.TransactionTooOld,
                        f"Cannot start transaction {txn_number} on session because a newer "
                        f"transaction {session.last_txn_number} has already started")
