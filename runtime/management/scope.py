"""What every management operation works on: the runtime database and the app's reactors."""

from __future__ import annotations

import datetime
import getpass
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from runtime.management.errors import UnknownReactor
from runtime.meta import META_COLLECTION
from runtime.reactor import ReactorSpec

Doc = dict[str, Any]


def naive_utc(value: Any) -> Any:
    """A date as naive UTC (PyMongo's default convention); other values unchanged."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


def default_actor() -> str:
    """Who is acting, for ``by`` fields: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class TaskCollection:
    """One tasks collection and the reactors of the application whose tasks it holds."""

    database: str
    name: str
    source: str
    reactors: tuple[ReactorSpec, ...]

    @property
    def reactor_names(self) -> list[str]:
        """Names of the reactors whose tasks live here."""
        return [reactor.name for reactor in self.reactors]


class Scope:
    """The runtime database (``--database``: ``reactgen_meta`` and the default database of
    reactors) and the reactors of the loaded application."""

    def __init__(self, db: AsyncDatabase[Any], reactors: Iterable[ReactorSpec] = (),
                 actor: str | None = None) -> None:
        self.db = db
        self.reactors: dict[str, ReactorSpec] = {r.name: r for r in reactors}
        self.actor = actor or default_actor()

    @property
    def meta(self) -> AsyncCollection[Doc]:
        """``reactgen_meta`` in the runtime database."""
        collection: AsyncCollection[Doc] = self.db[META_COLLECTION]
        return collection

    def reactor(self, name: str) -> ReactorSpec:
        """A reactor of the application; raises :class:`UnknownReactor`."""
        try:
            return self.reactors[name]
        except KeyError:
            raise UnknownReactor(name, list(self.reactors)) from None

    def database_name(self, reactor: ReactorSpec) -> str:
        """The database of a reactor's source and tasks collections."""
        return reactor.database or self.db.name

    def database_of(self, reactor: ReactorSpec) -> AsyncDatabase[Doc]:
        """The database of a reactor's source and tasks collections."""
        database: AsyncDatabase[Doc] = self.db.client[self.database_name(reactor)]
        return database

    def tasks_of(self, reactor: ReactorSpec) -> AsyncCollection[Doc]:
        """A reactor's tasks collection."""
        return self.database_of(reactor)[reactor.tasks_collection]

    def source_of(self, reactor: ReactorSpec) -> AsyncCollection[Doc]:
        """A reactor's source collection."""
        return self.database_of(reactor)[reactor.collection]

    def collection(self, group: TaskCollection) -> AsyncCollection[Doc]:
        """The collection of a :class:`TaskCollection`."""
        database: AsyncDatabase[Doc] = self.db.client[group.database]
        return database[group.name]

    def source_collection(self, group: TaskCollection) -> AsyncCollection[Doc]:
        """The source collection of a :class:`TaskCollection`."""
        database: AsyncDatabase[Doc] = self.db.client[group.database]
        return database[group.source]

    def task_collections(self, reactor: str | None = None) -> list[TaskCollection]:
        """The tasks collections of one reactor, or of every reactor of the application."""
        chosen: Sequence[ReactorSpec] = (
            [self.reactor(reactor)] if reactor is not None else list(self.reactors.values()))
        groups: dict[tuple[str, str], list[ReactorSpec]] = {}
        for spec in chosen:
            groups.setdefault((self.database_name(spec), spec.tasks_collection), []).append(spec)
        return [TaskCollection(database, name, specs[0].collection, tuple(specs))
                for (database, name), specs in groups.items()]

    async def server_now(self) -> datetime.datetime:
        """The database server's clock (``hello.localTime``), naive UTC."""
        reply = await self.db.client.admin.command("hello")
        local_time = reply.get("localTime")
        if isinstance(local_time, datetime.datetime):
            value: datetime.datetime = naive_utc(local_time)
            return value
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
