"""The TCP server: accepts connections, frames messages and hands commands to the dispatcher.

A connection that sends bytes that are not a valid message is closed; a well-framed but invalid
request gets an error reply. Either way every other connection keeps being served.

Start-up binds the port first (a port in use fails at once), then loads the data directory, and
only then listens. With ``--dbpath`` the maintenance task checkpoints when the write-ahead log has
grown past the size of the last snapshot (at least :data:`CHECKPOINT_MIN_WAL_BYTES`); the snapshot
is written in a worker thread while commands go on. SIGTERM stops accepting connections, closes
the open ones (no command is ever half-applied: commands don't await between reading and
writing storage), and writes a final checkpoint if anything was logged since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import gc
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.embedded import ttl, wire
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.persistence import DataDirError, Persistence
from runtime.embedded.state import CloseConnection, ServerConfig, ServerState

#: Allocations between two collections of the youngest generation (Python's default is 700).
GC_YOUNG_THRESHOLD = 50_000

log = logging.getLogger("runtime.embedded")

HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
MAINTENANCE_INTERVAL_S = 1.0
CHECKPOINT_MIN_WAL_BYTES = 64 * 1024 * 1024
SHUTDOWN_GRACE_S = 5.0
#: Messages up to this size have their OP_MSG checksum verified inline; larger ones in a thread.
CHECKSUM_INLINE_BYTES = 64 * 1024
CHECKPOINT_RETRY_S = 30.0


class StartupError(Exception):
    """The server cannot start (port unavailable, data directory unusable); the message says why."""


def checkpoint_due(persistence: Persistence, min_wal_bytes: int) -> bool:
    """Whether the log is big enough that replaying it would cost more than a snapshot."""
    return persistence.wal_bytes > max(min_wal_bytes, persistence.snapshot_bytes)


class EmbeddedMongoServer:
    """Runs a :class:`ServerState` behind a listening socket."""

    def __init__(self, config: ServerConfig,
                 checkpoint_min_wal_bytes: int = CHECKPOINT_MIN_WAL_BYTES) -> None:
        self.config = config
        self.checkpoint_min_wal_bytes = checkpoint_min_wal_bytes
        self.state: ServerState | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._checkpoint_retry_at = 0.0
        self._request_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._stopping = asyncio.Event()
        #: Maintenance step -> the error it last failed with (logged once).
        self._maintenance_errors: dict[str, str] = {}

    async def start(self) -> int:
        """Bind, load data, listen, and return the port; :class:`StartupError` if impossible."""
        host, requested = self.config.host, self.config.port
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, host, requested, reuse_address=True,
                limit=wire.MAX_MESSAGE_SIZE, start_serving=False,
            )
        except OSError as exc:
            # asyncio rewords the error ("error while attempting to bind ..."): say it plainly.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(
                f"cannot listen on {host}:{requested}: {reason}. Choose another "
                "--port (0 picks a free one).") from exc
        port = int(self._server.sockets[0].getsockname()[1])
        self.config.port = port
        started = time.monotonic()
        try:
            self.state = ServerState(self.config)
        except DataDirError as exc:
            self._server.close()
            raise StartupError(str(exc)) from exc
        if self.config.dbpath:
            log.info("data directory %s loaded in %.2fs", self.config.dbpath,
                     time.monotonic() - started)
        persistence = self.state.store.persistence
        if persistence is not None and persistence.set_aside_count:
            # Rewrite the snapshot without what was set aside (it is in quarantine/), so the
            # next start does not meet it again.
            try:
                self.state.store.checkpoint()
            except Exception:
                log.exception("checkpoint after setting %d records aside failed (the "
                              "maintenance task retries)", persistence.set_aside_count)
            else:
                log.warning("%d records were set aside into %s; a new snapshot without them "
                            "was written", persistence.set_aside_count,
                            persistence.dbpath / "quarantine")
        # Everything loaded so far lives as long as the server: keep the cycle collector from
        # rescanning it on every full collection.
        gc.freeze()
        # Decoded documents, index entries and change-log entries never form cycles, yet every
        # one of them counts towards the next collection: collect young garbage less often.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
        self.state.store.changelog.reset_notifier()
        self.state.advertised_address = f"{_advertised_host(host)}:{port}"
        try:
            await self._server.start_serving()
        except OSError as exc:
            self._close_storage()
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        return port

    def _close_storage(self) -> None:
        if self.state is not None and self.state.store.persistence is not None:
            self.state.store.persistence.close()

    async def serve_until_stopped(self) -> None:
        """Serve until :meth:`request_stop`; then close connections and checkpoint."""
        assert self._server is not None and self.state is not None
        maintenance = asyncio.create_task(self._maintenance())
        await self._stopping.wait()
        maintenance.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintenance
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        # A connection task is never in the middle of a write here (commands don't await
        # between reading and writing storage), only waiting for input, for a send buffer
        # or in a change-stream getMore, so cancelling them is safe.
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=SHUTDOWN_GRACE_S)
        if self._checkpoint_task is not None:
            await self._checkpoint_task
        persistence = self.state.store.persistence
        if persistence is not None:
            if persistence.wal_bytes:
                started = time.monotonic()
                self.state.store.checkpoint()
                log.info("final checkpoint written in %.2fs", time.monotonic() - started)
            persistence.close()

    def request_stop(self) -> None:
        """Ask the server to shut down cleanly."""
        self._stopping.set()

    async def _maintenance(self) -> None:
        """Every second: TTL deletions, session expiry, a checkpoint when due.

        Each step runs on its own: one that raises is logged (once per distinct error, and once
        more when it recovers) and the others keep running.
        """
        assert self.state is not None
        state = self.state
        steps: list[tuple[str, Callable[[], None]]] = [
            ("TTL monitor", self._expire_documents),
            ("session expiry", state.expire_sessions),
            ("checkpoint scheduling", self._schedule_checkpoint),
        ]
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            for name, step in steps:
                try:
                    step()
                except Exception as exc:
                    signature = f"{type(exc).__name__}: {exc}"
                    if self._maintenance_errors.get(name) != signature:
                        self._maintenance_errors[name] = signature
                        log.exception("maintenance step %r failed (the other steps go on; "
                                      "this error is logged once)", name)
                else:
                    if self._maintenance_errors.pop(name, None) is not None:
                        log.info("maintenance step %r works again", name)

    def _expire_documents(self) -> None:
        assert self.state is not None
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        deleted = ttl.expire_documents(self.state.store, now)
        if deleted:
            log.info("TTL monitor deleted %d expired documents", deleted)

    def _schedule_checkpoint(self) -> None:
        assert self.state is not None
        persistence = self.state.store.persistence
        if persistence is not None and checkpoint_due(
                persistence, self.checkpoint_min_wal_bytes) and (
                self._checkpoint_task is None or self._checkpoint_task.done()) and (
                time.monotonic() >= self._checkpoint_retry_at):
            self._checkpoint_task = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Snapshot in a worker thread; commits go on into the new log segment meanwhile."""
        assert self.state is not None
        store = self.state.store
        started = time.monotonic()
        try:
            job = store.begin_checkpoint()
            if job is None:
                return
            await asyncio.to_thread(job)
            store.finish_checkpoint()
        except Exception as exc:
            signature = f"{type(exc).__name__}: {exc}"
            self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY_S
            if self._maintenance_errors.get("checkpoint") != signature:
                self._maintenance_errors["checkpoint"] = signature
                log.exception("checkpoint failed (the log is kept; retrying every %gs, this "
                              "error is logged once)", CHECKPOINT_RETRY_S)
            return
        if self._maintenance_errors.pop("checkpoint", None) is not None:
            log.info("checkpoints work again")
        log.info("checkpoint written in %.2fs", time.monotonic() - started)

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        assert self.state is not None
        state = self.state
        peer = writer.get_extra_info("peername")
        connection: dict[str, Any] = {"id": next(self._connection_ids),
                                      "peer": f"{peer[0]}:{peer[1]}" if peer else ""}
        state.connection_count += 1
        state.connections_made += 1
        state.operations.connected(connection)
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                raw_header = await reader.readexactly(wire.HEADER.size)
                header = wire.parse_header(raw_header)
                payload = await reader.readexactly(header.length - wire.HEADER.size)
                await self._respond(header, payload, connection, writer)
        except (asyncio.IncompleteReadError, ConnectionError, CloseConnection,
                asyncio.CancelledError):
            pass
        except wire.ProtocolViolation as exc:
            log.warning("closing connection %s: %s", connection["peer"], exc)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("closing connection %s after an unexpected error", connection["peer"])
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._connections.discard(writer)
            state.connection_count -= 1
            state.operations.disconnected(connection)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, header: wire.Header, payload: bytes, connection: dict[str, Any],
                       writer: asyncio.StreamWriter) -> None:
        """Send the replies to one well-framed message: none for a moreToCome request, one
        usually, and for a ``getMore`` sent with exhaustAllowed the whole exhaust stream
        (OP_MSG spec: each batch but the last flagged moreToCome, answering the previous
        reply), so the driver reads batch after batch without sending getMores. Each reply
        is written (and drained) before the next one is computed."""
        request = await self._handle_message(header, payload, connection)
        if request is None:
            return
        reply, body, exhaust = request
        response_to = header.request_id
        response_id = next(self._request_ids)
        while exhaust and reply.get("ok") and _open_cursor(reply):
            writer.write(_encode(_encode_more_to_come, response_to, response_id, reply))
            await writer.drain()
            response_to, response_id = response_id, next(self._request_ids)
            assert self.state is not None
            reply = await self.state.execute(body, connection)
        encoder: Callable[[int, int, dict[str, Any]], bytes] = wire.encode_op_msg
        if header.op_code == wire.OP_QUERY:
            # A legacy query's $err answer carries the QueryFailure flag.
            encoder = functools.partial(wire.encode_op_reply, query_failure="$err" in reply)
        writer.write(_encode(encoder, response_to, response_id, reply))
        await writer.drain()

    async def _handle_message(self, header: wire.Header, payload: bytes,
                              connection: dict[str, Any]
                              ) -> tuple[dict[str, Any], dict[str, Any], bool] | None:
        """The reply document to one well-framed message, the request body and whether the
        reply may start an exhaust stream (None for a moreToCome request). Whatever is wrong
        inside the message is answered with an error document, never by closing."""
        assert self.state is not None
        if header.op_code == wire.OP_QUERY:
            return await self._handle_op_query(header, payload, connection), {}, False
        try:
            if header.op_code != wire.OP_MSG:
                raise _unsupported_op_code(header.op_code)
            if wire.checksum_flagged(payload):
                if len(payload) > CHECKSUM_INLINE_BYTES:
                    # CRC-32C in Python is slow: let other clients in while it runs.
                    await asyncio.to_thread(wire.verify_checksum, header, payload)
                else:
                    wire.verify_checksum(header, payload)
            request = wire.parse_op_msg(header, payload)
        except wire.BadRequest as exc:
            return CommandError(exc.code, exc.message).to_document(), {}, False
        reply = await self.state.execute(request.body, connection)
        if request.more_to_come:
            return None
        exhaust = request.exhaust_allowed and next(iter(request.body), "") == "getMore"
        return reply, request.body, exhaust

    async def _handle_op_query(self, header: wire.Header, payload: bytes,
                               connection: dict[str, Any]) -> dict[str, Any]:
        """Legacy OP_QUERY: only the handshake (``hello`` on ``<db>.$cmd``) is served."""
        assert self.state is not None
        try:
            full_name, request = wire.parse_op_query(header, payload)
        except wire.BadRequest as exc:
            return CommandError(exc.code, exc.message).to_document()
        if not full_name.endswith(".$cmd"):
            # mongod's answer to a legacy query (find) since 5.1: an $err document.
            message = wire.LEGACY_REMOVED_MESSAGE.format("OP_QUERY")
            return {"$err": message, "errmsg": message,
                    "code": ErrorCode.Location5739101, "ok": 0.0}
        name = next(iter(request.body), "")
        if name not in HELLO_COMMANDS:
            doc = CommandError(ErrorCode.UnsupportedOpQueryCommand,
                               f"Unsupported OP_QUERY command: {name}. The client "
                               "driver may require an upgrade.").to_document()
        else:
            doc = await self.state.execute(request.body, connection)
        return doc


