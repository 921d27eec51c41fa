"""The handler's view of one task execution: ``TaskContext[Model]``.

This module fixes the interface generated handlers are typed against; the runtime provides the
implementation. ``Model`` is the reactor's document model, ``Watched`` the model of its
watched values and ``DocId`` the type of the source document's ``_id`` (both defaulting to
``Any``, so ``TaskContext[Order]`` is a valid annotation). The generator fills in ``DocId`` when
the document schema declares ``_id``: ``str``, ``int``, or ``bson.ObjectId`` for an ``_id`` marked
``bsonType: objectId``.

``get_document()`` returns the validated model; ``get_document(projection={...})`` returns the
projected fields as a plain ``dict`` (the stored field names and BSON values, not validated),
because a model with only some fields set would claim values it does not hold.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, Generic, overload

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase
from typing_extensions import TypeVar

Model = TypeVar("Model", bound=BaseModel)
Watched = TypeVar("Watched", default=Any)
DocId = TypeVar("DocId", default=Any)

Projected = dict[str, Any]
"""What ``get_document(projection=...)`` returns: the projected fields as stored."""


class TaskContext(abc.ABC, Generic[Model, Watched, DocId]):
    """What a handler gets for one execution of one task."""

    doc_id: DocId
    """The source document's ``_id``, as stored (an ``ObjectId`` stays one)."""

    watched_values: Watched
    """The watched values that triggered this execution."""

    attempt: int
    """1 for the first execution of this data version, 2 for the first retry, ..."""

    logger: logging.LoggerAdapter[logging.Logger]
    """A logger that tags every line with reactor, task and source ids."""

    database: AsyncDatabase[dict[str, Any]]
    """The source collection's database (its ``client`` starts sessions for transactions)."""

    @overload
    async def get_document(self, projection: None = None, session: Any = None) -> Model: ...

    @overload
    async def get_document(self, projection: dict[str, Any],
                           session: Any = None) -> Projected: ...

    @abc.abstractmethod
    async def get_document(self, projection: dict[str, Any] | None = None,
                           session: Any = None) -> Model | Projected:
        """The current source document, validated into ``Model``; with a ``projection``, only
        the projected fields as a ``dict`` (not validated). Ends the task as ``skipped`` if the
        document no longer exists, no longer matches the filter, or its watched values
        changed."""

    @abc.abstractmethod
    async def mark_completed(self, session: Any = None) -> None:
        """Record completion inside the caller's transaction (exactly-once side effects)."""

    @abc.abstractmethod
    async def defer(self, delay_ms: int) -> None:
        """Run again after ``delay_ms`` without counting an attempt."""

    @abc.abstractmethod
    async def throttle(self, duration_ms: int) -> None:
        """Pause this whole reactor, on every instance, for ``duration_ms``."""

    # Plain ``def`` handlers run in a thread pool and use these blocking variants.

    @overload
    def get_document_sync(self, projection: None = None, session: Any = None) -> Model: ...

    @overload
    def get_document_sync(self, projection: dict[str, Any],
                          session: Any = None) -> Projected: ...

    @abc.abstractmethod
    def get_document_sync(self, projection: dict[str, Any] | None = None,
                          session: Any = None) -> Model | Projected:
        """Blocking :meth:`get_document`, for handlers written as plain functions."""

    @abc.abstractmethod
    def mark_completed_sync(self, session: Any = None) -> None:
        """Blocking :meth:`mark_completed`."""

    @abc.abstractmethod
    def defer_sync(self, delay_ms: int) -> None:
        """Blocking :meth:`defer`."""

    @abc.abstractmethod
    def throttle_sync(self, duration_ms: int) -> None:
        """Blocking :meth:`throttle`."""
