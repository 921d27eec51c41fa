"""Running the dashboard with uvicorn inside an existing asyncio event loop.

:func:`serve_dashboard` binds the socket itself (so a port in use is an ``OSError`` for the
caller, not uvicorn's ``sys.exit``, and port 0 picks a free port), runs ``uvicorn.Server`` as a
task of the current loop without touching signal handlers (the runtime owns SIGTERM/SIGINT),
and returns a :class:`DashboardServer` whose :meth:`~DashboardServer.stop` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Iterable
from typing import Any

import uvicorn
from pymongo.asynchronous.database import AsyncDatabase

from runtime.dashboard.app import REFRESH_MS, create_app, default_actor
from runtime.dashboard.security import is_loopback
from runtime.management.facade import Management
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.dashboard")

STOP_TIMEOUT_S = 5.0
GRACEFUL_SHUTDOWN_S = 3


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve dashboard host {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def dashboard_url(host: str, port: int) -> str:
    """``http://host:port/`` (IPv6 addresses bracketed)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


class DashboardServer:
    """A running dashboard: its :attr:`url`, and :meth:`stop`."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], url: str,
                 port: int, management: Management) -> None:
        self._server = server
        self._task = task
        self.url = url
        """Where it listens, e.g. ``http://127.0.0.1:8700/``."""
        self.port = port
        """The bound port (the chosen one when 0 was asked for)."""
        self.management = management

    @property
    def running(self) -> bool:
        """Whether the server task is still running."""
        return not self._task.done()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop accepting connections, let running requests finish (up to ``timeout``), and
        end the server task. Idempotent."""
        self._server.should_exit = True
        if self._task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        except Exception as exc:  # the server failed: it is stopped either way
            log_event(log, logging.WARNING, f"dashboard stopped with an error: {exc}",
                      event="dashboard.error", error=str(exc))
        log_event(log, logging.INFO, "dashboard stopped", event="dashboard.stopped",
                  url=self.url)


async def serve_dashboard(reactors: Iterable[ReactorSpec], database: AsyncDatabase[Any],
                          host: str = "127.0.0.1", port: int = 0, token: str | None = None, *,
                          actor: str | None = None,
                          refresh_ms: int = REFRESH_MS) -> DashboardServer:
    """Serve the dashboard on ``host:port`` from the running event loop, until
    :meth:`DashboardServer.stop`.

    ``reactors`` are the application's (``load_app(...).reactors``); ``database`` is the
    runtime's database (``--database``: ``reactgen_meta`` and the reactors' default database),
    on a client of the caller's, which stays open. ``token`` enables the mutating actions
    (None or empty: a read-only dashboard). ``actor`` is recorded as ``by`` in pauses and scan
    requests (default ``dashboard@<host name>``). Raises ``OSError`` if the address cannot be
    bound. Logs the URL (``event=dashboard.started``).
    """
    management = Management(database, list(reactors), actor=actor or default_actor())
    app = create_app(management, token, local_only=is_loopback(host), refresh_ms=refresh_ms)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host=host, port=bound_port, log_level="warning",
                            log_config=None, access_log=False, lifespan="off",
                            server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="reactgen-dashboard")
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        exc = task.exception()
        raise OSError(f"the dashboard could not start on {host}:{bound_port}: {exc}")
    url = dashboard_url(host, bound_port)
    mode = "actions need the token" if token else \
        "read-only: no token configured, actions are disabled"
    log_event(log, logging.INFO, f"dashboard on {url} ({mode})", event="dashboard.started",
              url=url, read_only=not token)
    return DashboardServer(server, task, url, bound_port, management)


__all__ = ["DashboardServer", "dashboard_url", "serve_dashboard"]
