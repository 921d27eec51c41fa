"""Claim latency while another client runs a long read (issue 12).

Run through ``bench/embedded_server.py --long-reads`` (or directly)::

    python bench/embedded_server.py --long-reads                 # 1,000,000 documents
    python bench/embedded_server.py --long-reads --docs 200000 --rounds 2

A fresh in-memory server (:class:`runtime.embedded.process.EmbeddedServer`) gets ``--docs``
documents ``{x: <0..N-1>, pad: <32 bytes>}`` in ``bench.data`` (``insert_many`` batches of
10,000; no index on ``x``) and a pool of pending tasks in ``bench.tasks`` with the index
``{status: 1, due: 1}``. One client thread then claims tasks the way the runtime does, back to
back, timing each call::

    find_one_and_update({status: "pending", due: {$lte: now}},
                        {$set: {status: "running", owner: ...}}, sort=[(due, 1)])

while another client (its own ``MongoClient``, so its own connection) runs ``--rounds`` long
reads one after the other:

* **alone**: no long read (``--duration`` seconds of claims);
* **count**: ``count_documents({x: {$gte: 0}})``, unindexed, matches every document;
* **find**: ``find({x: {$lt: 0}}).to_list()``, unindexed, matches nothing.

The claim loop runs for as long as the long reads do; each phase first times its long read
``--rounds`` times with no claims running. Claimed tasks are put back to pending
between phases, and whenever the pool runs dry (untimed). The report gives claim latency
p50/p99/max per phase and the median duration of one long read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# The server runs as ``python -m runtime``: make it the code of this checkout.
os.environ["PYTHONPATH"] = str(REPO_ROOT)

from runtime.embedded.process import EmbeddedServer  # noqa: E402

BATCH = 10_000
TASKS = 20_000
PAD = "p" * 32


@dataclass
class Phase:
    """Claim latencies (seconds) measured during one phase, and the long reads' durations."""

    name: str
    claims: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    solo: list[float] = field(default_factory=list)  # the same read with no claims running
    result: Any = None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) by nearest rank; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def load(db: Any, docs: int) -> float:
    """Fill ``data`` (unindexed ``x``) and the task pool; returns the seconds taken."""
    start = time.perf_counter()
    data = db["data"]
    for first in range(0, docs, BATCH):
        data.insert_many([{"x": i, "pad": PAD} for i in range(first, min(docs, first + BATCH))],
                         ordered=False)
    tasks = db["tasks"]
    tasks.create_index([("status", ASCENDING), ("due", ASCENDING)])
    base = datetime.now(UTC) - timedelta(days=1)
    for first in range(0, TASKS, BATCH):
        tasks.insert_many([{"status": "pending", "due": base + timedelta(milliseconds=i),
                            "owner": None} for i in range(first, min(TASKS, first + BATCH))],
                          ordered=False)
    return time.perf_counter() - start


def release(tasks: Collection[dict[str, Any]]) -> None:
    """Put every claimed task back to pending (untimed)."""
    tasks.update_many({"status": "running"}, {"$set": {"status": "pending", "owner": None}})


def claim_loop(tasks: Collection[dict[str, Any]], phase: Phase, keep_going: Callable[[], bool]
               ) -> None:
    """Claim back to back while ``keep_going()``; each call's latency goes to ``phase``."""
    while keep_going():
        start = time.perf_counter()
        doc = tasks.find_one_and_update(
            {"status": "pending", "due": {"$lte": datetime.now(UTC)}},
            {"$set": {"status": "running", "owner": "bench"}},
            sort=[("due", ASCENDING)])
        elapsed = time.perf_counter() - start
        if doc is None:
            release(tasks)  # the pool ran dry: refill, and do not count this call
            continue
        phase.claims.append(elapsed)


def run_phase(uri: str, name: str, read: Callable[[Any], Any] | None, rounds: int,
              duration: float) -> Phase:
    """Claims in this thread while another thread (own client) runs ``rounds`` reads."""
    phase = Phase(name)
    with MongoClient(uri) as claimer, MongoClient(uri, socketTimeoutMS=None) as reader:
        tasks = claimer["bench"]["tasks"]
        release(tasks)
        tasks.find_one({})  # connect before timing
        reader["bench"].command("ping")
        if read is None:
            deadline = time.perf_counter() + duration
            claim_loop(tasks, phase, lambda: time.perf_counter() < deadline)
            return phase
        for _ in range(rounds):
            start = time.perf_counter()
            read(reader["bench"]["data"])
            phase.solo.append(time.perf_counter() - start)
        done = threading.Event()
        errors: list[BaseException] = []

        def reads() -> None:
            try:
                for _ in range(rounds):
                    start = time.perf_counter()
                    phase.result = read(reader["bench"]["data"])
                    phase.reads.append(time.perf_counter() - start)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=reads, name=f"long-{name}", daemon=True)
        thread.start()
        claim_loop(tasks, phase, lambda: not done.is_set())
        thread.join()
        if errors:
            raise errors[0]
    return phase


def count_all(data: Collection[dict[str, Any]]) -> int:
    """The unindexed count of every document."""
    return data.count_documents({"x": {"$gte": 0}})


def find_none(data: Collection[dict[str, Any]]) -> int:
    """The unindexed find that matches nothing (every document examined)."""
    return len(data.find({"x": {"$lt": 0}}).to_list())


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:,.1f}"


def render(phases: list[Phase], docs: int, load_s: float) -> str:
    """The markdown table."""
    out = [f"Documents: {docs:,} (loaded in {load_s:,.1f} s); task pool {TASKS:,}; "
           f"load average at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
           "| concurrent long read | reads | one read alone, median s | one read during "
           "claims, median s | claims | claim p50 ms | claim p99 ms | claim max ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"alone": "none", "count": "count_documents({x: {$gte: 0}})",
              "find": "find({x: {$lt: 0}}).to_list()"}
    for p in phases:
        read_s = f"{statistics.median(p.reads):,.2f}" if p.reads else "-"
        solo_s = f"{statistics.median(p.solo):,.2f}" if p.solo else "-"
        worst = max(p.claims, default=float("nan"))
        out.append(f"| {labels.get(p.name, p.name)} | {len(p.reads)} | {solo_s} | {read_s} | "
                   f"{len(p.claims):,} | {_ms(percentile(p.claims, 50))} | "
                   f"{_ms(percentile(p.claims, 99))} | {_ms(worst)} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phases on a fresh server and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents (default 1M)")
    parser.add_argument("--rounds", type=int, default=3, help="long reads per phase")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of claims without a long read")
    parser.add_argument("--phases", default="alone,count,find",
                        help="comma-separated: alone,count,find")
    args = parser.parse_args(argv)
    reads: dict[str, Callable[[Any], Any] | None] = {"alone": None, "count": count_all,
                                                     "find": find_none}
    with EmbeddedServer() as server, MongoClient(server.uri) as client:
        print(f"loading {args.docs:,} documents ...", file=sys.stderr, flush=True)
        load_s = load(client["bench"], args.docs)
        phases = []
        for name in args.phases.split(","):
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            phase = run_phase(server.uri, name, reads[name], args.rounds, args.duration)
            if name == "count" and phase.result != args.docs:
                raise RuntimeError(f"count returned {phase.result}, expected {args.docs}")
            phases.append(phase)
    print(render(phases, args.docs, load_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
