"""Due-to-start latency: how late a task starts after the due time the runtime knew of.

Usage: python bench/due_latency.py [--samples 200] [--spread-s 10] [--instances 1 2]

For each instance count it starts the embedded server (in memory), builds an app with three
reactors on three collections and starts that many ``runtime serve`` processes with
``--idle-poll-ms 60000`` (so only the due times, never the idle poll, can start the work):

* ``retry``: the handler fails its first attempt; retry ``fixed`` 1 s;
* ``defer``: the first execution calls ``ctx.defer(ms)`` with a random 0.5-1.5 s;
* ``debounce``: a 1 s debounce on an insert.

The documents are inserted at random moments over ``--spread-s`` seconds, so many due times of
each reactor are outstanding at once while the machine is otherwise idle. Latency is
``startedAt`` (set by the claim with the server's ``$$NOW``) minus the due time (the
retry/deferral finalization's ``$$NOW`` plus the delay, or the debounced ``dueAt``): both are
the server's clock.

Prints a markdown table (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime.embedded.process import EmbeddedServer  # noqa: E402

IDLE_POLL_MS = 60_000
RETRY_MS = 1000
DEBOUNCE_MS = 1000
SCHEMA = """\
schema:
  type: object
  title: {title}
  properties:
    _id: {{type: integer}}
    delay: {{type: integer}}
trigger:
  watch: [delay]
"""
DEFINITIONS = {
    "retry": "name: retry\ncollection: retries\n" + SCHEMA.format(title="Retried") + f"""\
policies:
  retry: {{strategy: fixed, interval: {RETRY_MS}ms, maxAttempts: 3}}
""",
    "defer": "name: defer\ncollection: defers\n" + SCHEMA.format(title="Deferred"),
    "debounce": "name: debounce\ncollection: debounces\n" + SCHEMA.format(title="Debounced")
    + f"policies:\n  debounce: {{delay: {DEBOUNCE_MS}ms}}\n",
}
HANDLERS = {
    "retry": '''\
async def handle(ctx):
    """Fail the first attempt."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
''',
    "defer": '''\
async def handle(ctx):
    """Defer the first execution by the document's delay."""
    doc = await ctx.get_document()
    seen = await ctx.database["deferred"].find_one_and_update(
        {"_id": ctx.doc_id}, {"$set": {"seen": True}}, upsert=True)
    if seen is None:
        await ctx.defer(doc.delay)
''',
    "debounce": '''\
async def handle(ctx):
    """Nothing to do: the start time is what is measured."""
''',
}
COLLECTIONS = {"retry": "retries", "defer": "defers", "debounce": "debounces"}


def build_app(workdir: Path) -> None:
    """Generate the benchmark app into ``workdir/latencyapp`` with its handlers."""
    (workdir / "defs").mkdir()
    for name, text in DEFINITIONS.items():
        (workdir / "defs" / f"{name}.reactor.yaml").write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "generator", "build", "defs", "--out", "latencyapp"],
                   cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    for name, code in HANDLERS.items():
        (workdir / "latencyapp" / "handlers" / f"{name}.py").write_text(code, encoding="utf-8")


def start_instances(workdir: Path, uri: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` runtime processes and wait until one of them plans."""
    processes = []
    for index in range(count):
        env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}"}
        log = (workdir / f"runtime-{index}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--app", "latencyapp", "--mongodb-uri",
             uri, "--instance-id", f"bench-{index}", "--idle-poll-ms", str(IDLE_POLL_MS),
             "--log-level", "WARNING"], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
            stderr=log))
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    deadline = time.monotonic() + 30
    while client.app.reactgen_meta.find_one({"_id": "planner:app"}) is None:
        if time.monotonic() > deadline:
            raise SystemExit("runtime did not start planning; see runtime-*.log")
        time.sleep(0.05)
    time.sleep(1)  # every instance's start-up claims are done and its workers are idle
    return processes


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def due_time(kind: str, task: dict[str, Any], delay: int) -> datetime.datetime:
    """When the last execution of ``task`` was due (server clock)."""
    if kind == "debounce":
        due: datetime.datetime = task["dueAt"]
        return due
    first = task["history"][0]
    assert first["status"] == ("failed" if kind == "retry" else "deferred"), task["history"]
    at: datetime.datetime = first["at"]
    return at + datetime.timedelta(milliseconds=RETRY_MS if kind == "retry" else delay)


def run(instances: int, samples: int, spread_s: float) -> dict[str, list[float]]:
    """One measurement with ``instances`` runtime processes: kind -> latencies (ms)."""
    rng = random.Random(instances)
    with tempfile.TemporaryDirectory(prefix="reactgen-due-") as tmp, EmbeddedServer() as db:
        workdir = Path(tmp)
        build_app(workdir)
        processes = start_instances(workdir, db.uri, instances)
        client: MongoClient[dict[str, Any]] = MongoClient(db.uri)
        app = client.app
        schedule = sorted((rng.uniform(0, spread_s), kind, doc_id)
                          for kind in COLLECTIONS for doc_id in range(samples))
        delays: dict[tuple[str, int], int] = {}
        began = time.monotonic()
        for offset, kind, doc_id in schedule:
            pause = began + offset - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            delay = rng.randint(500, 1500)
            delays[(kind, doc_id)] = delay
            app[COLLECTIONS[kind]].insert_one({"_id": doc_id, "delay": delay})
        deadline = time.monotonic() + 30
        for kind, collection in COLLECTIONS.items():
            tasks = app[f"{collection}_tasks"]
            while tasks.count_documents({"status": "completed"}) < samples:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind}: not every task completed within 30 s of the last "
                                     "insert (the idle poll is 60 s): a due time was lost")
                time.sleep(0.1)
        latencies: dict[str, list[float]] = {}
        for kind, collection in COLLECTIONS.items():
            latencies[kind] = [
                (task["startedAt"] - due_time(kind, task, delays[(kind, task["sourceId"])])
                 ).total_seconds() * 1000
                for task in app[f"{collection}_tasks"].find()]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        return latencies


def main() -> int:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200, help="due times per kind")
    parser.add_argument("--spread-s", type=float, default=10.0)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    results = {n: run(n, args.samples, args.spread_s) for n in args.instances}
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"embedded server in memory; idle poll {IDLE_POLL_MS // 1000} s; {args.samples} due "
          f"times per kind inserted over {args.spread_s:g} s\n")
    print("| instances | due time | samples | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---|---|---|---|---|")
    for instances, latencies in results.items():
        for kind, values in latencies.items():
            print(f"| {instances} | {kind} | {len(values)} | {percentile(values, 0.5):.1f} | "
                  f"{percentile(values, 0.95):.1f} | {percentile(values, 0.99):.1f} | "
                  f"{max(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
