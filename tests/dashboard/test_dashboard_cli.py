"""``runtime dashboard`` settings (flags and their environment twins) and the in-process
:func:`runtime.dashboard.server.serve_dashboard` that ``runtime serve`` uses."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
from dashboard_support import (
    DEFINITION,
    HANDLER,
    TOKEN,
    AppBuilder,
    DashboardFactory,
    Doc,
    env_for,
)
from pymongo import AsyncMongoClient
from pymongo.database import Database
from runtime_harness import App

from runtime.app_loader import load_app
from runtime.dashboard.server import serve_dashboard


def build(make_app: AppBuilder) -> App:
    return make_app({"record": DEFINITION}, {"record": HANDLER})


def run_dashboard(app: App, *args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", "dashboard", *args],
                          capture_output=True, text=True, timeout=60, cwd=app.root,
                          env=env_for(app, env))


def test_usage_errors_name_the_flag_or_variable(make_app: AppBuilder, mongodb_uri: str) -> None:
    app = build(make_app)
    help_text = run_dashboard(app, "--help").stdout
    for variable in ("REACTGEN_DASHBOARD_PORT", "REACTGEN_DASHBOARD_HOST",
                     "REACTGEN_DASHBOARD_TOKEN", "MONGODB_URI", "REACTGEN_APP",
                     "REACTGEN_DATABASE"):
        assert variable in help_text
    missing = run_dashboard(app, "--app", app.package)
    assert missing.returncode == 2 and "--mongodb-uri (or MONGODB_URI) is required" \
        in missing.stderr
    bad_port = run_dashboard(app, "--mongodb-uri", mongodb_uri, "--port", "70000")
    assert bad_port.returncode == 2 and "--port must be a port number" in bad_port.stderr
    bad_env = run_dashboard(app, "--mongodb-uri", mongodb_uri,
                            env={"REACTGEN_DASHBOARD_PORT": "http"})
    assert bad_env.returncode == 2
    assert "REACTGEN_DASHBOARD_PORT (environment, for --port) must be a port number" \
        in bad_env.stderr
    no_app = run_dashboard(app, "--mongodb-uri", mongodb_uri, "--app", "no_such_app")
    assert no_app.returncode == 1 and "cannot import no_such_app.registry" in no_app.stderr
    unreachable = run_dashboard(app, "--app", app.package, "--mongodb-uri",
                                "mongodb://127.0.0.1:9/?directConnection=true",
                                "--timeout-ms", "300")
    assert unreachable.returncode == 4 and "cannot reach MongoDB" in unreachable.stderr


def test_settings_from_the_environment(make_app: AppBuilder, mongodb_uri: str,
                                       db: Database[Doc],
                                       start_dashboard: DashboardFactory) -> None:
    """Every setting can come from its variable; a flag wins over its variable."""
    app = build(make_app)
    dashboard = start_dashboard(app, env={
        "REACTGEN_DASHBOARD_TOKEN": TOKEN, "REACTGEN_DASHBOARD_PORT": "0",
        "REACTGEN_DASHBOARD_HOST": "localhost"}, args=["--host", "127.0.0.1"])
    assert dashboard.url.startswith("http://127.0.0.1:")
    assert "read_only=False" in dashboard.log()
    with httpx.Client(timeout=30) as client:
        page = client.get(dashboard.url + "/")
    assert page.status_code == 200
    assert 'id="login"' in page.text and "read-only" not in page.text
    assert TOKEN not in dashboard.log()


async def test_serve_dashboard_in_process(make_app: AppBuilder, mongodb_uri: str,
                                          db: Database[Doc]) -> None:
    """The function ``runtime serve --dashboard-port`` calls: serves from the running loop,
    refuses a port in use with ``OSError``, and stops."""
    app = build(make_app)
    sys.path.insert(0, str(app.root))
    try:
        reactors = load_app(app.package).reactors
    finally:
        sys.path.remove(str(app.root))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = await serve_dashboard(reactors, client[db.name], "127.0.0.1", 0, None)
        try:
            # the host process keeps its signal handlers (uvicorn's are not installed)
            assert {signum: signal.getsignal(signum) for signum in handlers} == handlers
            assert server.url == f"http://127.0.0.1:{server.port}/"
            async with httpx.AsyncClient(timeout=30) as http:
                overview = await http.get(server.url)
                assert overview.status_code == 200 and 'id="reactor-record"' in overview.text
                assert "read-only: no token configured" in overview.text
                tasks = await http.get(server.url + "tasks?status=failed")
                assert tasks.status_code == 200 and "0</strong> matching" in tasks.text
            with pytest.raises(OSError):
                await serve_dashboard(reactors, client[db.name], "127.0.0.1", server.port,
                                      TOKEN)
        finally:
            await server.stop()
        assert not server.running
        await server.stop()  # idempotent
        async with httpx.AsyncClient(timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(server.url)
    finally:
        await client.close()
