"""Helpers shared by the runtime benchmarks (``runtime_throughput.py``, ``side_by_side.py``,
``scale.py``): the one-reactor benchmark app, runtime processes, handler start logs, the
latency and throughput phases, and process statistics from ``/proc``.

Workload (the same for every system): one reactive task / reactor on collection ``items``
watching field ``n``, a no-op handler that appends ``"<doc id> <unix time>"`` to a per-process
file when it starts, debounce 0.

Measurements:

* **latency**: documents inserted one at a time, each after the previous one's handler started;
  insert acknowledged -> handler started (same machine, same clock);
* **throughput**: ``docs`` documents inserted in batches of 1,000; from the first batch until
  every handler started and every task is ``completed`` (the completion count is only polled
  once all handlers started, so the polling adds almost nothing to the server's load);
* **server CPU**: utime + stime of the embedded server process (``/proc/<pid>/stat``) at the
  start and at the end of the throughput phase;
* **commands**: counted by each process (reactgen: ``REACTGEN_COMMAND_STATS``; mongodash: the
  Node driver's command monitoring) for its whole life, divided by the tasks completed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
BATCH = 1000

Client = MongoClient[dict[str, Any]]


# ------------------------------------------------------------------ statistics


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    """Median (``nan`` for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (from ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in KiB (missing: process gone)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class RssSampler:
    """Samples ``VmRSS`` of some processes in a background thread; keeps the maximum."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.max_kib: dict[int, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                rss = memory_kib(pid).get("VmRSS", 0)
                self.max_kib[pid] = max(self.max_kib[pid], rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def server_counters(client: Client) -> dict[str, int]:
    """``serverStatus().metrics.queryExecutor`` (``scanned``: index keys read;
    ``scannedObjects``: documents fetched); empty if the server does not report them."""
    status = client.admin.command("serverStatus")
    executor = status.get("metrics", {}).get("queryExecutor", {})
    return {k: int(v) for k, v in executor.items() if isinstance(v, int)}


def machine() -> str:
    """One line describing this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.1f} GiB, Linux "
            f"{platform.release()}, CPython {platform.python_version()}; load average at start "
            f"{load[0]:.2f}")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(uri: str, database: str) -> str:
    """``uri`` with ``database`` as its default database (path)."""
    head, _, query = uri.partition("?")
    return f"{head.rstrip('/')}/{database}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop the child processes."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every process, wait for all, SIGKILL those that do not exit in time."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_commands(paths: list[Path]) -> dict[str, int]:
    """Sum of the per-process command counts (keys starting with ``_`` are notes, skipped)."""
    commands: dict[str, int] = {}
    for path in paths:
        if not path.exists():
            raise SystemExit(f"{path} was not written (the process did not stop cleanly)")
        for name, count in json.loads(path.read_text()).items():
            if not name.startswith("_"):
                commands[name] = commands.get(name, 0) + int(count)
    return dict(sorted(commands.items(), key=lambda item: -item[1]))


def read_notes(paths: list[Path]) -> dict[str, int]:
    """The notes among the per-process counts (keys starting with ``_``, e.g. mongodash's
    ``_failed.<command>``), summed."""
    notes: dict[str, int] = {}
    for path in paths:
        if path.exists():
            for name, count in json.loads(path.read_text()).items():
                if name.startswith("_"):
                    notes[name] = notes.get(name, 0) + int(count)
    return notes


# ------------------------------------------------------------------ handler start logs


