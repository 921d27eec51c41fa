"""Helpers of the management tests: the ``runtime`` CLI as a subprocess, hand-written task and
meta documents, the application loaded in-process for the Python API."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.database import Database
from runtime_harness import REPO, App
from scenario import server_now

from runtime.app_loader import load_app
from runtime.management import ManagementSync
from runtime.reactor import ReactorSpec
from runtime.settings import ENVIRONMENT

Doc = dict[str, Any]
RUNTIME = [sys.executable, "-m", "runtime"]
SETTINGS_VARIABLES = {*ENVIRONMENT.values(), "REACTGEN_TIMEOUT_MS"}


def cli_env(app: App | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any runtime setting, the app and the repository on
    ``PYTHONPATH``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    paths = ([str(app.root)] if app else []) + [str(REPO), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def run_cli(args: list[str], app: App | None = None, uri: str | None = None,
            database: str | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m runtime ARGS`` with ``--app``/``--mongodb-uri``/``--database`` appended
    when given, in the app's folder."""
    argv = [*RUNTIME, *args]
    if app is not None:
        argv += ["--app", app.package]
    if uri is not None:
        argv += ["--mongodb-uri", uri]
    if database is not None:
        argv += ["--database", database]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(app, env), cwd=cwd or (app.root if app else REPO))


def json_lines(result: subprocess.CompletedProcess[str]) -> list[Doc]:
    """The JSON objects a ``--json`` command printed (one per line)."""
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def reactors_of(app: App) -> list[ReactorSpec]:
    """The app's reactors, loaded in this process (for the Python API)."""
    if str(app.root) not in sys.path:
        sys.path.insert(0, str(app.root))
    return load_app(app.package).reactors


@contextmanager
def management(uri: str, db: Database[Doc], app: App | None = None,
               **options: Any) -> Iterator[ManagementSync]:
    """A :class:`ManagementSync` on the test database."""
    sync = ManagementSync(uri, db.name, reactors_of(app) if app else (), actor="tester",
                          **options)
    try:
        yield sync
    finally:
        sync.close()


def task_doc(source_id: Any, status: str, reactor: str = "record", **fields: Any) -> Doc:
    """A hand-written task document, as the runtime writes them."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    doc: Doc = {"_id": ObjectId(), "reactor": reactor, "sourceId": source_id, "status": status,
                "nextRunAt": None, "attempts": 0, "snapshot": {}, "snapshotHash": "x",
                "dueAt": now, "createdAt": now, "updatedAt": now, "lastError": None,
                "firstErrorAt": None, "lease": None, "history": []}
    doc.update(fields)
    return doc


def heartbeat(db: Database[Doc], instance: str, age_s: float, **fields: Any) -> None:
    """A hand-written heartbeat document ``age_s`` seconds old by the server's clock."""
    now = server_now(db)
    db.reactgen_meta.replace_one(
        {"_id": f"instance:{instance}"},
        {"instance": instance, "host": "h", "pid": 1, "version": "0.1.0",
         "reactors": ["record"], "concurrency": 10, "running": 0, "leader": False,
         "startedAt": now - datetime.timedelta(minutes=5),
         "heartbeatAt": now - datetime.timedelta(seconds=age_s), **fields}, upsert=True)