def _unsupported_op_code(op_code: int) -> wire.BadRequest:
    if op_code in wire.LEGACY_OP_CODES:
        return wire.BadRequest(ErrorCode.Location5739101,
                               wire.LEGACY_REMOVED_MESSAGE.format(f"opcode {op_code}"))
    if op_code == wire.OP_COMPRESSED:
        return wire.BadRequest(ErrorCode.ProtocolError, "OP_COMPRESSED is not supported: "
                               "this server offers no compressors (hello lists none)")
    return wire.BadRequest(ErrorCode.ProtocolError, f"unsupported opcode {op_code}")


def _encode(encoder: Callable[[int, int, dict[str, Any]], bytes], response_to: int,
            request_id: int, doc: dict[str, Any]) -> bytes:
    """Encode a reply; one that cannot be encoded becomes an InternalError reply, so the
    client still gets an answer (and the bug is logged)."""
    try:
        return encoder(response_to, request_id, doc)
    except Exception as exc:
        log.exception("reply to request %d cannot be encoded", response_to)
        error = CommandError(ErrorCode.InternalError,
                             f"internal error: reply cannot be encoded: {exc}").to_document()
        return encoder(response_to, request_id, error)


def _encode_more_to_come(response_to: int, request_id: int, doc: dict[str, Any]) -> bytes:
    """An exhaust stream's batch that another one follows."""
    return wire.encode_op_msg(response_to, request_id, doc, flags=wire.FLAG_MORE_TO_COME)


