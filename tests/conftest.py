"""Shared pytest fixtures.

By default the tests run against the embedded server (``runtime db``), started once
per session in memory. Set ``MONGODB_URI`` to run them against a real MongoDB replica
set instead; tests marked ``embedded_only`` (those that check the embedded server's
own behaviour, or use ``fresh_server``) are then skipped.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database
from support import ServerFactory

from runtime.embedded.process import EmbeddedServer

MONGODB_URI_ENV = "MONGODB_URI"
EMBEDDED_ONLY = "embedded_only"


def external_uri() -> str | None:
    """The URI of an external MongoDB from ``MONGODB_URI``, or ``None`` if unset."""
    return os.environ.get(MONGODB_URI_ENV) or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{EMBEDDED_ONLY}: checks the embedded server itself; skipped when "
        f"{MONGODB_URI_ENV} points at a real MongoDB",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "fresh_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.embedded_only)
    if external_uri() is None:
        return
    skip = pytest.mark.skip(reason=f"embedded server only ({MONGODB_URI_ENV} is set)")
    for item in items:
        if item.get_closest_marker(EMBEDDED_ONLY) is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    """URI of the MongoDB the tests use: ``MONGODB_URI``, or a session embedded server."""
    uri = external_uri()
    if uri is not None:
        yield uri
        return
    server = EmbeddedServer(enable_test_commands=True)
    server.start()
    try:
        yield server.uri
    finally:
        crashed = not server.running
        status = server.stop()
    if crashed or status != 0:
        what = "died during the test session" if crashed else "did not shut down cleanly"
        pytest.fail(
            f"embedded server {what} (exit status {status}); log: {server.log_path}",
            pytrace=False,
        )


@pytest.fixture
def client(mongodb_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A synchronous pymongo client for :func:`mongodb_uri`, closed after the test."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri)
    try:
        yield mongo
    finally:
        mongo.close()


def _database_name(node_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", node_name).strip("_")[:30]
    return f"t_{uuid.uuid4().hex[:10]}_{slug}"


@pytest.fixture
def db(
    client: MongoClient[dict[str, Any]], request: pytest.FixtureRequest
) -> Iterator[Database[dict[str, Any]]]:
    """A fresh, uniquely named database for this test, dropped afterwards."""
    name = _database_name(request.node.name)
    try:
        yield client[name]
    finally:
        client.drop_database(name)


@pytest_asyncio.fixture
async def async_client(mongodb_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """An asyncio pymongo client for :func:`mongodb_uri`, closed after the test."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        yield mongo
    finally:
        await mongo.close()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory for tests that need a server process of their own.

    ``fresh_server()`` starts an :class:`EmbeddedServer` with a ``dbpath`` under
    ``tmp_path`` (``in_memory=True`` for none) and its log in ``tmp_path``; keyword
    options go to :class:`EmbeddedServer`. All servers are stopped after the test.
    Tests using it are marked ``embedded_only`` automatically.
    """
    servers: list[EmbeddedServer] = []
    counter = itertools.count(1)

    def start(*, in_memory: bool = False, **options: Any) -> EmbeddedServer:
        n = next(counter)
        if not in_memory:
            options.setdefault("dbpath", tmp_path / f"db{n}")
        options.setdefault("log_path", tmp_path / f"server{n}.log")
        server = EmbeddedServer(**options)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
