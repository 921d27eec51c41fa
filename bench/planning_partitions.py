"""Planning throughput with one planner vs partitioned planners (``--planner-partitions``).

Usage: python bench/planning_partitions.py [--docs 20000] [--setups 1:1 3:3] [--rounds 2]
       [--leader-ttl-ms 10000]

Each setup is ``instances:partitions``. For each, in a fresh embedded server (in memory), a
one-reactor app whose tasks are debounced by an hour (planned, never due: no handler runs, so
only planning is measured) is started on that many ``runtime serve`` processes. Once every
planner is planning, ``--docs`` documents are inserted in batches of 1,000 as fast as one
client can, and the time is measured from the first insert until every document has its task
(source writes -> task documents planned per second). Leases use ``--leader-ttl-ms`` (10 s by
default: on a saturated 2-core machine the embedded server can take longer than the default 3 s
to answer a renewal, and a lease that changes hands mid-run measures failovers, not planning).
Setups are interleaved over ``--rounds`` and the best round of each is printed, with how the
tasks were spread over the planning instances (each task's partition, hashed by the server,
and that partition's lease owner, whose token the task must carry; "stale token": planned by
an earlier holder of the partition).

Prints a markdown table (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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

DEFINITION = """\
name: plan_only
collection: items
schema:
  type: object
  title: Item
  properties:
    _id: {type: integer}
    n: {type: integer}
trigger:
  watch: [n]
policies:
  debounce: 1h
