"""End-to-end runtime benchmark: tasks per second, trigger-to-start latency, commands per task.

Usage: python bench/runtime_throughput.py [--docs 10000] [--instances 1 2] [--latency-samples 200]

For each instance count it starts the embedded server (in memory), builds a one-reactor app with
a no-op handler (debounce 0), starts that many ``runtime serve`` processes and then:

* latency: inserts documents one by one, each after the previous task started, and measures
  insert acknowledgement -> handler start (same machine, same clock), per instance;
* throughput: inserts ``--docs`` documents in batches and measures until every task completed;
* commands per completed task: every runtime process counts the commands it sends (PyMongo
  command monitoring, REACTGEN_COMMAND_STATS) for the whole run, heartbeats included.

Prints markdown tables (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime.embedded.process import EmbeddedServer  # noqa: E402

DEFINITION = """\
name: noop
collection: items
schema:
  type: object
  title: Item
  properties:
    _id: {type: integer}
    n: {type: integer}
trigger:
  watch: [n]
"""
HANDLER = '''\
"""No-op handler that records when it started (for the latency measurement)."""

from __future__ import annotations

import os
import time

from benchapp.reactors.noop import Context

_LOG = open(os.environ["BENCH_STARTS"], "a", buffering=1)  # noqa: SIM115


async def handle(ctx: Context) -> None:
    """Record the start time; do nothing else."""
    _LOG.write(f"{ctx.doc_id} {time.time()}\\n")
'''


def build_app(workdir: Path) -> None:
    """Generate the benchmark app into ``workdir/benchapp`` with the no-op handler."""
    (workdir / "defs").mkdir()
    (workdir / "defs" / "noop.reactor.yaml").write_text(DEFINITION, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "generator", "build", "defs", "--out", "benchapp"],
                   cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    (workdir / "benchapp" / "handlers" / "noop.py").write_text(HANDLER, encoding="utf-8")


def start_instances(workdir: Path, uri: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` runtime processes and wait until one of them leads."""
    processes = []
    for index in range(count):
        env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}",
               "BENCH_STARTS": str(workdir / f"starts-{index}.txt"),
               "REACTGEN_COMMAND_STATS": str(workdir / f"commands-{index}.json")}
        log = (workdir / f"runtime-{index}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--app", "benchapp", "--mongodb-uri", uri,
             "--instance-id", f"bench-{index}", "--concurrency", "10", "--log-level",
             "WARNING"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log))
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    deadline = time.monotonic() + 30
    while client.app.reactgen_meta.find_one({"_id": "planner:app"}) is None:
        if time.monotonic() > deadline:
            raise SystemExit("runtime did not start planning; see runtime-*.log")
        client.app.items.insert_one({"_id": -1, "n": 0})
        client.app.items.delete_one({"_id": -1})
        time.sleep(0.05)
    return processes


def read_starts(workdir: Path, count: int) -> dict[int, tuple[float, int]]:
    """doc id -> (start time, instance index)."""
    starts: dict[int, tuple[float, int]] = {}
    for index in range(count):
        path = workdir / f"starts-{index}.txt"
        if path.exists():
            for line in path.read_text().splitlines():
                doc_id, stamp = line.split()
                starts.setdefault(int(doc_id), (float(stamp), index))
    return starts


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def run(instances: int, docs: int, samples: int) -> dict[str, object]:
    """One full measurement with ``instances`` runtime processes."""
    with tempfile.TemporaryDirectory(prefix="reactgen-bench-") as tmp, EmbeddedServer() as db:
        workdir = Path(tmp)
        build_app(workdir)
        processes = start_instances(workdir, db.uri, instances)
        client: MongoClient[dict[str, object]] = MongoClient(db.uri)
        items = client.app.items
        latencies: dict[int, list[float]] = {i: [] for i in range(instances)}
        for doc_id in range(1, samples + 1):
            items.insert_one({"_id": doc_id, "n": 1})
            acked = time.time()
            deadline = time.monotonic() + 10
            while True:
                started = read_starts(workdir, instances).get(doc_id)
                if started is not None:
                    latencies[started[1]].append((started[0] - acked) * 1000)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"task {doc_id} did not start")
                time.sleep(0.001)
        base = samples + 1
        began = time.perf_counter()
        for start in range(base, base + docs, 1000):
            items.insert_many([{"_id": i, "n": 1} for i in range(start, min(base + docs,
                                                                             start + 1000))])
        tasks = client.app.items_tasks
        total = samples + docs
        while tasks.count_documents({"status": "completed"}) < total:
            if time.perf_counter() - began > 600:
                raise SystemExit("throughput phase did not finish in 10 minutes")
            time.sleep(0.1)
        elapsed = time.perf_counter() - began
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        commands: dict[str, int] = {}
        for index in range(instances):
            for name, count in json.loads((workdir / f"commands-{index}.json").read_text()
                                          ).items():
                commands[name] = commands.get(name, 0) + count
        starts = read_starts(workdir, instances)
        per_instance = [sum(1 for _, i in starts.values() if i == k) for k in range(instances)]
        return {"instances": instances, "elapsed": elapsed, "rate": docs / elapsed,
                "latencies": latencies, "commands": commands,
                "per_task": sum(commands.values()) / total, "per_instance": per_instance,
                "total": total}


def main() -> int:
    """Run and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    results = [run(n, args.docs, args.latency_samples) for n in args.instances]
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          "embedded server in memory; no-op handler; debounce 0\n")
    print(f"| instances | tasks/s ({args.docs} docs) | trigger-to-start p50 / p99 (ms) per "
          "instance | DB commands per completed task | tasks run per instance |")
    print("|---|---|---|---|---|")
    for r in results:
        lat = r["latencies"]
        assert isinstance(lat, dict)
        shown = "; ".join(f"#{k}: {percentile(v, 0.5):.1f} / {percentile(v, 0.99):.1f}"
                          for k, v in lat.items() if v)
        print(f"| {r['instances']} | {r['rate']:.0f} | {shown} | {r['per_task']:.2f} | "
              f"{r['per_instance']} |")
    print("\nCommands by name (all instances, whole run):\n")
    for r in results:
        print(f"- {r['instances']} instance(s), {r['total']} tasks: {r['commands']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
