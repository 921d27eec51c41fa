"""Benchmark the embedded MongoDB-compatible server through PyMongo.

Usage::

    python bench/embedded_server.py            # 1k and 1M documents
    python bench/embedded_server.py --quick    # 1k and 100k documents, shorter runs
    python bench/embedded_server.py --sizes 1k,10k --threads 1,8 --storage memory
    python bench/embedded_server.py --long-reads [--docs N]   # claims during long reads

``--long-reads`` runs ``bench/long_reads.py`` instead (issue 12: claim latency while another
client counts or scans ``--docs`` unindexed documents, default 1M); see its docstring.

For every storage mode (``memory``: ``--in-memory``; ``disk``: ``--dbpath`` in a
temporary directory) and every collection size, a fresh server process is started
(:class:`runtime.embedded.process.EmbeddedServer`, loopback only) and one collection
is preloaded with ``insert_many`` batches. Its documents look like a job table::

    {seq: <0..N-1>, task: "task-<seq % 4>", nextRunAt: <in the past>, owner: null,
     payload: "<64 bytes>"}

with the indexes ``{seq: 1}`` and ``{task: 1, nextRunAt: 1}``. Then, with 1 and with 8
client threads sharing one ``MongoClient``, it measures

* **insert**: ``insert_one`` of new documents (into the same, indexed collection);
* **find**: ``find_one({seq: <random>})``, a point query on an indexed field;
* **claim**: the job-claim ``find_one_and_update({task: "task-0", nextRunAt: {$lte: now}},
  {$set: {nextRunAt: <far future>, owner: <worker>}}, sort=[(nextRunAt, 1)])`` that a
  scheduler runs; claimed documents are released again between timed rounds (untimed),
  so the pool of due jobs never runs dry;
* **event latency**: the time from ``insert_one`` returning (write acknowledged) to a
  change-stream watcher in another thread (its own ``MongoClient``) receiving the
  insert event, as p50/p99.

Every phase is bounded both by a number of operations and by a duration. Results are
printed as markdown tables, together with the machine they were measured on. The
claim-scaling table compares claim throughput at the largest size with the smallest:
with the compound index a claim touches one index entry, so the ratio should be
close to 1.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection

REPO_ROOT: Final = Path(__file__).resolve().parents[1]

TASKS: Final = 4
"""Number of distinct ``task`` values; claims always target ``task-0``."""
CLAIM_TASK: Final = "task-0"
FAR_FUTURE: Final = datetime(2200, 1, 1, tzinfo=UTC)
PRELOAD_BATCH: Final = 10_000
PAYLOAD: Final = "x" * 64
DB_NAME: Final = "bench"
COLL_NAME: Final = "jobs"


class ServerHandle(Protocol):
    """The part of :class:`runtime.embedded.process.EmbeddedServer` used here."""

    @property
    def uri(self) -> str: ...

    def __enter__(self) -> ServerHandle: ...

    def __exit__(self, *exc: object) -> None: ...


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    """What to run: sizes, thread counts, storage modes and per-phase bounds."""

    sizes: tuple[int, ...]
    threads: tuple[int, ...]
    storage: tuple[str, ...]
    duration: float
    """Upper bound in seconds for one timed phase."""
    max_ops: int
    """Upper bound on operations in one timed phase (all threads together)."""
    latency_events: int
    """Number of insert events whose delivery latency is measured per configuration."""


_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_size(text: str) -> int:
    """Parse ``"1000"``, ``"1k"``, ``"100k"`` or ``"1M"`` into a document count."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1000, 1k, 1M)")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    value = int(float(match.group(1)) * factor)
    if value < 100:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (minimum 100)")
    return value


