"""Helpers of the dashboard tests: ``runtime dashboard`` as a real process, the test
application (one reactor whose handler fails on demand), and reading forms out of pages."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.database import Database
from runtime_harness import REPO, App, RuntimeProcess

Doc = dict[str, Any]
AppBuilder = Callable[[dict[str, str], dict[str, str]], App]
"""Type of the ``make_app`` fixture (``tests/runtime/conftest.py``)."""
RuntimeFactory = Callable[..., RuntimeProcess]
"""Type of the ``start_runtime`` fixture (``tests/runtime/conftest.py``)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-test-token-5f1c"
SETTINGS_PREFIXES = ("REACTGEN_", "MONGODB_URI")

DEFINITION = """
    collection: things
    schema:
      type: object
      title: Thing
      properties:
        _id: {type: string}
        n: {type: integer}
        fail: {type: boolean}
    trigger:
      watch: [n]
    policies:
      retry: {maxAttempts: 1}
"""

HANDLER = """
    from bson import ObjectId

    from {package}.reactors.record import Context


    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        await ctx.database["runs"].update_one(
            {"_id": ObjectId()},
            {"$set": {"source": thing.id, "attempt": ctx.attempt},
             "$currentDate": {"startedAt": True}},
            upsert=True)
        if thing.fail and await ctx.database["control"].find_one({"_id": "fixed"}) is None:
            raise ValueError(f"boom <b>{thing.id}</b> & <script>alert(1)</script>")
"""
"""Fails while the source has ``fail: true`` and no ``control`` document ``fixed`` exists;
every execution leaves a ``runs`` document ``{source, attempt, startedAt}`` (server time)."""


def env_for(app: App, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without runtime settings, the app and the repository on
    ``PYTHONPATH``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join([str(app.root), str(REPO),
                                         os.environ.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@dataclass
class DashboardProcess:
    """One ``runtime dashboard`` process on port 0; :attr:`url` once started."""

    app: App
    uri: str
    database: str
    token: str | None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    name: str = "dashboard"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    url: str = ""

    def start(self) -> DashboardProcess:
        """Start the process (logs at DEBUG into a file next to the app)."""
        self.log_path = self.app.root / f"{self.name}.log"
        log = self.log_path.open("ab")
        argv = [sys.executable, "-m", "runtime", "dashboard", "--app", self.app.package,
                "--mongodb-uri", self.uri, "--database", self.database, "--log-level",
                "DEBUG", *self.args]
        if "--port" not in self.args and "REACTGEN_DASHBOARD_PORT" not in self.env:
            argv += ["--port", "0"]
        if self.token is not None:
            argv += ["--token", self.token]
        self.process = subprocess.Popen(argv, cwd=self.app.root,
                                        env=env_for(self.app, self.env),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path and self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex) appears; fails with the log tail."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) "
                                     f"before {pattern!r}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged by {self.name} within "
                                     f"{timeout}s:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    def wait_started(self, timeout: float = 30) -> str:
        """Until it logs its URL (``event=dashboard.started``); returns the URL."""
        match = self.wait_for_log(r"event=dashboard\.started.* url=(http://\S+/)", timeout)
        self.url = match.group(1).rstrip("/")
        return self.url

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout}s:\n"
                                 f"{self.log()[-4000:]}") from None


DashboardFactory = Callable[..., DashboardProcess]
"""Type of the ``start_dashboard`` fixture (``conftest.py``)."""


def server_now(db: Database[Doc]) -> datetime.datetime:
    """The database server's clock (naive UTC, like the dates in documents)."""
    local_time = db.client.admin.command("hello")["localTime"]
    assert isinstance(local_time, datetime.datetime)
    return local_time.replace(tzinfo=None)


def hidden_field(html: str, name: str) -> str:
    """The value of the first hidden input ``name`` in a page."""
    match = re.search(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no hidden field {name!r} in the page"
    return match.group(1)