"""
BATCH = 1000
Doc = dict[str, Any]


def build_app(workdir: Path) -> None:
    """Generate the benchmark app into ``workdir/benchapp`` (the stub handler is never run)."""
    (workdir / "defs").mkdir()
    (workdir / "defs" / "plan_only.reactor.yaml").write_text(DEFINITION, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "generator", "build", "defs", "--out", "benchapp"],
                   cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def planning(client: MongoClient[Doc], partitions: int) -> bool:
    """Whether every planner has opened its stream and saved its first position."""
    meta = client.app.reactgen_meta
    if partitions == 1:
        return meta.find_one({"_id": "planner:app", "resumeToken": {"$exists": True}}) is not None
    return meta.count_documents({"_id": {"$regex": f"^partition:app:\\d+/{partitions}$"},
                                 "owner": {"$ne": None},
                                 "planning.resumeToken": {"$exists": True}}) == partitions


def balanced(client: MongoClient[Doc], instances: int, partitions: int) -> bool:
    """Whether the partitions are spread over the instances (at most one apart)."""
    if partitions == 1:
        return True
    owners = [d["owner"] for d in client.app.reactgen_meta.find(
        {"_id": {"$regex": f"^partition:app:\\d+/{partitions}$"}, "owner": {"$ne": None}})]
    counts = [owners.count(f"bench-{i}") for i in range(instances)]
    return len(owners) == partitions and max(counts) - min(counts) <= 1


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_planner(client: MongoClient[Doc], partitions: int) -> dict[str, int]:
    """Tasks per planning instance: each task's partition (hashed by the server) and that
    partition's lease owner, checking that the task carries the lease's token."""
    if partitions == 1:
        return {"leader": client.app.items_tasks.count_documents({})}
    ids = {"$regex": f"^partition:app:\\d+/{partitions}$"}
    leases = {int(str(d["_id"]).rsplit(":", 1)[1].split("/")[0]): d
              for d in client.app.reactgen_meta.find({"_id": ids})}
    rows = client.app.items_tasks.aggregate([
        {"$group": {"_id": {"p": {"$abs": {"$mod": [{"$toHashedIndexKey": "$sourceId"},
                                                    partitions]}},
                            "token": "$plannerToken"}, "n": {"$sum": 1}}}])
    counts: dict[str, int] = {}
    for row in rows:
        lease = leases[int(row["_id"]["p"])]
        owner = str(lease["owner"]) if row["_id"]["token"] == lease["token"] else "stale token"
        counts[owner] = counts.get(owner, 0) + int(row["n"])
    return dict(sorted(counts.items()))


def run(instances: int, partitions: int, docs: int, ttl_ms: int) -> dict[str, Any]:
    """One measurement (the runtime logs are copied to ``/tmp`` if it fails)."""
    with tempfile.TemporaryDirectory(prefix="reactgen-bench-") as tmp, EmbeddedServer() as db:
        workdir = Path(tmp)
        build_app(workdir)
        client: MongoClient[Doc] = MongoClient(db.uri)
        processes = []
        for index in range(instances):
            env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}"}
            log = (workdir / f"runtime-{index}.log").open("wb")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "runtime", "serve", "--app", "benchapp", "--mongodb-uri",
                 db.uri, "--instance-id", f"bench-{index}", "--log-level", "WARNING",
                 "--planner-partitions", str(partitions), "--leader-ttl-ms", str(ttl_ms)],
                cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log))
        try:
            return measure(client, processes, instances, partitions, docs, db.pid)
        except SystemExit:
            kept = Path(tempfile.mkdtemp(prefix="planning-partitions-failed-"))
            for path in workdir.glob("runtime-*.log"):
                shutil.copy(path, kept)
            print(f"logs kept in {kept}", file=sys.stderr)
            raise
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def measure(client: MongoClient[Doc], processes: list[subprocess.Popen[bytes]],
            instances: int, partitions: int, docs: int, server: int | None) -> dict[str, Any]:
    """Wait until the planners plan, insert, and wait until every document has its task."""
    deadline = time.monotonic() + 60
    while not (planning(client, partitions) and balanced(client, instances, partitions)):
        if time.monotonic() > deadline:
            raise SystemExit("planners did not start; see runtime-*.log")
        time.sleep(0.05)
    items, tasks = client.app.items, client.app.items_tasks
    cpu_before = [cpu_seconds(p.pid) for p in processes], cpu_seconds(server)
    began = time.perf_counter()
    for start in range(0, docs, BATCH):
        items.insert_many([{"_id": i, "n": 1} for i in range(start, min(docs, start + BATCH))])
    written = time.perf_counter() - began
    while tasks.estimated_document_count() < docs or tasks.count_documents({}) < docs:
        if time.perf_counter() - began > 300:
            raise SystemExit("planning did not finish in 5 minutes")
        time.sleep(0.02)
    elapsed = time.perf_counter() - began
    runtime_cpu = [cpu_seconds(p.pid) - before for p, before in zip(processes, cpu_before[0],
                                                                     strict=True)]
    server_cpu = cpu_seconds(server) - cpu_before[1]
    spread = per_planner(client, partitions)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)
    return {"instances": instances, "partitions": partitions, "docs": docs,
            "written": written, "elapsed": elapsed, "rate": docs / elapsed,
            "spread": spread, "runtime_cpu": runtime_cpu, "server_cpu": server_cpu}


def main() -> int:
    """Run the setups interleaved and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--setups", nargs="+", default=["1:1", "3:3"],
                        help="instances:partitions, e.g. 1:1 3:3 1:3")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--leader-ttl-ms", type=int, default=10_000)
    args = parser.parse_args()
    setups = [tuple(int(x) for x in s.split(":")) for s in args.setups]
    best: dict[tuple[int, ...], dict[str, Any]] = {}
    for _ in range(args.rounds):
        for setup in setups:
            result = run(setup[0], setup[1], args.docs, args.leader_ttl_ms)
            if setup not in best or result["rate"] > best[setup]["rate"]:
                best[setup] = result
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"embedded server in memory; {args.docs} inserts in batches of {BATCH}; "
          f"best of {args.rounds} interleaved rounds; --leader-ttl-ms {args.leader_ttl_ms}\n")
    print("| planner instances | partitions | inserts done (s) | all tasks planned (s) | "
          "tasks planned/s | CPU s per 1,000 tasks: busiest runtime / all runtimes / server | "
          "tasks per planning instance |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for setup in setups:
        r = best[setup]
        spread = ", ".join(f"{name}: {n:,}" for name, n in r["spread"].items())
        per_k = 1000 / r["docs"]
        cpu = (f"{max(r['runtime_cpu']) * per_k:.2f} / {sum(r['runtime_cpu']) * per_k:.2f} / "
               f"{r['server_cpu'] * per_k:.2f}")
        print(f"| {r['instances']} | {r['partitions']} | {r['written']:.2f} | "
              f"{r['elapsed']:.2f} | {r['rate']:,.0f} | {cpu} | {spread} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
