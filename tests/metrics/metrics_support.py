"""Helpers of the metrics tests: an application with successes, retries and failures, free
ports, and scraping ``/metrics`` into samples.

The ``flaky`` reactor (on ``things``) reports through the database only (``runs``) and behaves
by the document's ``kind``: ``ok`` completes, ``slow`` completes after 300 ms (its lease is
renewed meanwhile when the task lease is short), ``once`` fails its first attempt and completes
its second, ``bad`` fails both of its two attempts (the task ends ``failed``).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from conftest import AppBuilder
from prometheus_client.parser import text_string_to_metric_families
from pymongo.database import Database
from reactive_support import definition
from runtime_harness import App

Doc = dict[str, Any]

FLAKY = '''
import asyncio

from {package}.reactors.flaky import Context


async def handle(ctx: Context) -> None:
    thing = await ctx.get_document()
    if thing.kind == "once" and ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    if thing.kind == "bad":
        raise RuntimeError("every attempt fails")
    if thing.kind == "slow":
        await asyncio.sleep(0.3)
    await ctx.database["runs"].insert_one({"source": ctx.doc_id, "attempt": ctx.attempt})
'''

RETRY = {"retry": {"strategy": "fixed", "interval": "100ms", "maxAttempts": 2}}
ACTIVITY = {"ok": 3, "slow": 1, "once": 1, "bad": 1}
"""Documents of each kind written by :func:`write_activity`."""
COMPLETED = ACTIVITY["ok"] + ACTIVITY["slow"] + ACTIVITY["once"]
FAILED_EXECUTIONS = ACTIVITY["once"] + 2 * ACTIVITY["bad"]
RETRIES = ACTIVITY["once"] + ACTIVITY["bad"]


def build_flaky(make_app: AppBuilder) -> App:
    """The ``flaky`` application."""
    return make_app({"flaky": definition(watch=["kind", "n"], policies=RETRY)},
                    {"flaky": FLAKY})


def write_activity(db: Database[Doc]) -> None:
    """Insert the documents of :data:`ACTIVITY`."""
    db.things.insert_many([{"_id": f"{kind}{i}", "kind": kind, "n": 1}
                           for kind, count in ACTIVITY.items() for i in range(count)])


def activity_done(db: Database[Doc]) -> bool:
    """Whether every task of :func:`write_activity` reached its final status."""
    tasks = db.things_tasks
    return (tasks.count_documents({"reactor": "flaky", "status": "completed"}) == COMPLETED
            and tasks.count_documents({"reactor": "flaky", "status": "failed"})
            == ACTIVITY["bad"])


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    """The text of ``/metrics`` ("" while the endpoint is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return ""


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape."""

    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> list[Sample]:
    """Every sample of a scrape."""
    return [Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` with (at least) ``labels``, or ``None``."""
    found = [s.value for s in samples(text)
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


def names(text: str) -> set[str]:
    """The sample names of a scrape."""
    return {s.name for s in samples(text)}
