"""``updateDescription`` of an update event, computed by diffing the before and after documents.

Changed and added fields are reported as dotted paths in ``updatedFields`` (array elements by
index, as MongoDB does), removed fields in ``removedFields``, and arrays that only lost trailing
elements in ``truncatedArrays``. ``disambiguatedPaths`` (shown only to ``showExpandedEvents``
streams) spells out, as a list of components with array indices as integers, every reported path
that a dotted string cannot express unambiguously: one with a numeric field name of a document
or a field name containing a dot.
"""

from __future__ import annotations

from typing import Any

Component = str | int


def same_value(a: Any, b: Any) -> bool:
    """Equal value *and* equal BSON type (``1`` and ``1.0`` differ, as on the server)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _Diff:
    def __init__(self) -> None:
        self.updated: dict[str, Any] = {}
        self.removed: list[str] = []
        self.truncated: list[dict[str, Any]] = []
        self.disambiguated: dict[str, list[Component]] = {}

    def _path(self, components: tuple[Component, ...]) -> str:
        path = ".".join(str(c) for c in components)
        if any(isinstance(c, str) and (c.isdigit() or "." in c) for c in components):
            self.disambiguated[path] = list(components)
        return path

    def update(self, components: tuple[Component, ...], value: Any) -> None:
        self.updated[self._path(components)] = value

    def remove(self, components: tuple[Component, ...]) -> None:
        self.removed.append(self._path(components))

    def truncate(self, components: tuple[Component, ...], new_size: int) -> None:
        self.truncated.append({"field": self._path(components), "newSize": new_size})


def describe_update(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The ``updateDescription`` that turns ``before`` into ``after``.

    The result also carries ``disambiguatedPaths``; change streams drop it unless the stream was
    opened with ``showExpandedEvents``.
    """
    diff = _Diff()
    _diff_documents(before, after, (), diff)
    return {"updatedFields": diff.updated, "removedFields": diff.removed,
            "truncatedArrays": diff.truncated, "disambiguatedPaths": diff.disambiguated}


def _diff_documents(before: dict[str, Any], after: dict[str, Any],
                    prefix: tuple[Component, ...], diff: _Diff) -> None:
    for key, new in after.items():
        if key not in before:
            diff.update((*prefix, key), new)
        else:
            _diff_values(before[key], new, (*prefix, key), diff)
    for key in before:
        if key not in after:
            diff.remove((*prefix, key))


def _diff_values(old: Any, new: Any, path: tuple[Component, ...], diff: _Diff) -> None:
    if same_value(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict) and _same_order(old, new):
        _diff_documents(old, new, path, diff)
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(new) < len(old):
            diff.truncate(path, len(new))
        for index, element in enumerate(new):
            if index >= len(old):
                diff.update((*path, index), element)
            elif isinstance(old[index], dict) and isinstance(element, dict):
                _diff_values(old[index], element, (*path, index), diff)
            elif not same_value(old[index], element):
                diff.update((*path, index), element)
        return
    diff.update(path, new)


def _same_order(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the fields both documents keep appear in the same order in each.

    Only then can the change be described field by field: ``updatedFields`` appends new fields
    at the end, so a reordering has to be reported as a new value for the whole document.
    """
    kept_old = [k for k in old if k in new]
    kept_new = [k for k in new if k in old]
    if kept_old != kept_new:
        return False
    # New fields are appended by the server, so they must all come after the kept ones.
    positions = [i for i, k in enumerate(new) if k in old]
    return not positions or positions[-1] == len(positions) - 1
