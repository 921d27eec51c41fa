"""``$where`` is refused everywhere (the embedded server runs no server-side JavaScript).

MongoDB evaluates ``$where`` in its JavaScript engine; a server started without scripting
answers BadValue (2). The query library under our engine would translate the string to Python
and ``eval()`` it, so a client could run code in the server: every path that takes a filter
must refuse it before reading a document.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure

EVIL = "this.__class__.__base__.__subclasses__() || true"


@pytest.mark.parametrize("run", [
    lambda c: list(c.find({"$where": EVIL})),
    lambda c: list(c.find({"$or": [{"a": 1}, {"$where": EVIL}]})),
    lambda c: c.count_documents({"$where": EVIL}),
    lambda c: c.distinct("a", {"$where": EVIL}),
    lambda c: c.update_many({"$where": EVIL}, {"$set": {"x": 1}}),
    lambda c: c.delete_many({"$where": EVIL}),
    lambda c: c.find_one_and_update({"$where": EVIL}, {"$set": {"x": 1}}),
    lambda c: list(c.aggregate([{"$match": {"$where": EVIL}}])),
    lambda c: list(c.aggregate([{"$lookup": {"from": c.name, "pipeline": [
        {"$match": {"$where": EVIL}}], "as": "j"}}])),
    lambda c: c.update_many({}, {"$pull": {"arr": {"$where": EVIL}}}),
], ids=["find", "find-in-or", "count", "distinct", "update", "delete", "findAndModify",
        "aggregate-match", "lookup-subpipeline", "pull-condition"])
def test_where_is_bad_value_on_every_path(db: Database[dict[str, Any]], run: Any) -> None:
    db.items.insert_many([{"_id": 1, "a": 1, "arr": [{"b": 1}]}, {"_id": 2, "a": 2}])
    with pytest.raises(OperationFailure) as info:
        run(db.items)
    assert info.value.code == 2
    assert "$where" in str(info.value)
    assert db.items.count_documents({"x": {"$exists": True}}) == 0  # nothing was written