class StartsLog:
    """Reads the handler start files incrementally: doc id -> (start time, process index)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._offsets = [0] * len(paths)
        self._partial = [b""] * len(paths)
        self.starts: dict[int, tuple[float, int]] = {}

    def poll(self) -> int:
        """Read what was appended since the last call; return how many tasks started."""
        for index, path in enumerate(self.paths):
            try:
                with path.open("rb") as handle:
                    handle.seek(self._offsets[index])
                    data = handle.read()
            except FileNotFoundError:
                continue
            self._offsets[index] += len(data)
            data = self._partial[index] + data
            lines = data.split(b"\n")
            self._partial[index] = lines.pop()
            for line in lines:
                doc_id, stamp = line.split()
                key = int(float(doc_id))
                if key >= 1:  # document -1 only wakes the planner up
                    self.starts.setdefault(key, (float(stamp), index))
        return len(self.starts)

    def per_process(self, count: int, first_id: int = 1) -> list[int]:
        """Tasks started by each process (doc ids >= ``first_id``)."""
        return [sum(1 for doc_id, (_, i) in self.starts.items() if i == k and doc_id >= first_id)
                for k in range(count)]


# ------------------------------------------------------------------ the phases


@dataclass
class Measurement:
    """One run of one system with some number of processes."""

    system: str
    instances: int
    docs: int
    samples: int
    elapsed: float = 0.0
    server_cpu: float = 0.0
    #: CPU seconds of the system's own processes (runtime instances, Node processes) over the
    #: throughput phase, all of them together.
    worker_cpu: float = 0.0
    #: serverStatus().metrics.queryExecutor deltas over the throughput phase (until every
    #: handler started, before the completion polls): index keys and documents examined.
    examined: dict[str, int] = field(default_factory=dict)
    #: Server CPU seconds over the latency phase (documents one at a time: low load).
    latency_server_cpu: float = 0.0
    latencies: dict[int, list[float]] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    per_instance: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Tasks completed in the whole run (latency samples + throughput documents)."""
        return self.samples + self.docs

    @property
    def rate(self) -> float:
        """Throughput-phase tasks per second."""
        return self.docs / self.elapsed if self.elapsed else float("nan")

    @property
    def per_task(self) -> float:
        """Database commands (all processes, whole run) per completed task."""
        return sum(self.commands.values()) / self.total

    @property
    def cpu_per_1000(self) -> float:
        """Server CPU seconds per 1,000 tasks in the throughput phase."""
        return self.server_cpu / self.docs * 1000

    @property
    def low_load_cpu_per_1000(self) -> float:
        """Server CPU seconds per 1,000 tasks in the latency phase (one task at a time)."""
        return self.latency_server_cpu / self.samples * 1000 if self.samples else float("nan")

    @property
    def worker_cpu_per_1000(self) -> float:
        """CPU seconds of the system's processes per 1,000 tasks in the throughput phase."""
        return self.worker_cpu / self.docs * 1000

    def examined_per_task(self, key: str) -> float:
        """Keys (``scanned``) or documents (``scannedObjects``) examined per throughput task."""
        return self.examined[key] / self.docs if key in self.examined else float("nan")

    @property
    def all_latencies(self) -> list[float]:
        """Latency samples of every process."""
        return [v for values in self.latencies.values() for v in values]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for ``--json``)."""
        every = self.all_latencies
        return {"system": self.system, "instances": self.instances, "docs": self.docs,
                "samples": self.samples, "elapsed_s": round(self.elapsed, 3),
                "tasks_per_s": round(self.rate, 1),
                "latency_p50_ms": round(percentile(every, 0.5), 2),
                "latency_p99_ms": round(percentile(every, 0.99), 2),
                "commands_per_task": round(self.per_task, 3),
                "server_cpu_s": round(self.server_cpu, 3),
                "server_cpu_s_per_1000": round(self.cpu_per_1000, 3),
                "worker_cpu_s_per_1000": round(self.worker_cpu_per_1000, 3),
                "low_load_server_cpu_s_per_1000": round(self.low_load_cpu_per_1000, 3),
                "keys_examined_per_task": round(self.examined_per_task("scanned"), 2),
                "docs_examined_per_task": round(self.examined_per_task("scannedObjects"), 2),
                "commands": self.commands, "per_instance": self.per_instance}


def measure_latency(client: Client, starts: StartsLog, samples: int, result: Measurement,
                    timeout: float = 30.0, server_pid: int | None = None) -> None:
    """Insert ``samples`` documents (ids 1..samples) one by one, each after the previous one's
    handler started; record acknowledgement -> start in ms, per process, and the server's CPU
    seconds over the phase (``server_pid``)."""
    items = client.app.items
    cpu_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    for doc_id in range(1, samples + 1):
        items.insert_one({"_id": doc_id, "n": 1})
        acked = time.time()
        deadline = time.monotonic() + timeout
        while doc_id not in starts.starts:
            if time.monotonic() > deadline:
                raise SystemExit(f"{result.system}: task {doc_id} did not start in {timeout} s")
            time.sleep(0.0005)
            starts.poll()
        stamp, index = starts.starts[doc_id]
        result.latencies.setdefault(index, []).append((stamp - acked) * 1000)
    if server_pid is not None:
        result.latency_server_cpu = cpu_seconds(server_pid) - cpu_before


def measure_throughput(client: Client, starts: StartsLog, server_pid: int, result: Measurement,
                       timeout: float = 600.0, worker_pids: list[int] | None = None) -> None:
    """Insert ``result.docs`` documents (ids after the samples) in batches of 1,000 and wait
    until all their tasks completed; record the elapsed time and the CPU seconds of the server
    and of the system's processes (``worker_pids``)."""
    items = client.app.items
    tasks = client.app.items_tasks
    base = result.samples + 1
    workers = list(worker_pids or [])
    counters_before = server_counters(client)
    cpu_before = cpu_seconds(server_pid)
    workers_before = sum(cpu_seconds(pid) for pid in workers)
    began = time.perf_counter()
    for start in range(base, base + result.docs, BATCH):
        items.insert_many([{"_id": i, "n": 1} for i in range(start, min(base + result.docs,
                                                                         start + BATCH))])
    while starts.poll() < result.total:
        if time.perf_counter() - began > timeout:
            raise SystemExit(f"{result.system}: only {len(starts.starts)} of {result.total} "
                             f"tasks started in {timeout} s")
        time.sleep(0.02)
    counters_after = server_counters(client)
    result.examined = {k: v - counters_before[k] for k, v in counters_after.items()
                       if k in counters_before}
    while tasks.count_documents({"status": "completed"}) < result.total:
        if time.perf_counter() - began > timeout:
            raise SystemExit(f"{result.system}: throughput phase did not finish")
        time.sleep(0.01)
    result.elapsed = time.perf_counter() - began
    result.server_cpu = cpu_seconds(server_pid) - cpu_before
    result.worker_cpu = sum(cpu_seconds(pid) for pid in workers) - workers_before