def format_size(n: int) -> str:
    """Inverse of :func:`parse_size` for round numbers (``1000000`` → ``"1M"``)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def _csv(parse: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def convert(text: str) -> tuple[Any, ...]:
        items = tuple(parse(part) for part in text.split(",") if part.strip())
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return convert


def _threads(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("thread counts must be between 1 and 64")
    return value


def _storage(text: str) -> str:
    value = text.strip().lower()
    if value not in ("memory", "disk"):
        raise argparse.ArgumentTypeError("storage is 'memory' or 'disk'")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Build a :class:`Config` from the command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark the embedded MongoDB-compatible server with PyMongo."
    )
    parser.add_argument("--quick", action="store_true", help="sizes 1k,100k and shorter phases")
    parser.add_argument(
        "--sizes", type=_csv(parse_size), help="document counts, e.g. 1k,1M (default 1k,1M)"
    )
    parser.add_argument(
        "--threads", type=_csv(_threads), default=(1, 8), help="client threads (default 1,8)"
    )
    parser.add_argument(
        "--storage",
        type=_csv(_storage),
        default=("memory", "disk"),
        help="memory,disk (default both)",
    )
    parser.add_argument("--duration", type=float, help="max seconds per timed phase")
    parser.add_argument("--max-ops", type=int, help="max operations per timed phase")
    parser.add_argument(
        "--latency-events", type=int, help="events per change-stream latency measurement"
    )
    args = parser.parse_args(argv)
    sizes: tuple[int, ...] = args.sizes or ((1_000, 100_000) if args.quick else (1_000, 1_000_000))
    return Config(
        sizes=tuple(sorted(set(sizes))),
        threads=tuple(args.threads),
        storage=tuple(dict.fromkeys(args.storage)),
        duration=args.duration or (2.0 if args.quick else 5.0),
        max_ops=args.max_ops or (5_000 if args.quick else 50_000),
        latency_events=args.latency_events or (400 if args.quick else 2_000),
    )


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """Measurements for one (storage, size, threads) configuration."""

    storage: str
    size: int
    threads: int
    insert: float = float("nan")
    find: float = float("nan")
    claim: float = float("nan")
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    events_lost: int = 0


@dataclass
class Preload:
    """How long preloading one collection took."""

    storage: str
    size: int
    seconds: float


@dataclass
class Results:
    """Everything measured in one benchmark run."""

    rows: list[Row] = field(default_factory=list)
    preloads: list[Preload] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_at_start: str = "unknown"
    """Load average before the first server started (other work on the machine)."""


# --------------------------------------------------------------------------- timing


def run_threads(
    threads: int, worker: Callable[[int], int], *, join_timeout: float
) -> tuple[int, float]:
    """Run ``worker(thread_index)`` in ``threads`` threads that start together.

    Returns the sum of the workers' operation counts and the wall time in seconds from
    the common start to the last worker finishing. An exception in a worker is
    re-raised here.
    """
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors: list[BaseException] = []

    def body(index: int) -> None:
        barrier.wait()
        try:
            counts[index] = worker(index)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    pool = [
        threading.Thread(target=body, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(threads)
    ]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join(join_timeout)
    elapsed = time.perf_counter() - start
    if any(t.is_alive() for t in pool):
        raise RuntimeError(f"benchmark threads did not finish within {join_timeout:g}s")
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def timed_rate(
    threads: int, per_thread_ops: int, duration: float, op: Callable[[int, int], bool]
) -> tuple[float, int]:
    """Throughput of ``op(thread_index, i)`` in operations per second.

    Each thread calls ``op`` up to ``per_thread_ops`` times or until ``duration``
    seconds have passed, or until ``op`` returns ``False`` (nothing left to do). A short
    untimed warm-up opens the pooled connections first. Returns (ops/s, ops done).
    """
    warmup = min(20, per_thread_ops)
    run_threads(threads, lambda t: sum(op(t, -1 - i) for i in range(warmup)), join_timeout=120)

    def worker(index: int) -> int:
        deadline = time.perf_counter() + duration
        done = 0
        while done < per_thread_ops and time.perf_counter() < deadline:
            if not op(index, done):
                break
            done += 1
        return done

    ops, elapsed = run_threads(threads, worker, join_timeout=duration + 120)
    return (ops / elapsed if elapsed > 0 else float("nan")), ops


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values`` by nearest rank; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- phases


def preload(coll: Collection[dict[str, Any]], size: int) -> float:
    """Create the indexes and insert ``size`` job documents; return the seconds taken."""
    coll.drop()
    coll.create_index([("seq", ASCENDING)])
    coll.create_index([("task", ASCENDING), ("nextRunAt", ASCENDING)])
    base = datetime.now(UTC) - timedelta(days=30)
    start = time.perf_counter()
    for first in range(0, size, PRELOAD_BATCH):
        batch = [
            {
                "seq": i,
                "task": f"task-{i % TASKS}",
                "nextRunAt": base + timedelta(milliseconds=i),
                "owner": None,
                "payload": PAYLOAD,
            }
            for i in range(first, min(size, first + PRELOAD_BATCH))
        ]
        coll.insert_many(batch, ordered=False)
    elapsed = time.perf_counter() - start
    count = coll.estimated_document_count()
    if count != size:
        raise RuntimeError(f"preloaded {count} documents, expected {size}")
    return elapsed


def measure_find(coll: Collection[dict[str, Any]], size: int, threads: int, cfg: Config) -> float:
    """Point queries on the indexed ``seq`` field; ops/s."""
    rngs = [random.Random(1000 + t) for t in range(threads)]

    def op(index: int, _i: int) -> bool:
        seq = rngs[index].randrange(size)
        doc = coll.find_one({"seq": seq})
        if doc is None:
            raise RuntimeError(f"find_one({{seq: {seq}}}) found nothing")
        return True

    rate, _ = timed_rate(threads, max(1, cfg.max_ops // threads), cfg.duration, op)
    return rate


def measure_insert(coll: Collection[dict[str, Any]], threads: int, cfg: Config) -> float:
    """``insert_one`` of new documents that queries and claims never match; ops/s."""
    counter = itertools.count(1)  # next() on itertools.count is atomic under the GIL
    future = FAR_FUTURE

    def op(_index: int, _i: int) -> bool:
        n = next(counter)
        coll.insert_one(
            {"seq": -n, "task": "inserted", "nextRunAt": future, "owner": None, "payload": PAYLOAD}
        )
        return True

    rate, _ = timed_rate(threads, max(1, cfg.max_ops // threads), cfg.duration, op)
    return rate


def measure_claim(coll: Collection[dict[str, Any]], size: int, threads: int, cfg: Config) -> float:
    """The scheduler's claim ``find_one_and_update``; ops/s.

    Claims run in rounds of at most half the due ``task-0`` jobs; after each round the
    claimed jobs get their old ``nextRunAt`` back (untimed), so every claim finds work.
    Only the rounds' wall time is counted.
    """
    pool = size // TASKS
    round_cap = max(1, min(pool // 2, 2_000))
    total_cap = max(1, cfg.max_ops)
    claimed: list[list[dict[str, Any]]] = [[] for _ in range(threads)]

    def claim(index: int) -> dict[str, Any] | None:
        return coll.find_one_and_update(
            {"task": CLAIM_TASK, "nextRunAt": {"$lte": datetime.now(UTC)}},
            {"$set": {"nextRunAt": FAR_FUTURE, "owner": f"worker-{index}"}},
            sort=[("nextRunAt", ASCENDING)],
        )

    def release() -> None:
        docs = [d for per_thread in claimed for d in per_thread]
        for per_thread in claimed:
            per_thread.clear()
        if docs:
            coll.bulk_write(
                [
                    UpdateOne(
                        {"_id": d["_id"]}, {"$set": {"nextRunAt": d["nextRunAt"], "owner": None}}
                    )
                    for d in docs
                ],
                ordered=False,
            )

    # Warm-up (untimed): open the pooled connections.
    def warm(index: int) -> int:
        for _ in range(min(5, max(1, round_cap // threads))):
            doc = claim(index)
            if doc is not None:
                claimed[index].append(doc)
        return 0

    run_threads(threads, warm, join_timeout=120)
    release()

    done_total = 0
    timed = 0.0
    phase_deadline = time.perf_counter() + cfg.duration
    while done_total < total_cap and time.perf_counter() < phase_deadline:
        budget = itertools.count()  # shared round budget
        cap = min(round_cap, total_cap - done_total)

        def worker(index: int, cap: int = cap, budget: itertools.count[int] = budget) -> int:
            done = 0
            while next(budget) < cap and time.perf_counter() < phase_deadline:
                doc = claim(index)
                if doc is None:
                    raise RuntimeError("claim found no due job (the pool ran dry)")
                claimed[index].append(doc)
                done += 1
            return done

        ops, elapsed = run_threads(threads, worker, join_timeout=cfg.duration + 120)
        done_total += ops
        timed += elapsed
        release()
    return done_total / timed if timed > 0 else float("nan")


def measure_event_latency(
    uri: str, coll: Collection[dict[str, Any]], threads: int, cfg: Config
) -> tuple[float, float, int]:
    """Insert-acknowledged → change event received, in milliseconds.

    A watcher thread with its own client opens a change stream (filtered to this
    phase's documents) before the writers start; ``threads`` writers then insert
    ``cfg.latency_events`` documents back to back. Returns (p50, p99, events lost).
    """
    marker = str(ObjectId())
    acked: dict[Any, float] = {}
    received: dict[Any, float] = {}
    total = max(threads, cfg.latency_events - cfg.latency_events % threads)
    per_thread = total // threads
    writers_done = threading.Event()
    watcher_error: list[BaseException] = []

    watch_client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        stream = watch_client[DB_NAME][COLL_NAME].watch(
            [{"$match": {"operationType": "insert", "fullDocument.latencyRun": marker}}],
            max_await_time_ms=200,
        )

        def watch() -> None:
            grace_deadline: float | None = None
            try:
                while len(received) < total:
                    change = stream.try_next()
                    now = time.perf_counter()
                    if change is not None:
                        received[change["documentKey"]["_id"]] = now
                        continue
                    if writers_done.is_set():
                        # Writers are done: allow 10 s for stragglers, then give up.
                        grace_deadline = grace_deadline or now + 10.0
                        if now > grace_deadline:
                            return
            except BaseException as exc:  # reported by the caller
                watcher_error.append(exc)

        watcher = threading.Thread(target=watch, name="bench-watcher", daemon=True)
        watcher.start()

        def writer(index: int) -> int:
            for i in range(per_thread):
                doc_id = ObjectId()
                coll.insert_one(
                    {
                        "_id": doc_id,
                        "seq": -1,
                        "task": "latency",
                        "nextRunAt": FAR_FUTURE,
                        "latencyRun": marker,
                        "writer": index,
                        "i": i,
                    }
                )
                acked[doc_id] = time.perf_counter()
            return per_thread

        try:
            run_threads(threads, writer, join_timeout=cfg.duration * 20 + 300)
        finally:
            writers_done.set()
            watcher.join(timeout=120)
        stream.close()
    finally:
        watch_client.close()
    if watcher_error:
        raise watcher_error[0]
    latencies = [(received[k] - acked[k]) * 1000 for k in acked if k in received]
    lost = sum(1 for k in acked if k not in received)
    return percentile(latencies, 50), percentile(latencies, 99), lost


# --------------------------------------------------------------------------- driver


def _embedded_server_class() -> Callable[..., ServerHandle]:
    """Import ``EmbeddedServer``; the repository root is put on ``sys.path`` if needed."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    module = importlib.import_module("runtime.embedded.process")
    server_class: Callable[..., ServerHandle] = module.EmbeddedServer
    return server_class


def bench_one(storage: str, size: int, cfg: Config, results: Results) -> None:
    """Start a fresh server, preload ``size`` documents and run every phase on it."""
    server_class = _embedded_server_class()
    with ExitStack() as stack:
        if storage == "disk":
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-db-")))
            server = stack.enter_context(server_class(dbpath=tmp / "db", log_path=tmp / "log"))
        else:
            server = stack.enter_context(server_class())
        client: MongoClient[dict[str, Any]] = stack.enter_context(
            MongoClient(server.uri, maxPoolSize=max(cfg.threads) + 4)
        )
        coll = client[DB_NAME][COLL_NAME]
        print(f"[{storage} {format_size(size)}] preloading ...", file=sys.stderr, flush=True)
        results.preloads.append(Preload(storage, size, preload(coll, size)))
        for threads in cfg.threads:
            row = Row(storage, size, threads)
            label = f"[{storage} {format_size(size)} x{threads}]"
            print(f"{label} find ...", file=sys.stderr, flush=True)
            row.find = measure_find(coll, size, threads, cfg)
            print(f"{label} claim ...", file=sys.stderr, flush=True)
            row.claim = measure_claim(coll, size, threads, cfg)
            print(f"{label} insert ...", file=sys.stderr, flush=True)
            row.insert = measure_insert(coll, threads, cfg)
            print(f"{label} change-event latency ...", file=sys.stderr, flush=True)
            row.latency_p50_ms, row.latency_p99_ms, row.events_lost = measure_event_latency(
                server.uri, coll, threads, cfg
            )
            if row.events_lost:
                results.notes.append(
                    f"{storage} {format_size(size)} x{threads}: "
                    f"{row.events_lost} change events never arrived"
                )
            results.rows.append(row)


# --------------------------------------------------------------------------- report


def machine_info() -> list[tuple[str, str]]:
    """CPU, core count, memory, OS and software versions of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [
        ("nproc", str(usable if usable is not None else os.cpu_count())),
        ("CPU", model),
        ("memory", memory),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("PyMongo", pymongo.version),
    ]


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``"0.52 / 0.61 / 0.70"``."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def render(cfg: Config, results: Results, started: datetime) -> str:
    """The markdown report."""
    out: list[str] = ["# Embedded server benchmark", ""]
    out.append(f"Run at {started:%Y-%m-%d %H:%M} UTC.")
    out.append(
        f"Phases are bounded by {cfg.duration:g} s and {cfg.max_ops:,} operations; "
        f"latency uses {cfg.latency_events:,} events per configuration. Server and client "
        "run on the same machine over loopback."
    )
    out += ["", "| machine | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine_info()]
    out.append(f"| load average 1/5/15 min, at the start | {results.load_at_start} |")
    out.append(f"| load average 1/5/15 min, at the end | {load_average()} |")

    out += ["", "## Preload (insert_many, batches of 10,000, two secondary indexes)", ""]
    out += ["| storage | documents | seconds | documents/s |", "|---|---:|---:|---:|"]
    for p in results.preloads:
        out.append(
            f"| {p.storage} | {format_size(p.size)} | {_num(p.seconds, 2)} | "
            f"{_num(p.size / p.seconds if p.seconds else float('nan'))} |"
        )

    out += ["", "## Throughput (operations/s) and change-event latency (ms)", ""]
    out += [
        "| storage | documents | threads | insert/s | find/s | claim/s | "
        "event p50 ms | event p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rows:
        out.append(
            f"| {r.storage} | {format_size(r.size)} | {r.threads} | {_num(r.insert)} | "
            f"{_num(r.find)} | {_num(r.claim)} | {_num(r.latency_p50_ms, 2)} | "
            f"{_num(r.latency_p99_ms, 2)} |"
        )

    sizes = sorted({r.size for r in results.rows})
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        out += ["", f"## Claim scaling: {format_size(large)} vs {format_size(small)} documents", ""]
        out += [
            f"| storage | threads | claim/s at {format_size(small)} | "
            f"claim/s at {format_size(large)} | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        by_key = {(r.storage, r.size, r.threads): r for r in results.rows}
        for storage in cfg.storage:
            for threads in cfg.threads:
                a = by_key.get((storage, small, threads))
                b = by_key.get((storage, large, threads))
                if a is None or b is None:
                    continue
                ratio = b.claim / a.claim if a.claim else float("nan")
                out.append(
                    f"| {storage} | {threads} | {_num(a.claim)} | {_num(b.claim)} | "
                    f"{_num(ratio, 2)} |"
                )
        out.append("")
        out.append("ratio = claim/s at the larger size ÷ claim/s at the smaller size.")
    if results.notes:
        out += ["", "Notes:", ""]
        out += [f"* {n}" for n in results.notes]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown report to stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--long-reads" in args:
        args.remove("--long-reads")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        long_reads = importlib.import_module("long_reads")
        code: int = long_reads.main(args)
        return code
    cfg = parse_args(args)
    started = datetime.now(UTC)
    results = Results(load_at_start=load_average())
    t0 = time.perf_counter()
    for storage in cfg.storage:
        for size in cfg.sizes:
            bench_one(storage, size, cfg, results)
    print(render(cfg, results, started))
    print(f"\n_Total benchmark time: {time.perf_counter() - t0:,.0f} s._")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
