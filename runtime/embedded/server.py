"""The TCP server: accepts connections, frames messages and hands commands to the dispatcher.

A connection that sends bytes that are not a valid message is closed; a well-framed but invalid
request gets an error reply. Either way every other connection keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import signal
import sys
from typing import Any

from runtime.embedded import ttl, wire
from runtime.embedded.errors import CommandError
from runtime.embedded.state import CloseConnection, ServerConfig, ServerState

log = logging.getLogger("runtime.embedded")

HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
MAINTENANCE_INTERVAL_S = 1.0
CHECKPOINT_WAL_BYTES = 256 * 1024 * 1024


class EmbeddedMongoServer:
    """Runs a :class:`ServerState` behind a listening socket."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state: ServerState | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._request_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._stopping = asyncio.Event()

    async def start(self) -> int:
        """Load data, bind, and return the port listened on."""
        self.state = ServerState(self.config)
        self.state.store.changelog.reset_notifier()
        self._server = await asyncio.start_server(
            self._serve_connection, self.config.host, self.config.port, reuse_address=True,
            limit=wire.MAX_MESSAGE_SIZE,
        )
        port = int(self._server.sockets[0].getsockname()[1])
        self.config.port = port
        self.state.advertised_address = f"{_advertised_host(self.config.host)}:{port}"
        return port

    async def serve_until_stopped(self) -> None:
        """Serve until :meth:`request_stop`; then close connections and checkpoint."""
        assert self._server is not None and self.state is not None
        maintenance = asyncio.create_task(self._maintenance())
        await self._stopping.wait()
        maintenance.cancel()
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self.state.store.checkpoint()
        if self.state.store.persistence is not None:
            self.state.store.persistence.close()

    def request_stop(self) -> None:
        """Ask the server to shut down cleanly."""
        self._stopping.set()

    async def _maintenance(self) -> None:
        assert self.state is not None
        state = self.state
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
                deleted = ttl.expire_documents(state.store, now)
                if deleted:
                    log.info("TTL monitor deleted %d expired documents", deleted)
                state.expire_sessions()
                persistence = state.store.persistence
                if persistence is not None and persistence.wal_bytes > CHECKPOINT_WAL_BYTES:
                    state.store.checkpoint()
            except Exception:
                log.exception("maintenance task failed")

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        assert self.state is not None
        state = self.state
        peer = writer.get_extra_info("peername")
        connection: dict[str, Any] = {"id": next(self._connection_ids),
                                      "peer": f"{peer[0]}:{peer[1]}" if peer else ""}
        state.connection_count += 1
        state.connections_made += 1
        self._connections.add(writer)
        try:
            while True:
                raw_header = await reader.readexactly(wire.HEADER.size)
                header = wire.parse_header(raw_header)
                payload = await reader.readexactly(header.length - wire.HEADER.size)
                reply = await self._handle_message(header, payload, connection)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, CloseConnection,
                asyncio.CancelledError):
            pass
        except wire.ProtocolViolation as exc:
            log.warning("closing connection %s: %s", connection["peer"], exc)
        finally:
            self._connections.discard(writer)
            state.connection_count -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle_message(self, header: wire.Header, payload: bytes,
                              connection: dict[str, Any]) -> bytes | None:
        assert self.state is not None
        response_id = next(self._request_ids)
        if header.op_code == wire.OP_MSG:
            try:
                request = wire.parse_op_msg(header, payload)
            except wire.BadRequest as exc:
                doc = CommandError(exc.code, exc.message).to_document()
                return wire.encode_op_msg(header.request_id, response_id, doc)
            reply = await self.state.execute(request.body, connection)
            if request.more_to_come:
                return None
            return wire.encode_op_msg(header.request_id, response_id, reply)
        if header.op_code == wire.OP_QUERY:
            try:
                _, request = wire.parse_op_query(header, payload)
            except wire.BadRequest as exc:
                doc = CommandError(exc.code, exc.message).to_document()
                return wire.encode_op_reply(header.request_id, response_id, doc)
            name = next(iter(request.body), "")
            if name not in HELLO_COMMANDS:
                doc = CommandError(352, f"Unsupported OP_QUERY command: {name}. The client "
                                   "driver may require an upgrade.").to_document()
            else:
                doc = await self.state.execute(request.body, connection)
            return wire.encode_op_reply(header.request_id, response_id, doc)
        raise wire.ProtocolViolation(f"unsupported opcode {header.op_code}")


def _advertised_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return host


async def run(config: ServerConfig) -> None:
    """Start the server, print its URI as the first stdout line, serve until SIGTERM/SIGINT."""
    server = EmbeddedMongoServer(config)
    port = await server.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    host = _advertised_host(config.host)
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(f"mongodb://{shown}:{port}/\n")
    sys.stdout.flush()
    log.info("embedded MongoDB-compatible server listening on %s:%d (%s)", config.host, port,
             f"dbpath {config.dbpath}" if config.dbpath else "in memory")
    await server.serve_until_stopped()
    log.info("embedded server stopped")
