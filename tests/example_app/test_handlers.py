"""The example shop's handlers (``generated/handlers``), tested as a user tests their own.

Unit tests run each handler with :func:`runtime.testing.run_handler` (no runtime) and a
database of the test's own; one integration test runs the whole app with
:class:`runtime.testing.RuntimeHarness` (the embedded server and one runtime in this process).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.database import Database

from generated.handlers import recalculate_product_rating, send_welcome_message, sync_paid_orders
from generated.reactors import sync_paid_orders as sync_paid_orders_reactor
from runtime.testing import OutcomeKind, RuntimeHarness, run_handler, would_trigger

Db = Database[dict[str, Any]]
NOW = datetime.datetime(2030, 5, 6, 7, 8, 9)
USER = {"_id": "u1", "email": "ada@example.com", "name": "Ada"}
ORDER = {"_id": "o1", "status": "paid", "total": 42.0,
         "items": [{"sku": "book", "quantity": 1, "price": 42.0}]}


# ---------------------------------------------------------------- send_welcome_message

def test_welcome_message_is_queued_once(db: Db) -> None:
    first = run_handler(send_welcome_message.handle, USER, database=db)
    assert first.outcome is OutcomeKind.COMPLETED
    assert first.logs == ["welcome message queued for ada@example.com"]
    again = run_handler(send_welcome_message.handle, USER, database=db, attempt=2)
    assert again.outcome is OutcomeKind.COMPLETED
    assert list(db.outbox.find()) == [{"_id": "welcome:u1", "to": "ada@example.com",
                                       "subject": "Welcome, Ada!"}]


def test_welcome_message_skipped_when_the_user_is_gone(db: Db) -> None:
    result = run_handler(send_welcome_message.handle, USER, database=db, current=None)
    assert result.outcome is OutcomeKind.SKIPPED
    assert db.outbox.count_documents({}) == 0


def test_welcome_message_for_an_invalid_user_retries_on_the_series_then_fails(db: Db) -> None:
    no_email = {"_id": "u2", "name": "Bob"}
    first = run_handler(send_welcome_message.handle, no_email, database=db, now=NOW)
    assert first.outcome is OutcomeKind.RETRY
    assert first.error is not None and "failed validation" in first.error
    assert first.retry_in == datetime.timedelta(seconds=10)  # delays: [10s, 1m, 10m, 1h]
    assert first.retry_at == NOW + datetime.timedelta(seconds=10)
    third = run_handler(send_welcome_message.handle, no_email, database=db, attempt=3)
    assert third.retry_in == datetime.timedelta(minutes=10)
    last = run_handler(send_welcome_message.handle, no_email, database=db, attempt=5)
    assert last.outcome is OutcomeKind.FAILED  # maxAttempts: 5
    assert db.outbox.count_documents({}) == 0


# ---------------------------------------------------------------- sync_paid_orders

def test_paid_order_is_pushed_exactly_once_per_execution(db: Db) -> None:
    result = run_handler(sync_paid_orders.handle, ORDER, database=db)
    assert result.outcome is OutcomeKind.COMPLETED
    assert result.completed_in_transaction
    assert db.erp_outbox.find_one({"_id": "o1"}) == {
        "_id": "o1", "total": 42.0, "status": "paid", "pushes": 1,
        "items": [{"sku": "book", "quantity": 1, "price": 42.0}]}


def test_only_paid_orders_trigger_the_push() -> None:
    assert would_trigger(sync_paid_orders_reactor, ORDER)
    assert not would_trigger(sync_paid_orders_reactor, {**ORDER, "status": "new"})


def test_push_skipped_when_the_order_changed_before_it_ran(db: Db) -> None:
    refunded = run_handler(sync_paid_orders.handle, ORDER, database=db,
                           current={**ORDER, "status": "refunded"})
    assert refunded.outcome is OutcomeKind.SKIPPED
    repriced = run_handler(sync_paid_orders.handle, ORDER, database=db,
                           current={**ORDER, "total": 40.0})
    assert repriced.outcome is OutcomeKind.SKIPPED
    assert repriced.error == "watched values changed since the task was planned"
    assert db.erp_outbox.count_documents({}) == 0


def test_push_of_an_invalid_order_retries_with_backoff_then_fails(db: Db) -> None:
    negative = {**ORDER, "total": -1.0}
    third = run_handler(sync_paid_orders.handle, negative, database=db, attempt=3)
    assert third.outcome is OutcomeKind.RETRY
    # exponential from 1 s, factor 2, jitter 0.2: 4 s ± 20 %
    assert third.retry_in is not None
    assert datetime.timedelta(seconds=3.2) <= third.retry_in <= datetime.timedelta(seconds=4.8)
    last = run_handler(sync_paid_orders.handle, negative, database=db, attempt=8)
    assert last.outcome is OutcomeKind.FAILED
    assert db.erp_outbox.count_documents({}) == 0


# ---------------------------------------------------------------- recalculate_product_rating

def test_rating_is_the_average_of_visible_reviews(db: Db) -> None:
    db.reviews.insert_many([{"_id": "r1", "productId": "p1", "rating": 5},
                            {"_id": "r2", "productId": "p1", "rating": 1, "hidden": True}])
    review = {"_id": "r3", "productId": "p1", "rating": 4}
    result = run_handler(recalculate_product_rating.handle, review, database=db)
    assert result.outcome is OutcomeKind.COMPLETED
    assert db.products.find_one({"_id": "p1"}) == {"_id": "p1", "rating": 4.5, "reviewCount": 2}


def test_rating_skipped_when_the_review_was_deleted(db: Db) -> None:
    review = {"_id": "r1", "productId": "p1", "rating": 5}
    result = run_handler(recalculate_product_rating.handle, review, database=db, current=None)
    assert result.outcome is OutcomeKind.SKIPPED
    assert db.products.count_documents({}) == 0


def test_rating_of_an_invalid_review_retries_every_5_s_then_fails(db: Db) -> None:
    review = {"_id": "r1", "productId": "p1", "rating": 9}
    result = run_handler(recalculate_product_rating.handle, review, database=db)
    assert result.outcome is OutcomeKind.RETRY
    assert result.retry_in == datetime.timedelta(seconds=5)
    last = run_handler(recalculate_product_rating.handle, review, database=db, attempt=10)
    assert last.outcome is OutcomeKind.FAILED


# ---------------------------------------------------------------- the whole app

@pytest.fixture
def shop() -> Iterator[RuntimeHarness]:
    """The example app on an embedded server of its own, with one runtime."""
    with RuntimeHarness("generated") as harness:
        yield harness


def test_the_shop_end_to_end(shop: RuntimeHarness) -> None:
    shop.db.users.insert_one(dict(USER))
    shop.db.orders.insert_one({**ORDER, "status": "new"})
    shop.db.orders.update_one({"_id": "o1"}, {"$set": {"status": "paid"}})
    shop.db.reviews.insert_many([{"_id": f"r{i}", "productId": "p1", "rating": rating}
                                 for i, rating in enumerate([5, 4, 3])])
    shop.wait_until_idle(timeout=30)  # includes the reviews' 2 s debounce
    assert shop.db.outbox.count_documents({"_id": "welcome:u1"}) == 1
    assert shop.db.erp_outbox.find_one({"_id": "o1"}, {"pushes": 1}) == {"_id": "o1",
                                                                           "pushes": 1}
    assert shop.db.products.find_one({"_id": "p1"}) == {"_id": "p1", "rating": 4.0,
                                                         "reviewCount": 3}
    task = shop.task("sync_paid_orders", "o1")
    assert task is not None and task["status"] == "completed"
    assert [entry["status"] for entry in task["history"]] == ["completed"]
    shop.run_cron_now("daily_sales_report")
    shop.wait_until_idle(timeout=30)
    report = shop.db.sales_reports.find_one({"trigger": "manual"})
    assert report is not None and report["orders"] == 1 and report["total"] == 42.0
