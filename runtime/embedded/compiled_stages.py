"""Compiled update pipelines: ``$set``/``$addFields``/``$unset`` stages for the hot path.

The runtime's claims, finalizations and planner upserts are update pipelines of these stages.
Each statement brings its own pipeline (the literal values differ), so compiling must cost
less than evaluating: a stage only checks its shape and sorts its fields into constants
(set as they are) and expressions (:func:`runtime.embedded.compiled.evaluate`). Anything else
raises :class:`Unsupported`, before any document is read, and the caller falls back to the
general engine, exactly as :mod:`runtime.embedded.compiled` describes.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from runtime.embedded.compiled import NOTHING, Unsupported, evaluate

__all__ = ["Stage", "Unsupported", "compile_pipeline_update", "pipeline_update"]

Stage = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

#: Expression types that are their own value (as are strings that do not start with ``$``).
_CONSTANT_TYPES = frozenset({type(None), bool, int, float, datetime.datetime, ObjectId})

#: A ``$set`` field: its path, the path's parts when dotted (else None), whether the value is
#: known without a document, and that value or the expression that computes it.
Field = tuple[str, list[str] | None, bool, Any]


def _set_fields(spec: Any) -> list[Field]:
    """The fields of a ``$set`` stage (Unsupported for ``$`` or empty paths)."""
    if not isinstance(spec, dict) or not spec:
        raise Unsupported("$set")
    fields: list[Field] = []
    for path, expression in spec.items():
        if not isinstance(path, str) or path[:1] == "$" or not path:
            raise Unsupported(path)
        parts = path.split(".") if "." in path else None
        # Values no document or variable changes are found here, not once per document.
        kind = type(expression)
        if kind is str:
            if expression[:1] != "$":
                fields.append((path, parts, True, expression))
            elif expression == "$$REMOVE":
                fields.append((path, parts, True, NOTHING))
            else:
                fields.append((path, parts, False, expression))
        elif kind in _CONSTANT_TYPES:
            fields.append((path, parts, True, expression))
        elif kind is dict and len(expression) == 1 and "$literal" in expression:
            fields.append((path, parts, True, expression["$literal"]))
        else:
            fields.append((path, parts, False, expression))
    return fields


def _set_path(out: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set (or, for ``NOTHING``, remove) a dotted path of ``out``, copying the embedded
    documents on the way (they belong to the stage's input)."""
    target = out
    for part in parts[:-1]:
        child = target.get(part)
        if isinstance(child, list):
            raise Unsupported("$set through an array")
        if not isinstance(child, dict):
            if value is NOTHING:
                return
            child = {}
        else:
            child = dict(child)
        target[part] = child
        target = child
    if value is NOTHING:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = value


def _set_stage(spec: Any) -> Stage:
    """A ``$set``/``$addFields`` stage: every expression reads the stage's input document."""
    fields = _set_fields(spec)

    def apply(doc: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
        out = dict(doc)
        for path, parts, constant, expression in fields:
            value = expression if constant else evaluate(expression, doc, variables)
            if parts is not None:
                _set_path(out, parts, value)
            elif value is NOTHING:
                out.pop(path, None)
            else:
                out[path] = value
        return out

    return apply


def _unset_stage(spec: Any) -> Stage:
    """An ``$unset`` stage of top-level fields."""
    paths = [spec] if isinstance(spec, str) else spec
    if not isinstance(paths, list) or not paths:
        raise Unsupported("$unset")
    for path in paths:
        if not isinstance(path, str) or not path or path[:1] == "$" or "." in path:
            raise Unsupported("$unset")
    removed = frozenset(paths)

    def apply(doc: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k not in removed}

    return apply


_STAGES: dict[str, Callable[[Any], Stage]] = {
    "$set": _set_stage, "$addFields": _set_stage, "$unset": _unset_stage}


def compile_pipeline_update(pipeline: list[Any]) -> Stage:
    """One function applying an update pipeline of ``$set``/``$addFields``/``$unset`` stages.

    The input document is never changed; the stages evaluate against the previous stage's
    output, as in MongoDB.
    """
    stages: list[Stage] = []
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise Unsupported("stage shape")
        for name in stage:  # the one key
            build = _STAGES.get(name)
            if build is None:
                raise Unsupported(name)
            stages.append(build(stage[name]))
    if len(stages) == 1:  # the runtime's claims and finalizations
        return stages[0]

    def apply(doc: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
        for stage in stages:
            doc = stage(doc, variables)
        return doc

    return apply


_PIPELINES: dict[int, tuple[list[Any], Stage | None]] = {}


def pipeline_update(pipeline: list[Any]) -> Stage | None:
    """The compiled form of an update pipeline (cached for the command's statement object), or
    None when it needs the general engine."""
    cached = _PIPELINES.get(id(pipeline))
    if cached is not None and cached[0] is pipeline:
        return cached[1]
    try:
        compiled: Stage | None = compile_pipeline_update(pipeline)
    except Unsupported:
        compiled = None
    if len(_PIPELINES) >= 256:
        _PIPELINES.clear()
    _PIPELINES[id(pipeline)] = (pipeline, compiled)
    return compiled
