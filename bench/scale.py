"""Scale: runtime memory and claim cost with 0 vs 1,000,000 task documents (issue 9 item 8).

Usage: python bench/scale.py [--tasks 1000000] [--stream 2000] [--batch 1000]
                             [--tick-every 10000] [--oplog-size-mb MB] [--json FILE]

One embedded server (in memory; ``--oplog-size-mb`` sets its change log size, default the
server's 64 MB), the one-reactor no-op app of bench/bench_support.py, one ``runtime serve``
(``--concurrency 10``, ``--metrics-scope local``) at a time, in three phases:

A. **fresh start, 0 task documents**: the runtime starts on empty collections (and creates its
   indexes, among them ``reactgen_claim`` ``{reactor: 1, nextRunAt: 1}`` and the unique
   ``reactgen_task_key``), then a stream of ``--stream`` inserts into ``items`` (batches of 100)
   is planned and run to completion; the runtime is stopped.
B. **loaded while running**: a new runtime starts; while it runs, ``--tasks`` task documents are
   inserted directly (``insert_many(ordered=False)``, batches of ``--batch``), each a copy of a
   ``completed`` task that phase A's runtime wrote (same fields: ``nextRunAt: null``,
   ``history``...) with a new ``_id`` and a ``sourceId`` of its own (no source document: they
   are history, as after months of work), with one source document inserted after every
   ``--tick-every`` of them; then the same stream of new inserts runs.
C. **restarted**: the runtime is started again with the 1M task documents in place (it resumes
   from its saved stream position) and the stream runs once more.

Why loaded while running, in batches of 1,000, with source changes in between: a runtime
(re)started after a backlog of ~1M change-log entries that its planner has not read gets stuck
on the embedded server (it filters the whole backlog inside one getMore, ~10 s without
answering anyone, the leader lease lapses, the planner restarts from the same position); see
docs/benchmarks.md.

Per phase it prints: tasks/s and the embedded server's CPU seconds (utime + stime) per 1,000
tasks of the stream, runtime RSS (``VmRSS`` from ``/proc/<pid>/status`` when it leads, before
the stream, and the maximum sampled every 0.2 s while it runs; ``VmHWM``, the kernel's peak), the
server's index keys and documents examined (``serverStatus().metrics.queryExecutor``
``scanned`` / ``scannedObjects`` deltas) during the stream, divided by the runtime's claim
attempts (its ``reactgen_claim_attempts`` counter; a claim attempt is one claim round) and by the
tasks run, and the same deltas for the start-up (process start until it leads, plus the load in
phase B). ``scanned`` counts every query of the runtime in the window (planner upserts,
finalizes, wake-up reads, claims), so "keys per claim" is an upper bound of what a claim
examines; what matters is that it does not grow with the number of task documents. Completion
is detected from the handler start log and the runtime's ``reactgen_task_executions`` counter,
so the benchmark adds no queries of its own to the window.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_support import (
    Client,
    RssSampler,
    StartsLog,
    build_app,
    cpu_seconds,
    free_port,
    machine,
    memory_kib,
    metric_sum,
    read_commands,
    scrape_metrics,
    server_counters,
    sigterm_as_exit,
    start_reactgen,
    stop_processes,
    wait_until,
)
from pymongo import MongoClient

from runtime.embedded.process import EmbeddedServer

SOURCE_OFFSET = 100_000_000  # sourceIds of the bulk-loaded tasks (never inserted into items)


def run_phase(name: str, workdir: Path, db: EmbeddedServer, client: Client, first_id: int,
              stream: int, load: Callable[[], object] | None = None) -> dict[str, Any]:
    """Start one runtime, (run ``load`` while it runs,) run ``stream`` inserts (ids from
    ``first_id``) to completion, stop it."""
    port = free_port()
    server_pid = db.pid
    assert server_pid is not None
    before_start = server_counters(client)
    processes = start_reactgen(workdir, db.uri, 1, prefix=f"{name}-", extra_args=(
        "--metrics-port", str(port), "--metrics-scope", "local"), wait_for_planner=False)
    pid = processes[0].pid
    starts = StartsLog([workdir / f"{name}-starts-0.txt"])
    try:
        with RssSampler([pid]) as sampler:
            started = time.perf_counter()
            wait_until(lambda: _metrics_up(port), 120, "the runtime's metrics endpoint")
            wait_until(lambda: metric_sum(scrape_metrics(port), "reactgen_leader") >= 1, 120,
                       "the runtime to lead (plan)")
            ready_s = time.perf_counter() - started
            time.sleep(1.0)  # let start-up reads settle before the measured window
            rss_ready = memory_kib(pid).get("VmRSS", 0)
            if load is not None:
                load()
                time.sleep(5.0)  # the runtime's streams catch up with the load
            after_start = server_counters(client)
            rss_idle = memory_kib(pid).get("VmRSS", 0)
            metrics_before = scrape_metrics(port)
            cpu_before = cpu_seconds(server_pid)
            began = time.perf_counter()
            for start in range(first_id, first_id + stream, 100):
                client.app.items.insert_many(
                    [{"_id": i, "n": 1} for i in range(start, min(first_id + stream,
                                                                   start + 100))])
            wanted = set(range(first_id, first_id + stream))

            def all_started() -> bool:
                starts.poll()
                return wanted <= starts.starts.keys()

            wait_until(all_started, 600, f"{stream} handler starts", interval=0.02)
            executions = metric_sum(metrics_before, "reactgen_task_executions_total")
            wait_until(lambda: metric_sum(scrape_metrics(port), "reactgen_task_executions_total")
                       - executions >= stream, 120, "the executions to finish", interval=0.02)
            elapsed = time.perf_counter() - began
            server_cpu = cpu_seconds(server_pid) - cpu_before
            time.sleep(0.5)  # finalize writes still in flight
            after = server_counters(client)
            metrics_after = scrape_metrics(port)
            hwm = memory_kib(pid).get("VmHWM", 0)
    finally:
        stop_processes(processes)
    claims = (metric_sum(metrics_after, "reactgen_claim_attempts_total")
              - metric_sum(metrics_before, "reactgen_claim_attempts_total"))
    misses = (metric_sum(metrics_after, "reactgen_claim_misses_total")
              - metric_sum(metrics_before, "reactgen_claim_misses_total"))
    keys = after.get("scanned", 0) - after_start.get("scanned", 0)
    docs = after.get("scannedObjects", 0) - after_start.get("scannedObjects", 0)
    commands = read_commands([workdir / f"{name}-commands-0.json"])
    return {
        "phase": name, "stream": stream, "elapsed_s": round(elapsed, 2),
        "tasks_per_s": round(stream / elapsed, 1), "ready_s": round(ready_s, 2),
        "server_cpu_per_1000": round(server_cpu / stream * 1000, 2),
        "rss_ready_mib": round(rss_ready / 1024, 1), "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_max_mib": round(sampler.max_kib[pid] / 1024, 1),
        "rss_hwm_mib": round(hwm / 1024, 1), "rss_samples": sampler.samples,
        "claims": int(claims), "claim_misses": int(misses),
        "keys_examined": keys, "docs_examined": docs,
        "keys_per_claim": round(keys / claims, 2) if claims else None,
        "docs_per_claim": round(docs / claims, 2) if claims else None,
        "keys_per_task": round(keys / stream, 2), "docs_per_task": round(docs / stream, 2),
        "startup_keys": after_start.get("scanned", 0) - before_start.get("scanned", 0),
        "startup_docs": (after_start.get("scannedObjects", 0)
                         - before_start.get("scannedObjects", 0)),
        "commands_per_task": round(sum(commands.values()) / stream, 2), "commands": commands,
    }


def _metrics_up(port: int) -> bool:
    try:
        scrape_metrics(port)
    except OSError:
        return False
    return True


def bulk_load(client: Client, tasks: int, batch: int,
              tick_every: int = 10_000) -> tuple[float, dict[str, Any]]:
    """Insert ``tasks`` copies of a completed task; return (seconds, the template).

    After every ``tick_every`` task documents one source document is inserted into ``items``
    (negative ids, not part of any measurement), as real source changes would be: planning it
    moves the planner's saved stream position past the documents loaded so far, so a planner
    restart (e.g. after its lease lapsed while a big insert held the server) never has to filter
    more than that much of the change log."""
    template = client.app.items_tasks.find_one({"status": "completed", "sourceId": {"$gte": 1}})
    if template is None:
        raise SystemExit("phase A left no completed task to copy")
    template.pop("_id")
    template.pop("sourceId")
    began = time.perf_counter()
    last_report = began
    for start in range(0, tasks, batch):
        docs = [{**template, "sourceId": SOURCE_OFFSET + i}
                for i in range(start, min(tasks, start + batch))]
        client.app.items_tasks.insert_many(docs, ordered=False)
        now = time.perf_counter()
        done = min(tasks, start + batch)
        if tick_every and done // tick_every != start // tick_every:
            client.app.items.insert_one({"_id": -1_000_000 - done // tick_every, "n": 1})
        if now - last_report > 10 or done == tasks:
            last_report = now
            print(f"  loaded {done:,} / {tasks:,} task documents in {now - began:.0f} s "
                  f"({done / (now - began):,.0f}/s)", flush=True)
    return time.perf_counter() - began, template


def main() -> int:
    """Run the three phases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--stream", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1_000,
                        help="task documents per insert_many (default 1,000: one 10,000-document "
                        "insert holds the single-threaded embedded server for about 2 s, longer "
                        "than the runtime's leader lease check waits)")
    parser.add_argument("--tick-every", type=int, default=10_000,
                        help="insert one source document after this many task documents")
    parser.add_argument("--oplog-size-mb", type=int, help="the server's change log size "
                        "(default: the server's, 64 MB; e.g. 1256 keeps a 1M-task load whole)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    # The planner's saved position stays in the change log (a source change every
    # --tick-every task documents moves it), so the server's default size will do.
    oplog_mb: int | None = args.oplog_size_mb
    total_began = time.perf_counter()
    loaded: dict[str, Any] = {}

    def load() -> None:
        loaded["seconds"], loaded["template"] = bulk_load(client, args.tasks, args.batch,
                                                          args.tick_every)

    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="reactgen-scale-") as tmp, \
            EmbeddedServer(oplog_size_mb=oplog_mb) as db:
        assert db.pid is not None
        workdir = Path(tmp)
        build_app(workdir)
        client: Client = MongoClient(db.uri)
        print(f"phase A: 0 task documents, {args.stream:,} new documents", flush=True)
        zero = run_phase("zero", workdir, db, client, 1, args.stream)
        print(f"  {zero}", flush=True)
        print(f"phase B: a running runtime; {args.tasks:,} completed task documents loaded, "
              f"then {args.stream:,} new documents", flush=True)
        running = run_phase("running", workdir, db, client, 1 + args.stream, args.stream, load)
        print(f"  {running}", flush=True)
        count = client.app.items_tasks.estimated_document_count()
        print(f"phase C: runtime restarted with {count:,} task documents, {args.stream:,} new "
              "documents", flush=True)
        restarted = run_phase("restarted", workdir, db, client, 1 + 2 * args.stream,
                              args.stream)
        print(f"  {restarted}", flush=True)
        server_rss = memory_kib(db.pid)
        indexes = [ix["name"] for ix in client.app.items_tasks.list_indexes()]
        client.close()
    load_s, template = loaded["seconds"], loaded["template"]
    oplog = f"--oplog-size-mb {oplog_mb}" if oplog_mb else "default change log size"
    print(f"\nmachine: {machine()}; embedded server in memory ({oplog}); "
          f"one `runtime serve --concurrency 10 --metrics-scope local`; no-op handler; "
          "debounce 0\n")
    print(f"Bulk load (phase B, while the runtime ran): {args.tasks:,} task documents in "
          f"{load_s:.0f} s ({args.tasks / load_s:,.0f}/s), batches of {args.batch:,}; task "
          f"indexes: {', '.join(indexes)}; server RSS at the end "
          f"{server_rss.get('VmRSS', 0) / 1024:,.0f} MiB; copied fields: "
          f"{', '.join(sorted(template))}\n")
    print(f"| phase | task documents | runtime RSS ready / before stream / max / peak (MiB) | "
          f"tasks/s ({args.stream:,} new) | server CPU s per 1,000 tasks | claim attempts "
          "(misses) | index keys examined per claim | documents examined per claim | keys / "
          "docs examined per task | start-up keys / docs examined | commands per task |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|")
    rows = (("A: fresh start", "0", zero), ("B: loaded while running", f"{count:,}", running),
            ("C: restarted", f"{count:,}", restarted))
    for phase, label, r in rows:
        print(f"| {phase} | {label} | {r['rss_ready_mib']:.0f} / {r['rss_idle_mib']:.0f} / "
              f"{r['rss_max_mib']:.0f} / {r['rss_hwm_mib']:.0f} | {r['tasks_per_s']:,.0f} | "
              f"{r['server_cpu_per_1000']:.2f} | "
              f"{r['claims']:,} ({r['claim_misses']:,}) | {r['keys_per_claim']} | "
              f"{r['docs_per_claim']} | {r['keys_per_task']} / {r['docs_per_task']} | "
              f"{r['startup_keys']:,} / {r['startup_docs']:,} | {r['commands_per_task']} |")
    print("\nCommands by name (whole runtime life per phase):\n")
    for phase, _, r in rows:
        print(f"- {phase}: {r['commands']}")
    print(f"\n_Total benchmark time: {time.perf_counter() - total_began:.0f} s._")
    if args.json:
        args.json.write_text(json.dumps({"tasks": count, "load_s": load_s, "zero": zero,
                                         "running": running, "restarted": restarted},
                                        indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