def _open_cursor(reply: dict[str, Any]) -> bool:
    cursor = reply.get("cursor")
    return isinstance(cursor, dict) and bool(cursor.get("id"))


def _advertised_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return host


async def run(config: ServerConfig,
              checkpoint_min_wal_bytes: int = CHECKPOINT_MIN_WAL_BYTES) -> None:
    """Start the server, print its URI as the first stdout line, serve until SIGTERM/SIGINT."""
    server = EmbeddedMongoServer(config, checkpoint_min_wal_bytes)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    port = await server.start()
    host = _advertised_host(config.host)
    shown = f"[{host}]" if ":" in host else host
    uri = f"mongodb://{shown}:{port}/"
    if config.dbpath:
        # Written before the URI is printed: whoever reads the line finds the file too.
        from runtime.embedded.process import URI_FILE, write_uri_file

        try:
            write_uri_file(Path(config.dbpath) / URI_FILE, uri)
        except OSError as exc:
            log.warning("cannot write the URI to %s: %s", Path(config.dbpath) / URI_FILE,
                        exc.strerror or exc)
    sys.stdout.write(f"{uri}\n")
    sys.stdout.flush()
    log.info("embedded MongoDB-compatible server listening on %s:%d (%s)", config.host, port,
             f"dbpath {config.dbpath}" if config.dbpath else "in memory")
    await server.serve_until_stopped()
    log.info("embedded server stopped")
