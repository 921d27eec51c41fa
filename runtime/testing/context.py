"""The context a handler gets from :func:`runtime.testing.run_handler`.

:class:`HandlerTestContext` is a complete implementation of :class:`runtime.context.TaskContext`
for tests, built the way the worker builds its own: the typed document, the watched values the
planner would have recorded, the attempt number and a tagged logger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, cast

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.client_session import ClientSession

from runtime.context import DocId, Model, Projected, TaskContext, Watched
from runtime.embedded.engine import run_pipeline
from runtime.reactor import ReactorSpec
from runtime.task_context import SNAPSHOT_FIELD, TaskSkipped, document_pipeline
from runtime.task_plans import snapshot_hash

__all__ = ["COMPLETIONS_COLLECTION", "SAME", "HandlerTestContext", "NoDatabaseError"]

COMPLETIONS_COLLECTION: Final = "reactgen_testing_completions"
"""Where ``mark_completed(session=...)`` leaves a marker inside the caller's transaction, so
the test can tell a committed completion from an aborted one (removed afterwards)."""


class Same:
    """The type of :data:`SAME`."""

    def __repr__(self) -> str:
        return "SAME"


SAME: Final = Same()
"""``current=SAME`` (the default): the document is unchanged when the handler reads it."""

Handler = Callable[[TaskContext[Model, Watched, DocId]], object]
Target = ModuleType | ReactorSpec | Callable[..., object]


class NoDatabaseError(RuntimeError):
    """The handler used ``ctx.database`` but :func:`run_handler` got no ``database``."""


class NoForeignCollections:
    """The foreign collections a filter may read (``$lookup``) when no database was given."""

    def documents(self, collection: str) -> list[dict[str, Any]]:
        raise NoDatabaseError(f"the reactor's filter reads collection {collection!r}; pass "
                              "database=... to run_handler")


class HandlerTestContext(TaskContext[Model, Watched, DocId]):
    """The context :func:`run_handler` gives the handler: the worker's context, for tests.

    Besides the public :class:`~runtime.context.TaskContext` interface it records what the
    handler asked for (``completed``, ``completed_in_session``, ``deferred_ms``,
    ``throttle_ms``), with the same names the worker reads from its own context.
    """

    def __init__(self, reactor: ReactorSpec, task: dict[str, Any], watched: Any,
                 current: dict[str, Any] | None, database: AsyncDatabase[dict[str, Any]] | None,
                 variables: dict[str, Any], logger: logging.Logger,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.reactor = reactor
        self.task = task
        """The task document as the worker would have claimed it."""
        self.doc_id = cast(DocId, task["sourceId"])
        self.attempt = int(task["attempts"])
        self.watched_values = cast(Watched, watched)
        self.logger = logging.LoggerAdapter(logger, {"fields": {
            "reactor": reactor.name, "task_id": task["_id"], "source_id": self.doc_id,
            "attempt": self.attempt}})
        self.completed = False
        self.completed_in_session = False
        self.invalid_document = False
        self.deferred_ms: int | None = None
        self.throttle_ms: int | None = None
        self._current = current
        self._database = database
        self._variables = variables
        self._loop = loop
        self.database_used = False
        """True once the handler asked for ``ctx.database``."""

    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        """The database given to :func:`run_handler` (raises :class:`NoDatabaseError` if
        none was given)."""
        self.database_used = True
        if self._database is None:
            raise NoDatabaseError(
                f"the handler of {self.reactor.name!r} uses ctx.database, but run_handler got "
                "no database: pass database=... (e.g. the database of "
                "runtime.testing.RuntimeHarness, or of your own MongoDB)")
        return self._database

    @database.setter
    def database(self, value: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = value

    @property
    def finalized(self) -> bool:
        """True once :meth:`mark_completed` was called (in a session: it may still have been
        rolled back; :func:`run_handler` checks)."""
        return self.completed or self.completed_in_session

    def _checked(self, docs: list[dict[str, Any]],
                 projection: dict[str, Any] | None) -> Model | Projected:
        if not docs:
            raise TaskSkipped("source document deleted or no longer matches the filter")
        doc = docs[0]
        snapshot = doc.pop(SNAPSHOT_FIELD, None)
        if snapshot_hash(snapshot) != self.task["snapshotHash"]:
            raise TaskSkipped("watched values changed since the task was planned")
        if projection is not None:
            return doc
        model = cast(type[Model], self.reactor.model)
        try:
            return model.model_validate(doc)
        except ValidationError:
            self.invalid_document = True
            raise

    async def get_document(self, projection: dict[str, Any] | None = None,
                           session: Any = None) -> Any:
        """The current source document, validated (with a ``projection``: the projected
        fields as a ``dict``, not validated); raises ``TaskSkipped`` (the task ends as
        ``skipped``) if it is gone, no longer matches the filter, or its watched values
        changed since the task was planned."""
        pipeline = document_pipeline(self.reactor, self.doc_id, projection)
        if self._database is not None:
            cursor = await self._database[self.reactor.collection].aggregate(
                pipeline, session=session)
            return self._checked(await cursor.to_list(1), projection)
        docs = [] if self._current is None else [self._current]
        return self._checked(run_pipeline(docs, pipeline, NoForeignCollections(),
                                          self._variables), projection)

    async def mark_completed(self, session: Any = None) -> None:
        """Record completion; inside ``session``'s transaction if given (a marker document in
        :data:`COMPLETIONS_COLLECTION` tells whether that transaction committed)."""
        if self.completed:
            return
        if session is None or self._database is None:
            self.completed = True
            return
        await self._database[COMPLETIONS_COLLECTION].update_one(
            {"_id": self.task["_id"]}, {"$inc": {"n": 1}}, upsert=True, session=session)
        self.completed_in_session = True

    async def defer(self, delay_ms: int) -> None:
        """Run again after ``delay_ms`` (the outcome is ``deferred``)."""
        self.deferred_ms = max(0, int(delay_ms))

    async def throttle(self, duration_ms: int) -> None:
        """Pause the reactor for ``duration_ms`` (recorded in the result)."""
        self.throttle_ms = max(0, int(duration_ms))

    def get_document_sync(self, projection: dict[str, Any] | None = None,
                          session: Any = None) -> Any:
        """:meth:`get_document` for handlers written as plain functions."""
        if isinstance(session, ClientSession) and self._database is not None:
            collection = session.client[self._database.name][self.reactor.collection]
            docs = list(collection.aggregate(
                document_pipeline(self.reactor, self.doc_id, projection), session=session))
            return self._checked(docs[:1], projection)
        return asyncio.run_coroutine_threadsafe(
            self.get_document(projection, session), self._loop).result()

    def mark_completed_sync(self, session: Any = None) -> None:
        """:meth:`mark_completed` for handlers written as plain functions."""
        if isinstance(session, ClientSession) and self._database is not None:
            if self.completed:
                return
            session.client[self._database.name][COMPLETIONS_COLLECTION].update_one(
                {"_id": self.task["_id"]}, {"$inc": {"n": 1}}, upsert=True, session=session)
            self.completed_in_session = True
            return
        asyncio.run_coroutine_threadsafe(self.mark_completed(session), self._loop).result()

    def defer_sync(self, delay_ms: int) -> None:
        """:meth:`defer` for handlers written as plain functions."""
        self.deferred_ms = max(0, int(delay_ms))

    def throttle_sync(self, duration_ms: int) -> None:
        """:meth:`throttle` for handlers written as plain functions."""
        self.throttle_ms = max(0, int(duration_ms))
