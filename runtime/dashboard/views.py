"""Turning management records into what the templates show: ids in URLs, query strings,
pretty JSON, the filters of the task list."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from bson import ObjectId, json_util
from bson.json_util import RELAXED_JSON_OPTIONS

from runtime.management.errors import InvalidSelection
from runtime.management.formatting import jsonable
from runtime.management.status import TaskStatus
from runtime.management.tasks import TaskSelection, TaskSort

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_SORT = TaskSort.UPDATED_AT
SORT_LABELS = {
    TaskSort.UPDATED_AT: "last data change",
    TaskSort.NEXT_RUN_AT: "next run",
    TaskSort.DUE_AT: "due since",
    TaskSort.LAST_FINALIZED_AT: "last execution",
    TaskSort.CREATED_AT: "created",
    TaskSort.ID: "task id",
}


def parse_id(text: str) -> Any:
    """An id typed by a person or taken from a URL: 24 hex digits are an ObjectId, (Extended)
    JSON is parsed (``42``, ``"42"``, ``{"$oid": "..."}``), anything else is a string."""
    if ObjectId.is_valid(text):
        return ObjectId(text)
    try:
        return json_util.loads(text)
    except ValueError:
        return text


def parse_source_id(text: str) -> Any:
    """A source id from the filter form: JSON if it parses, else the text (as the
    ``--source-id`` flag of ``runtime tasks``)."""
    try:
        return json_util.loads(text)
    except ValueError:
        return text


def id_text(value: Any) -> str:
    """The text that :func:`parse_id` / :func:`parse_source_id` turn back into ``value``."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        try:
            json_util.loads(value)
        except ValueError:
            return value if not ObjectId.is_valid(value) else json.dumps(value)
    return json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS)


def source_id_text(value: Any) -> str:
    """The text that :func:`parse_source_id` turns back into ``value``."""
    if isinstance(value, str):
        try:
            json_util.loads(value)
        except ValueError:
            return value
    return json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS)


def task_path(task_id: Any) -> str:
    """The URL path of a task's page."""
    return "/tasks/" + quote(id_text(task_id), safe="")


def pretty(value: Any) -> str:
    """Indented JSON (dates ISO-8601, ObjectIds as strings, other BSON as relaxed Extended
    JSON)."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)


def url(path: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """``path`` with a query string of ``params`` (empty values left out)."""
    pairs = [(key, value) for key, value in params if value != ""]
    return f"{path}?{urlencode(pairs)}" if pairs else path


@dataclass(frozen=True)
class TaskFilters:
    """The filters, order and page of the task list, as kept in its query string."""

    reactor: str = ""
    statuses: tuple[str, ...] = ()
    error: str = ""
    source_id: str = ""
    sort: TaskSort = DEFAULT_SORT
    descending: bool = True
    skip: int = 0
    limit: int = DEFAULT_PAGE_SIZE
    problems: list[str] = field(default_factory=list)
    """What could not be used (shown above the list)."""

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> TaskFilters:
        """The filters of a query string (``multi_items`` grouped by key); bad values are
        reported in ``problems`` and replaced by defaults."""
        problems: list[str] = []

        def first(key: str) -> str:
            values = query.get(key) or [""]
            return values[0].strip()

        statuses: list[str] = []
        for value in query.get("status", []):
            for part in value.split(","):
                part = part.strip()
                if not part:
                    continue
                if part in {s.value for s in TaskStatus}:
                    if part not in statuses:
                        statuses.append(part)
                else:
                    problems.append(f"unknown status {part!r} ignored")
        sort_text = first("sort")
        try:
            sort = TaskSort(sort_text) if sort_text else DEFAULT_SORT
        except ValueError:
            problems.append(f"unknown sort {sort_text!r} ignored")
            sort = DEFAULT_SORT
        order = first("order")
        skip = _number(first("skip"), 0, "skip", problems)
        limit = _number(first("limit"), DEFAULT_PAGE_SIZE, "limit", problems)
        if limit < 1:
            problems.append("limit must be at least 1")
            limit = DEFAULT_PAGE_SIZE
        limit = min(limit, MAX_PAGE_SIZE)
        return cls(reactor=first("reactor"), statuses=tuple(statuses), error=first("error"),
                   source_id=first("source_id"), sort=sort, descending=order != "asc",
                   skip=max(0, skip), limit=limit, problems=problems)

    def selection(self) -> TaskSelection:
        """The management API's selection; raises ``InvalidSelection``."""
        return TaskSelection(
            reactor=self.reactor or None,
            statuses=tuple(TaskStatus(s) for s in self.statuses),
            error_text=self.error or None,
            source_ids=(parse_source_id(self.source_id),) if self.source_id else ())

    @property
    def has_selection(self) -> bool:
        """Whether any criterion is set (a bulk retry needs one)."""
        return bool(self.reactor or self.statuses or self.error or self.source_id)

    def filter_params(self) -> list[tuple[str, str]]:
        """The criteria as query parameters (also the hidden fields of a bulk retry)."""
        params = [("reactor", self.reactor)]
        params += [("status", status) for status in self.statuses]
        params += [("error", self.error), ("source_id", self.source_id)]
        return params

    def params(self, skip: int | None = None) -> list[tuple[str, str]]:
        """The whole query string: criteria, order and page (defaults left out)."""
        params = self.filter_params()
        if self.sort is not DEFAULT_SORT:
            params.append(("sort", self.sort.value))
        if not self.descending:
            params.append(("order", "asc"))
        if self.limit != DEFAULT_PAGE_SIZE:
            params.append(("limit", str(self.limit)))
        page = self.skip if skip is None else skip
        if page:
            params.append(("skip", str(page)))
        return params

    def url(self, skip: int | None = None) -> str:
        """The task list URL of these filters (at another page with ``skip``)."""
        return url("/tasks", self.params(skip))


def _number(text: str, default: int, name: str, problems: list[str]) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        problems.append(f"{name} must be a number, got {text!r}")
        return default


def selection_from_form(form: Mapping[str, list[str]]) -> TaskFilters:
    """The filters posted with a bulk retry (the same names as the query string)."""
    filters = TaskFilters.from_query(form)
    if filters.problems:
        raise InvalidSelection("; ".join(filters.problems))
    return filters


__all__ = ["DEFAULT_PAGE_SIZE", "SORT_LABELS", "TaskFilters", "id_text", "parse_id",
           "parse_source_id", "pretty", "selection_from_form", "source_id_text", "task_path",
           "url"]
