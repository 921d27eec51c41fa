"""End-to-end runtime benchmark: tasks per second, trigger-to-start latency, commands per task,
server CPU per task.

Usage: python bench/runtime_throughput.py [--docs 10000] [--instances 1 2]
                                          [--latency-samples 200] [--json FILE]

For each instance count it starts the embedded server (in memory), builds a one-reactor app with
a no-op handler (debounce 0), starts that many ``runtime serve`` processes (``--concurrency 10``)
and then (bench/bench_support.py):

* latency: inserts documents one by one, each after the previous task started, and measures
  insert acknowledgement -> handler start (same machine, same clock), per instance and overall;
* throughput: inserts ``--docs`` documents in batches of 1,000 and measures until every task
  completed;
* server CPU: utime + stime of the embedded server process over the throughput phase, per
  1,000 tasks; runtime CPU: the same for all ``runtime serve`` processes together;
* commands per completed task: every runtime process counts the commands it sends (PyMongo
  command monitoring, REACTGEN_COMMAND_STATS) for the whole run, heartbeats included.

Prints markdown tables (recorded in docs/benchmarks.md). ``bench/side_by_side.py`` runs the same
workload against mongodash as well.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_support import (
    Client,
    Measurement,
    StartsLog,
    build_app,
    machine,
    measure_latency,
    measure_throughput,
    percentile,
    read_commands,
    sigterm_as_exit,
    start_reactgen,
    stop_processes,
)
from pymongo import MongoClient

from runtime.embedded.process import EmbeddedServer


def run(instances: int, docs: int, samples: int) -> Measurement:
    """One full measurement with ``instances`` runtime processes."""
    result = Measurement("reactgen", instances, docs, samples)
    with tempfile.TemporaryDirectory(prefix="reactgen-bench-") as tmp, EmbeddedServer() as db:
        assert db.pid is not None
        workdir = Path(tmp)
        build_app(workdir)
        processes = start_reactgen(workdir, db.uri, instances)
        try:
            client: Client = MongoClient(db.uri)
            starts = StartsLog([workdir / f"starts-{i}.txt" for i in range(instances)])
            measure_latency(client, starts, samples, result, server_pid=db.pid)
            measure_throughput(client, starts, db.pid, result,
                               worker_pids=[p.pid for p in processes])
        finally:
            stop_processes(processes)
        result.commands = read_commands([workdir / f"commands-{i}.json"
                                         for i in range(instances)])
        result.per_instance = starts.per_process(instances)
        client.close()
    return result


def main() -> int:
    """Run and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with sigterm_as_exit():
        results = [run(n, args.docs, args.latency_samples) for n in args.instances]
    print(f"machine: {machine()}; embedded server in memory; no-op handler; debounce 0\n")
    print(f"| instances | tasks/s ({args.docs:,} docs) | trigger-to-start p50 / p99 (ms) | "
          "p50 / p99 per instance | DB commands per completed task | server CPU s per 1,000 "
          "tasks | runtime CPU s per 1,000 tasks | server CPU s per 1,000 tasks one at a time "
          "(latency phase) | tasks run per instance |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        every = r.all_latencies
        shown = "; ".join(f"#{k}: {percentile(v, 0.5):.1f} / {percentile(v, 0.99):.1f}"
                          for k, v in sorted(r.latencies.items()) if v)
        print(f"| {r.instances} | {r.rate:,.0f} | {percentile(every, 0.5):.1f} / "
              f"{percentile(every, 0.99):.1f} | {shown} | {r.per_task:.2f} | "
              f"{r.cpu_per_1000:.2f} | {r.worker_cpu_per_1000:.2f} | "
              f"{r.low_load_cpu_per_1000:.2f} | {' / '.join(f'{n:,}' for n in r.per_instance)} |")
    print("\nCommands by name (all instances, whole run):\n")
    for r in results:
        print(f"- {r.instances} instance(s), {r.total:,} tasks: {r.commands}")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
