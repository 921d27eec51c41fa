"""Fixtures for end-to-end runtime tests: apps built by ``reactgen build``, real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database
from runtime_harness import App, RuntimeProcess, build_app

AppBuilder = Callable[[dict[str, str], dict[str, str]], App]
RuntimeFactory = Callable[..., RuntimeProcess]


@pytest.fixture
def make_app(tmp_path: Path) -> AppBuilder:
    """``make_app(definitions, handlers)``: build a throw-away application package."""

    def make(definitions: dict[str, str], handlers: dict[str, str]) -> App:
        return build_app(tmp_path, definitions, handlers)

    return make


@pytest.fixture
def start_runtime(mongodb_uri: str, db: Database[dict[str, Any]]) -> Iterator[RuntimeFactory]:
    """``start_runtime(app, instance_id="a", args=[...], env={...}, wait=True)`` starts
    ``runtime serve`` on the test's database; every process is stopped after the test."""
    processes: list[RuntimeProcess] = []

    def start(app: App, instance_id: str = "a", args: list[str] | None = None,
              env: dict[str, str] | None = None, prefix: list[str] | None = None,
              wait: bool = True) -> RuntimeProcess:
        process = RuntimeProcess(app, mongodb_uri, db.name, instance_id, list(args or []),
                                 dict(env or {}), list(prefix or []))
        processes.append(process)
        process.start()
        if wait:
            process.wait_started()
        return process

    try:
        yield start
    finally:
        for process in processes:
            try:
                process.stop()
            except AssertionError:
                process.kill()
