"""reactgen against mongodash's Reactive Tasks on the same embedded server and workload.

Usage: python bench/side_by_side.py [--docs 10000] [--latency-samples 100] [--rounds 1]
                                    [--instances 1 2] [--systems reactgen mongodash] [--json FILE]

Every run gets a fresh embedded server (in memory). Runs are interleaved: for each round, for
each instance count, reactgen then mongodash (reactgen 1, mongodash 1, reactgen 2, mongodash 2,
and again for the next round), so slow drifts of this shared machine hit both systems alike.

Workload (bench/bench_support.py): one reactive task / reactor on collection ``items`` watching
field ``n``, no-op handler, debounce 0; ``--latency-samples`` documents inserted one at a time
(each after the previous handler started: insert acknowledged -> handler started), then
``--docs`` documents in batches of 1,000 (tasks/s until every task is ``completed``).

Columns: tasks/s (median over rounds, each round's value in brackets), trigger-to-start latency
p50 / p99 in ms (all samples of all rounds and processes pooled), database commands per
completed task (every command each process sent during its whole life, heartbeats and getMores
included; reactgen: ``REACTGEN_COMMAND_STATS``; mongodash: ``monitorCommands`` +
``commandStarted`` in ``bench/mongodash/run.js``), and the embedded server's CPU seconds
(utime + stime from ``/proc/<pid>/stat``) per 1,000 tasks of the throughput phase. Then the
reactgen / mongodash ratios per instance count.

reactgen: ``runtime serve --concurrency 10`` per process, defaults otherwise.

mongodash (npm package pinned in ``bench/mongodash/package-lock.json``; run
``npm ci --prefix bench/mongodash`` once), configured as a user tuning it for throughput would,
with public options only: ``reactiveTaskConcurrency: 10`` per process (default 5; the same as
reactgen's), task ``debounce: 0`` and ``watchProjection: {n: 1}``, ``monitoring.enabled:
false``, its MongoClient with ``ignoreUndefined: true`` (without it the driver sends
``$changeStream: {resumeAfter: null}``, which the embedded server rejects), plus a non-partial
claim index ``{task: 1, nextRunAt: 1, _id: 1}`` beside its partial ``polling_idx`` (the embedded
server's planner does not use partial indexes, so without it every claim would scan the tasks
collection; the extra ``_id`` key only avoids the embedded server's IndexOptionsConflict with
``polling_idx``, which has the same keys). Internal, non-public options (worker poll 200 ms ..
10 s with jitter, planner batches of 1,000 events or a 500 ms window) keep their defaults.
See ``bench/mongodash/run.js`` for the details and the workaround it applies on servers that
evaluate ``{$expr: {}}`` as false. One round takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench_support import (
    REPO,
    Client,
    Measurement,
    StartsLog,
    build_app,
    machine,
    measure_latency,
    measure_throughput,
    median,
    percentile,
    read_commands,
    read_notes,
    sigterm_as_exit,
    start_reactgen,
    stop_processes,
    with_database,
)
from pymongo import MongoClient

from runtime.embedded.process import EmbeddedServer

NODE_DIR = REPO / "bench" / "mongodash"
SYSTEMS = ("reactgen", "mongodash")


def start_mongodash(workdir: Path, uri: str, count: int) -> tuple[list[subprocess.Popen[bytes]],
                                                                   list[str]]:
    """Start ``count`` Node processes running ``run.js``; wait until each printed ``ready``.

    Returns the processes and the probe lines they printed."""
    if not (NODE_DIR / "node_modules" / "mongodash").is_dir():
        raise SystemExit("mongodash is not installed: run `npm ci --prefix bench/mongodash`")
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH")
    processes: list[subprocess.Popen[bytes]] = []
    notes: list[str] = []
    for index in range(count):
        log = (workdir / f"mongodash-{index}.log").open("wb")
        process = subprocess.Popen(
            [node, str(NODE_DIR / "run.js"), with_database(uri, "app"), f"md-{index}",
             str(workdir / f"starts-{index}.txt"), str(workdir / f"commands-{index}.json")],
            cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=log)
        processes.append(process)
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while True:
            line = process.stdout.readline().decode().strip()
            if line == "ready":
                break
            if line.startswith("probe:"):
                notes.append(line)
            if not line and (process.poll() is not None or time.monotonic() > deadline):
                stop_processes(processes)
                raise SystemExit(f"mongodash did not start; see {workdir}/mongodash-{index}.log:\n"
                                 + (workdir / f"mongodash-{index}.log").read_text()[-3000:])
    return processes, notes


def run(system: str, instances: int, docs: int, samples: int, keep: bool) -> Measurement:
    """One measurement of ``system`` with ``instances`` processes on a fresh server."""
    result = Measurement(system, instances, docs, samples)
    workdir = Path(tempfile.mkdtemp(prefix=f"side-by-side-{system}-{instances}-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with EmbeddedServer() as db:
            assert db.pid is not None
            if system == "reactgen":
                build_app(workdir)
                processes = start_reactgen(workdir, db.uri, instances)
            else:
                processes, notes = start_mongodash(workdir, db.uri, instances)
                for note in sorted(set(notes)):
                    print(f"  mongodash {note}", flush=True)
            client: Client = MongoClient(db.uri)
            starts = StartsLog([workdir / f"starts-{i}.txt" for i in range(instances)])
            measure_latency(client, starts, samples, result, server_pid=db.pid)
            measure_throughput(client, starts, db.pid, result,
                               worker_pids=[p.pid for p in processes])
            stop_processes(processes)
            processes = []
            files = [workdir / f"commands-{i}.json" for i in range(instances)]
            result.commands = read_commands(files)
            remarks = read_notes(files)
            if remarks:
                print(f"  {system} notes (failed commands, workarounds): {remarks}", flush=True)
            result.per_instance = starts.per_process(instances)
            client.close()
    finally:
        stop_processes(processes)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    every = result.all_latencies
    print(f"  {system} x{instances}: {result.rate:,.0f} tasks/s, p50/p99 "
          f"{percentile(every, 0.5):.1f}/{percentile(every, 0.99):.1f} ms, "
          f"{result.per_task:.2f} commands/task, server CPU {result.cpu_per_1000:.2f} s/1,000 "
          f"tasks, its processes' CPU {result.worker_cpu_per_1000:.2f} s/1,000 tasks, "
          f"keys/docs examined per task {result.examined_per_task('scanned'):.1f}/"
          f"{result.examined_per_task('scannedObjects'):.1f}, per process {result.per_instance}",
          flush=True)
    return result


def fmt(value: float, digits: int = 1) -> str:
    """A number with thousands separators."""
    return f"{value:,.{digits}f}"


def report(results: list[Measurement], docs: int, samples: int, rounds: int) -> None:
    """Print the markdown tables."""
    print(f"\nmachine: {machine()}; embedded server in memory, fresh per run; {docs:,} docs in "
          f"batches of 1,000 + {samples} latency samples; {rounds} interleaved round(s)\n")
    print("| system | instances | tasks/s | trigger-to-start p50 / p99 (ms) | DB commands per "
          "completed task | server CPU s per 1,000 tasks | the system's processes' CPU s per "
          "1,000 tasks | server CPU s per 1,000 tasks one at a time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    summary: dict[tuple[str, int], dict[str, float]] = {}
    for system in SYSTEMS:
        for instances in sorted({r.instances for r in results}):
            runs = [r for r in results if r.system == system and r.instances == instances]
            if not runs:
                continue
            every = [v for r in runs for v in r.all_latencies]
            row = {"rate": median([r.rate for r in runs]),
                   "p50": percentile(every, 0.5), "p99": percentile(every, 0.99),
                   "per_task": median([r.per_task for r in runs]),
                   "cpu": median([r.cpu_per_1000 for r in runs]),
                   "workers": median([r.worker_cpu_per_1000 for r in runs]),
                   "low": median([r.low_load_cpu_per_1000 for r in runs])}
            summary[(system, instances)] = row
            each = f" ({', '.join(fmt(r.rate, 0) for r in runs)})" if len(runs) > 1 else ""
            print(f"| {system} | {instances} | {fmt(row['rate'], 0)}{each} | "
                  f"{row['p50']:.1f} / {row['p99']:.1f} | {row['per_task']:.2f} | "
                  f"{row['cpu']:.2f} | {row['workers']:.2f} | {row['low']:.2f} |")
    print("\nreactgen / mongodash (tasks/s: higher is better; the others: lower is better):\n")
    print("| instances | tasks/s | latency p50 | latency p99 | commands per task | "
          "server CPU per task | server CPU per task, one at a time |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for instances in sorted({r.instances for r in results}):
        ours, theirs = summary.get(("reactgen", instances)), summary.get(("mongodash", instances))
        if ours is None or theirs is None:
            continue
        print(f"| {instances} | {ours['rate'] / theirs['rate']:.2f}x | "
              f"{ours['p50'] / theirs['p50']:.2f}x | {ours['p99'] / theirs['p99']:.2f}x | "
              f"{ours['per_task'] / theirs['per_task']:.2f}x | "
              f"{ours['cpu'] / theirs['cpu']:.2f}x | {ours['low'] / theirs['low']:.2f}x |")
    print("\nCommands by name (all processes, whole run), tasks run per process, and the "
          "server's index keys / documents examined per task in the throughput phase "
          "(serverStatus metrics.queryExecutor scanned / scannedObjects):\n")
    for r in results:
        print(f"- {r.system} x{r.instances}, {r.total:,} tasks: {r.commands}; per process "
              f"{r.per_instance}; examined per task {r.examined_per_task('scanned'):.1f} keys / "
              f"{r.examined_per_task('scannedObjects'):.1f} docs")


def main() -> int:
    """Run the interleaved rounds and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    args = parser.parse_args()
    results: list[Measurement] = []
    started = time.monotonic()
    with sigterm_as_exit():
        for round_no in range(1, args.rounds + 1):
            for instances in args.instances:
                for system in SYSTEMS:
                    if system in args.systems:
                        print(f"round {round_no}: {system} x{instances} ...", flush=True)
                        results.append(run(system, instances, args.docs,
                                           args.latency_samples, args.keep))
    report(results, args.docs, args.latency_samples, args.rounds)
    print(f"\n_Total benchmark time: {time.monotonic() - started:.0f} s._")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
