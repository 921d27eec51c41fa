"""``validate`` (MongoDB 7.0 manual, "validate" command): index/document consistency report."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure


def test_validate_reports_records_and_keys_per_index(db: Database[dict[str, Any]]) -> None:
    """A consistent collection is ``valid: true`` with ``nrecords`` and ``keysPerIndex``."""
    db.items.insert_many([{"_id": i, "tags": ["a", "b"], "n": i} for i in range(5)])
    db.items.create_index("tags")
    reply = db.command("validate", "items", full=True)
    assert reply["valid"] is True and reply["errors"] == []
    assert reply["nrecords"] == 5 and reply["nIndexes"] == 2
    assert reply["keysPerIndex"] == {"_id_": 5, "tags_1": 10}  # multikey: one key per element
    assert reply["ns"] == f"{db.name}.items"


def test_validate_of_a_missing_collection_is_namespace_not_found(
        db: Database[dict[str, Any]]) -> None:
    """mongod answers NamespaceNotFound (26) for a collection that does not exist."""
    with pytest.raises(OperationFailure) as info:
        db.command("validate", "nothing_here")
    assert info.value.code == 26


def test_validate_option_types_are_checked(db: Database[dict[str, Any]]) -> None:
    """``full`` is a bool in the command's IDL: another type is TypeMismatch (14)."""
    db.items.insert_one({})
    with pytest.raises(OperationFailure) as info:
        db.command("validate", "items", full="yes")
    assert info.value.code == 14
