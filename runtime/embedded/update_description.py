"""``updateDescription`` of an update event, computed by diffing the before and after documents.

Changed and added fields are reported as dotted paths in ``updatedFields`` (array elements by
index, as MongoDB does), removed fields in ``removedFields``, and arrays that only lost trailing
elements in ``truncatedArrays``.
"""

from __future__ import annotations

from typing import Any


def same_value(a: Any, b: Any) -> bool:
    """Equal value *and* equal BSON type (``1`` and ``1.0`` differ, as on the server)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def describe_update(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The ``updateDescription`` that turns ``before`` into ``after``."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    _diff_documents(before, after, "", updated, removed, truncated)
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


def _diff_documents(before: dict[str, Any], after: dict[str, Any], prefix: str,
                    updated: dict[str, Any], removed: list[str],
                    truncated: list[dict[str, Any]]) -> None:
    for key, new in after.items():
        path = prefix + key
        if key not in before:
            updated[path] = new
        else:
            _diff_values(before[key], new, path, updated, removed, truncated)
    for key in before:
        if key not in after:
            removed.append(prefix + key)


def _diff_values(old: Any, new: Any, path: str, updated: dict[str, Any], removed: list[str],
                 truncated: list[dict[str, Any]]) -> None:
    if same_value(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict) and list(old)[: len(new)] == list(new)[
        : len(old)
    ]:
        _diff_documents(old, new, path + ".", updated, removed, truncated)
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(new) < len(old):
            truncated.append({"field": path, "newSize": len(new)})
        for index, element in enumerate(new):
            element_path = f"{path}.{index}"
            if index >= len(old):
                updated[element_path] = element
            elif isinstance(old[index], dict) and isinstance(element, dict):
                _diff_values(old[index], element, element_path, updated, removed, truncated)
            elif not same_value(old[index], element):
                updated[element_path] = element
        return
    updated[path] = new