# ------------------------------------------------------------------ reactgen processes


def build_app(workdir: Path) -> None:
    """Generate the benchmark app into ``workdir/benchapp`` with the no-op handler."""
    (workdir / "defs").mkdir(exist_ok=True)
    (workdir / "defs" / "noop.reactor.yaml").write_text(DEFINITION, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "generator", "build", "defs", "--out", "benchapp"],
                   cwd=workdir, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    (workdir / "benchapp" / "handlers" / "noop.py").write_text(HANDLER, encoding="utf-8")


def start_reactgen(workdir: Path, uri: str, count: int, *, concurrency: int = 10,
                   prefix: str = "", extra_args: tuple[str, ...] = (),
                   wait_for_planner: bool = True) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` ``runtime serve`` processes (files ``<prefix>starts-<i>.txt``,
    ``<prefix>commands-<i>.json``, ``<prefix>runtime-<i>.log`` in ``workdir``) and wait until
    one of them plans."""
    processes = []
    for index in range(count):
        env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}",
               "BENCH_STARTS": str(workdir / f"{prefix}starts-{index}.txt"),
               "REACTGEN_COMMAND_STATS": str(workdir / f"{prefix}commands-{index}.json")}
        log = (workdir / f"{prefix}runtime-{index}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--app", "benchapp", "--mongodb-uri", uri,
             "--instance-id", f"bench-{index}", "--concurrency", str(concurrency),
             "--log-level", "WARNING", *extra_args],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log))
    if wait_for_planner:
        client: Client = MongoClient(uri)
        deadline = time.monotonic() + 60
        while client.app.reactgen_meta.find_one({"_id": "planner:app"}) is None:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                stop_processes(processes)
                raise SystemExit(f"reactgen did not start planning; see {workdir}/*.log")
            # A change for the planner to see (document -1 is not part of any measurement).
            client.app.items.insert_one({"_id": -1, "n": 0})
            client.app.items.delete_one({"_id": -1})
            time.sleep(0.05)
        client.close()
    return processes


def scrape_metrics(port: int) -> dict[str, float]:
    """Prometheus text from ``127.0.0.1:port/metrics`` as ``{sample name{labels}: value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; SystemExit after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
