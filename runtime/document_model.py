"""Base class of generated document models: validates documents exactly as PyMongo returns them.

PyMongo hands out BSON-specific values (ObjectId, Int64, Decimal128, naive UTC datetimes) that a
JSON Schema cannot name. Before validation they are converted to what the schema describes:
ObjectId becomes its hex string, Int64 a plain int and Decimal128 a ``Decimal``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pydantic import BaseModel, ConfigDict, model_validator


def to_json_schema_values(value: Any) -> Any:
    """Recursively replace BSON-only values by the JSON-Schema-level values they stand for."""
    if isinstance(value, dict):
        return {k: to_json_schema_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_schema_values(v) for v in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, Decimal128):
        return Decimal(str(value.to_decimal()))
    return value


class DocumentModel(BaseModel):
    """A MongoDB document validated against its reactor's JSON Schema."""

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _from_bson(cls, data: Any) -> Any:
        return to_json_schema_values(data)
