"""Change-stream demo on the embedded server: ``python -m runtime.embedded.demo``.

Starts an in-memory :class:`~runtime.embedded.process.EmbeddedServer`, opens a change
stream on ``demo.orders``, then inserts, updates (``$set``), replaces and deletes one
document, printing each change event as it arrives. Each step waits for its event
with a deadline; nothing is synchronised with sleeps.

``--uri`` runs the same demo against an existing MongoDB replica set instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bson import json_util
from pymongo import MongoClient
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection

from runtime.embedded.process import EmbeddedServer

__all__ = ["main", "run_demo"]

DEFAULT_EVENT_TIMEOUT = 10.0
_ORDER_ID = "order-1"

Document = dict[str, Any]


def _show(value: Any) -> str:
    """Render a BSON value as compact relaxed Extended JSON."""
    return json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS)


def describe_event(number: int, event: Mapping[str, Any]) -> str:
    """A readable, multi-line description of one change event."""
    lines = [f"[{number}] {event.get('operationType', '?')}"]
    ns = event.get("ns")
    if isinstance(ns, Mapping):
        lines.append(f"    ns:                {ns.get('db')}.{ns.get('coll')}")
    if "documentKey" in event:
        lines.append(f"    documentKey:       {_show(event['documentKey'])}")
    update = event.get("updateDescription")
    if isinstance(update, Mapping):
        lines.append(f"    updatedFields:     {_show(update.get('updatedFields', {}))}")
        lines.append(f"    removedFields:     {_show(update.get('removedFields', []))}")
        truncated = update.get("truncatedArrays")
        if truncated:
            lines.append(f"    truncatedArrays:   {_show(truncated)}")
    if event.get("fullDocument") is not None:
        lines.append(f"    fullDocument:      {_show(event['fullDocument'])}")
    return "\n".join(lines)


def next_event(stream: ChangeStream[Document], timeout: float) -> Document:
    """Wait up to ``timeout`` seconds for the next change event of ``stream``."""
    deadline = time.monotonic() + timeout
    while stream.alive:
        event = stream.try_next()
        if event is not None:
            return event
        if time.monotonic() >= deadline:
            break
    raise TimeoutError(f"no change event within {timeout:g}s")


def run_demo(uri: str, *, timeout: float = DEFAULT_EVENT_TIMEOUT) -> list[Document]:
    """Run the demo against the MongoDB at ``uri``; print and return the events."""
    client: MongoClient[Document] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        orders: Collection[Document] = client["demo"]["orders"]
        orders.drop()
        steps: list[tuple[str, Callable[[], object]]] = [
            (
                "insert_one",
                lambda: orders.insert_one(
                    {"_id": _ORDER_ID, "item": "notebook", "qty": 2, "status": "new"}
                ),
            ),
            (
                "update_one $set",
                lambda: orders.update_one(
                    {"_id": _ORDER_ID}, {"$set": {"status": "paid", "qty": 3}}
                ),
            ),
            (
                "replace_one",
                lambda: orders.replace_one(
                    {"_id": _ORDER_ID}, {"item": "notebook", "qty": 3, "status": "shipped"}
                ),
            ),
            ("delete_one", lambda: orders.delete_one({"_id": _ORDER_ID})),
        ]
        events: list[Document] = []
        # A short await time keeps try_next() responsive to the deadline.
        with orders.watch(max_await_time_ms=200) as stream:
            print(f"watching {orders.full_name} for changes\n")
            for number, (label, action) in enumerate(steps, start=1):
                print(f">>> {label}")
                action()
                event = next_event(stream, timeout)
                events.append(event)
                print(describe_event(number, event), end="\n\n")
        return events
    finally:
        client.close()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.embedded.demo",
        description="Show change-stream events from the embedded MongoDB-compatible server.",
    )
    parser.add_argument(
        "--uri",
        help="use this MongoDB (a replica set) instead of starting an embedded server",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_EVENT_TIMEOUT,
        help="seconds to wait for each change event (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the demo; returns the process exit status."""
    args = _parse_args(argv)
    try:
        if args.uri:
            print(f"using MongoDB at {args.uri}")
            run_demo(args.uri, timeout=args.timeout)
        else:
            with EmbeddedServer() as server:
                print(f"embedded server running at {server.uri} (log: {server.log_path})")
                run_demo(server.uri, timeout=args.timeout)
                status = server.stop()
            print(f"embedded server stopped (exit status {status})")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("demo finished: insert, update, replace and delete were all observed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
