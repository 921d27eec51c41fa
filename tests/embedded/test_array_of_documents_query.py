"""Manual, "Query an Array of Embedded Documents" (examples 29-37, which Motor's suite runs):
several conditions on a field path through an array, without ``$elemMatch``, may each be
satisfied by a different element; with ``$elemMatch`` one element must satisfy all."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

INVENTORY = [
    {"item": "journal", "instock": [{"warehouse": "A", "qty": 5}, {"warehouse": "C", "qty": 15}]},
    {"item": "notebook", "instock": [{"warehouse": "C", "qty": 5}]},
    {"item": "paper", "instock": [{"warehouse": "A", "qty": 60}, {"warehouse": "B", "qty": 15}]},
    {"item": "planner", "instock": [{"warehouse": "A", "qty": 40}, {"warehouse": "B", "qty": 5}]},
    {"item": "postcard", "instock": [{"warehouse": "B", "qty": 15},
                                     {"warehouse": "C", "qty": 35}]},
]


def _items(db: Database[dict[str, Any]], query: dict[str, Any]) -> list[str]:
    return sorted(d["item"] for d in db.inventory.find(query))


def test_range_on_a_path_through_an_array_combines_elements(
        db: Database[dict[str, Any]]) -> None:
    """Example 36: {"instock.qty": {$gt: 10, $lte: 20}} matches 4 documents (the planner's 40
    is > 10 and its 5 is <= 20)."""
    db.inventory.insert_many([dict(d) for d in INVENTORY])
    assert _items(db, {"instock.qty": {"$gt": 10, "$lte": 20}}) == [
        "journal", "paper", "planner", "postcard"]


def test_elem_match_needs_one_element_for_all_conditions(db: Database[dict[str, Any]]) -> None:
    """Example 35: the same range inside $elemMatch matches 3 documents."""
    db.inventory.insert_many([dict(d) for d in INVENTORY])
    assert _items(db, {"instock": {"$elemMatch": {"qty": {"$gt": 10, "$lte": 20}}}}) == [
        "journal", "paper", "postcard"]


def test_conditions_on_two_paths_may_use_different_elements(
        db: Database[dict[str, Any]]) -> None:
    """Example 37: {"instock.qty": 5, "instock.warehouse": "A"} matches 2 documents."""
    db.inventory.insert_many([dict(d) for d in INVENTORY])
    assert _items(db, {"instock.qty": 5, "instock.warehouse": "A"}) == ["journal", "planner"]


def test_regex_with_options_stays_one_condition(db: Database[dict[str, Any]]) -> None:
    """$regex and $options belong together: they are not split into two predicates."""
    db.inventory.insert_many([dict(d) for d in INVENTORY])
    assert _items(db, {"instock.warehouse": {"$regex": "^a$", "$options": "i"}}) == [
        "journal", "paper", "planner"]
