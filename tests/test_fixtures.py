"""Checks of the shared fixtures (conftest.py) and helpers (support.py)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database
from support import wait_until, wait_until_async


def test_wait_until_returns_the_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5) == "done"


def test_wait_until_times_out_with_message() -> None:
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.05, message="never true")


async def test_wait_until_async() -> None:
    counter = itertools.count()

    async def ready() -> int | None:
        value = next(counter)
        return value if value >= 2 else None

    assert await wait_until_async(ready, timeout=5) == 2


def test_db_is_unique_and_usable(
    client: MongoClient[dict[str, Any]], db: Database[dict[str, Any]]
) -> None:
    assert db.name.startswith("t_")
    assert db.name not in client.list_database_names()
    db.items.insert_one({"_id": 1, "name": "first"})
    assert db.items.find_one({"_id": 1}) == {"_id": 1, "name": "first"}


async def test_async_client_round_trip(async_client: AsyncMongoClient[dict[str, Any]]) -> None:
    assert (await async_client.admin.command("ping"))["ok"] == 1
    name = f"t_async_{uuid.uuid4().hex[:10]}"
    try:
        await async_client[name].items.insert_one({"_id": "a", "n": 1})
        assert await async_client[name].items.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
    finally:
        await async_client.drop_database(name)
