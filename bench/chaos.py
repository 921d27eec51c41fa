"""Fault injection: runtime instances and the embedded server killed and paused under a writer.

Usage: python bench/chaos.py [--instances 3] [--duration 120] [--seed N] [--json] [--keep]
                             [--leader-ttl-ms MS] [--task-lease-ms MS] [--rate 25] ...

It starts the embedded server with ``--dbpath`` (on a port that survives restarts), builds a
one-reactor app with the real ``reactgen build`` and starts ``--instances`` ``runtime serve``
processes. The reactor ``versions`` watches field ``v`` of collection ``docs``; its handler
reads the document (late-binding check), inserts one ``runs`` document ``{source, v, instance,
at}``, "works" for a random 0..``--work-ms`` ms and then sets ``finishedAt`` on it (no
idempotency: duplicates are what we measure).

A writer thread inserts documents ``{_id, v: 1}`` and increments ``v`` of existing ones
(retryable writes off). It remembers the last acknowledged ``v`` of every document; when the
outcome of a write is unknown (the server died under it), it re-reads the document after
reconnecting to learn its real ``v``.

For ``--duration`` seconds the chaos loop runs rounds of four faults in a seeded random order,
with random pauses (``--interval``) between them; every fault is finished (and its effect
measured, with a deadline) before the next starts, and the first round is always completed:

* ``kill``: SIGKILL a random instance (if it held the lease this is also a failover), start a
  replacement;
* ``kill-leader``: SIGKILL the instance holding the leader lease, start a replacement;
* ``pause-leader``: SIGSTOP the leader until another instance holds the lease and the paused
  one's own lease has run out (plus ``--pause-extra`` s), then SIGCONT: it must log
  ``leader.lost`` (step down);
* ``kill-server``: SIGKILL the embedded server, leave it down for a moment, restart it on the
  same dbpath and port.

**Failover** is measured from the signal (SIGKILL or SIGSTOP of the lease owner, the bench's
clock) to ``acquiredAt`` of the next owner's lease document (written with the server's
``$$NOW``; server and bench share this machine's clock). **Server recovery** is the restart
(the new server printed its URI) until the leader lease is written again (``renewedAt``).

Then the writer stops, instances that died are replaced, and the bench waits (at most
``--quiesce-timeout`` s) until no task is pending or running and every document's final ``v``
was executed. It prints a table (or ``--json``) and exits 1 if anything was lost or stuck, a
runtime crashed, a failover or step-down did not happen, an acknowledged write was lost, or
the failover median exceeds ``--max-failover-median`` (5 s).

Definitions: **lost** = a document whose final ``v`` has no finished execution; **stuck** = a
task still ``pending``/``processing``/``processing_dirty`` at the end; **duplicate executions**
= every execution of a (document, ``v``) started beyond its first (also given: beyond its first
finished one); **crash** = a runtime process that exited
without being told to (or exited non-zero on the final SIGTERM), or whose log contains a
Python traceback (a process the bench SIGKILLed is not a crash by itself).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "runtime")]

from runtime_harness import App, RuntimeProcess, build_app  # noqa: E402
from support import wait_until  # noqa: E402

from runtime.embedded.process import EmbeddedServer  # noqa: E402
from runtime.settings import RuntimeSettings  # noqa: E402

Doc = dict[str, Any]
T = TypeVar("T")

DATABASE = "chaos"
REACTOR = "versions"
FAULTS = ("kill", "kill-leader", "pause-leader", "kill-server")
ACTIVE = ("pending", "processing", "processing_dirty")
START_TIMEOUT_S = 60.0
STEPDOWN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
MAX_CRASHES = 10
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"

DEFINITION = f"""\
name: {REACTOR}
collection: docs
schema:
  type: object
  title: VersionedDoc
  properties:
    _id: {{type: integer}}
    v: {{type: integer}}
trigger:
  watch: [v]
policies:
  retry: {{strategy: fixed, interval: 300ms, maxAttempts: null}}
"""

HANDLER = '''\
"""Records every execution in ``runs`` (no idempotency: duplicates are measured)."""

from __future__ import annotations

import asyncio
import datetime
import os
import random

from {package}.reactors.versions import Context

INSTANCE = os.environ.get("CHAOS_INSTANCE", "?")
WORK_MS = float(os.environ.get("CHAOS_WORK_MS", "0"))


async def handle(ctx: Context) -> None:
    doc = await ctx.get_document()
    runs = ctx.database["runs"]
    run = await runs.insert_one({"source": doc.id, "v": doc.v, "instance": INSTANCE,
                                 "at": datetime.datetime.now(datetime.UTC)})
    if WORK_MS > 0:
        await asyncio.sleep(random.uniform(0, WORK_MS) / 1000)
    await runs.update_one({"_id": run.inserted_id},
                          {"$set": {"finishedAt": datetime.datetime.now(datetime.UTC)}})
'''


def poll(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T | None:
    """``wait_until`` that returns ``None`` at the deadline instead of failing (a missed
    deadline is a result here, not an error). Database errors count as "not yet"."""

    def attempt() -> T | None:
        try:
            return predicate()
        except PyMongoError:
            return None

    try:
        return wait_until(attempt, timeout=timeout, interval=interval)
    except AssertionError:
        return None


def utc_seconds(value: Any) -> float | None:
    """A BSON date (naive UTC) as a Unix time, or ``None``."""
    if not isinstance(value, datetime.datetime):
        return None
    return value.replace(tzinfo=datetime.UTC).timestamp()


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


# ---------------------------------------------------------------------------------- writer


class Writer(threading.Thread):
    """Inserts documents and increments ``v``, remembering the acknowledged final ``v``."""

    INSERT_SHARE = 0.3
    HOT_SHARE = 0.5
    HOT_DOCS = 10

    def __init__(self, uri: str, rate: float, rng: random.Random) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        # Retryable writes off: a retried $inc after a server restart could apply twice; the
        # writer resolves unknown outcomes itself by re-reading.
        self.client: MongoClient[Doc] = MongoClient(
            uri, retryWrites=False, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000)
        self.docs = self.client[DATABASE].docs
        self.rate = rate
        self.rng = rng
        self.acknowledged: dict[int, int] = {}
        self.ids: list[int] = []
        self.inserts = 0
        self.updates = 0
        self.unknown = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by the bench
            self.error = exc

    def _write(self) -> None:
        next_id = 1
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self.halt.is_set():
            if not self.ids or self.rng.random() < self.INSERT_SHARE:
                doc_id, next_id = next_id, next_id + 1
                try:
                    self.docs.insert_one({"_id": doc_id, "v": 1})
                    self.acknowledged[doc_id] = 1
                    self.ids.append(doc_id)
                    self.inserts += 1
                except PyMongoError:
                    self._learn(doc_id)
            else:
                pool = self.ids[-self.HOT_DOCS:] if self.rng.random() < self.HOT_SHARE \
                    else self.ids
                doc_id = self.rng.choice(pool)
                try:
                    self.docs.update_one({"_id": doc_id}, {"$inc": {"v": 1}})
                    self.acknowledged[doc_id] += 1
                    self.updates += 1
                except PyMongoError:
                    self._learn(doc_id)
            due += interval
            # Pacing of the write rate (not synchronisation); never catch up in bursts.
            due = max(due, time.monotonic() - interval)
            self.halt.wait(max(0.0, due - time.monotonic()))

    def _learn(self, doc_id: int) -> None:
        """The write's outcome is unknown: read the document's real state once the server
        answers again (it is restarted before the writer is stopped)."""
        self.unknown += 1
        while True:
            try:
                doc = self.docs.find_one({"_id": doc_id})
            except PyMongoError:
                # Server selection itself waits up to a second; other errors back off here.
                self.halt.wait(0.05)
                continue
            if doc is None:
                self.acknowledged.pop(doc_id, None)
            else:
                if doc_id not in self.acknowledged:
                    self.ids.append(doc_id)
                self.acknowledged[doc_id] = int(doc["v"])
            return

    def stop(self) -> None:
        self.halt.set()
        self.join(STOP_TIMEOUT_S)
        self.client.close()


# ---------------------------------------------------------------------------------- cluster


@dataclass
class Failover:
    kind: str
    old: str
    new: str | None
    seconds: float | None


@dataclass
class Report:
    """Everything the chaos phase observed."""

    faults: Counter[str] = field(default_factory=Counter)
    failovers: list[Failover] = field(default_factory=list)
    stepdowns: list[float | None] = field(default_factory=list)
    server_recoveries: list[float | None] = field(default_factory=list)
    crashes: dict[str, list[str]] = field(default_factory=dict)
    server_crashes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leader_kills_by_random: int = 0


class Cluster:
    """The server and the runtime instances, and the faults applied to them."""

    def __init__(self, app: App, server: EmbeddedServer, runtime_args: list[str],
                 work_ms: float, report: Report, began: float, quiet: bool) -> None:
        self.app = app
        self.server = server
        self.runtime_args = runtime_args
        self.work_ms = work_ms
        self.report = report
        self.began = began
        self.quiet = quiet
        self.client: MongoClient[Doc] = MongoClient(server.uri, serverSelectionTimeoutMS=2000)
        self.db: Database[Doc] = self.client[DATABASE]
        self.processes: dict[str, RuntimeProcess] = {}
        self.live: list[str] = []
        self.server_killed = False
        self.counter = 0

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.began:7.1f}s] {message}", file=sys.stderr, flush=True)

    # -- instances

    def start_instance(self) -> str:
        self.counter += 1
        name = f"i{self.counter}"
        process = RuntimeProcess(self.app, self.server.uri, DATABASE, name,
                                 [*self.runtime_args, "--log-level", "INFO"],
                                 {"CHAOS_INSTANCE": name, "CHAOS_WORK_MS": str(self.work_ms)})
        self.processes[name] = process
        self.live.append(name)
        process.start()
        try:
            process.wait_started(START_TIMEOUT_S)
        except AssertionError as exc:
            if process.process is not None and process.process.poll() is not None:
                self.reap()
            else:
                self.report.problems.append(f"{name} did not start within {START_TIMEOUT_S:g} s")
            self.say(f"{name} failed to start: {str(exc).splitlines()[0]}")
        return name

    def reap(self) -> None:
        """Instances that exited on their own are crashes; replace them."""
        for name in list(self.live):
            process = self.processes[name].process
            if process is not None and process.poll() is not None:
                self.live.remove(name)
                self.crash(name, f"exited on its own with status {process.returncode}")
                self.say(f"{name} CRASHED (status {process.returncode}); replacing it")
                if len(self.report.crashes) >= MAX_CRASHES:
                    raise RuntimeError(f"{MAX_CRASHES} runtime crashes, giving up; last log:\n"
                                       f"{self.processes[name].log()[-4000:]}")
                self.start_instance()

    def crash(self, name: str, reason: str) -> None:
        self.report.crashes.setdefault(name, []).append(reason)

    def kill(self, name: str) -> None:
        self.live.remove(name)
        self.processes[name].kill()

    # -- leadership

    def lease(self) -> Doc | None:
        """The leader lease if it is currently valid (server clock)."""
        return self.db.reactgen_meta.find_one(
            {"_id": "leader", "$expr": {"$gt": ["$expiresAt", "$$NOW"]}})

    def live_leader(self, timeout: float) -> Doc | None:
        """Wait for a valid lease held by a live instance."""

        def held() -> Doc | None:
            lease = self.lease()
            return lease if lease is not None and lease.get("owner") in self.live else None

        lease = poll(held, timeout)
        if lease is None:
            self.report.problems.append(
                f"no live leader within {timeout:g} s (at {time.time() - self.began:.1f} s)")
            self.say("no live leader!")
        return lease

    def await_failover(self, kind: str, old: Doc, signalled: float, timeout: float) -> None:
        """Wait for another owner of the lease and record the failover time."""
        owner = old.get("owner")

        def taken() -> Doc | None:
            lease = self.db.reactgen_meta.find_one({"_id": "leader"})
            return lease if lease is not None and lease.get("owner") not in (owner, None) \
                else None

        lease = poll(taken, timeout)
        if lease is None:
            self.report.failovers.append(Failover(kind, str(owner), None, None))
            self.report.problems.append(f"{kind}: no new leader within {timeout:g} s of "
                                        f"{owner}'s signal")
            self.say(f"{kind} {owner}: NO new leader within {timeout:g} s")
            return
        acquired = utc_seconds(lease.get("acquiredAt"))
        seconds = (acquired if acquired is not None else time.time()) - signalled
        self.report.failovers.append(Failover(kind, str(owner), str(lease["owner"]), seconds))
        self.say(f"{kind} {owner}: {lease['owner']} leads after {seconds:.2f} s "
                 f"(token {lease.get('token')})")

    # -- faults

    def fault_kill(self, timeout: float, rng: random.Random) -> None:
        victim = rng.choice(self.live)
        lease = self.lease()
        was_leader = lease is not None and lease.get("owner") == victim
        signalled = time.time()
        self.kill(victim)
        self.say(f"kill {victim}{' (the leader)' if was_leader else ''}")
        if was_leader and lease is not None:
            self.report.leader_kills_by_random += 1
            self.await_failover("kill", lease, signalled, timeout)
        self.start_instance()

    def fault_kill_leader(self, timeout: float) -> None:
        lease = self.live_leader(timeout)
        if lease is None:
            return
        signalled = time.time()
        self.kill(str(lease["owner"]))
        self.await_failover("kill-leader", lease, signalled, timeout)
        self.start_instance()

    def fault_pause_leader(self, timeout: float, extra: float) -> None:
        lease = self.live_leader(timeout)
        if lease is None:
            return
        name = str(lease["owner"])
        process = self.processes[name]
        lost = r"(?m)^(\S+ \S+) .*event=leader\.lost instance=" + re.escape(name) + r"\b"
        losses_before = len(re.findall(lost, process.log()))
        renewed, expires = utc_seconds(lease.get("renewedAt")), utc_seconds(lease.get("expiresAt"))
        signalled = time.time()
        process.signal(signal.SIGSTOP)
        self.live.remove(name)  # not a candidate for other faults while paused
        try:
            self.await_failover("pause-leader", lease, signalled, timeout)
            # Paused beyond the lease it last obtained (plus extra): its handlers' and
            # planner's writes after SIGCONT are what fencing must make harmless.
            until = signalled + (expires - renewed) if expires is not None and \
                renewed is not None else (expires or signalled)
            time.sleep(max(0.0, until + extra - time.time()))  # the fault's duration
        finally:
            resumed = time.time()
            process.signal(signal.SIGCONT)
            self.live.append(name)
        stepped = poll(lambda: re.findall(lost, process.log())[losses_before:] or None,
                       STEPDOWN_TIMEOUT_S, interval=0.01)
        if stepped:
            # The log line's own time (local clock, like the bench's).
            logged = datetime.datetime.strptime(stepped[0], LOG_TIME).timestamp()
            seconds = logged - resumed
            self.report.stepdowns.append(seconds)
            self.say(f"pause {name}: resumed after {resumed - signalled:.1f} s, logged "
                     f"leader.lost {seconds:.3f} s later")
        else:
            self.report.stepdowns.append(None)
            self.report.problems.append(
                f"pause-leader: {name} did not log leader.lost within {STEPDOWN_TIMEOUT_S:g} s "
                "of SIGCONT")
            self.say(f"pause {name}: NO step-down after SIGCONT")

    def fault_kill_server(self, timeout: float, downtime: float) -> None:
        signalled = time.time()
        self.server_killed = True
        self.server.kill()
        time.sleep(downtime)  # the outage (part of the schedule)
        self.server.restart()
        self.server_killed = False
        restarted = time.time()

        def renewed() -> Doc | None:
            lease = self.lease()
            if lease is None:
                return None
            # Written after the kill = written after the restart (nothing answered between).
            written = utc_seconds(lease.get("renewedAt")) or utc_seconds(lease.get("acquiredAt"))
            return lease if written is not None and written > signalled else None

        lease = poll(renewed, timeout)
        if lease is None:
            self.report.server_recoveries.append(None)
            self.report.problems.append(
                f"kill-server: no leader lease written within {timeout:g} s of the restart")
            self.say("kill-server: NO leader after the restart")
            return
        written = utc_seconds(lease.get("renewedAt")) or time.time()
        self.report.server_recoveries.append(max(0.0, written - restarted))
        self.say(f"kill-server: down {restarted - signalled:.1f} s; lease written by "
                 f"{lease.get('owner')} {written - restarted:.2f} s after the restart")

    def check_server(self) -> None:
        if not self.server_killed and not self.server.running:
            status = self.server.returncode
            self.report.server_crashes.append(f"exited on its own with status {status}")
            self.say(f"server CRASHED (status {status}); restarting it")
            self.server.restart()

    def idle(self, seconds: float) -> None:
        """The pause between faults, watching for crashes meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self.check_server()
            self.reap()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))

    def shutdown(self) -> None:
        """SIGTERM every live instance; a non-zero status is a crash."""
        for name in list(self.live):
            process = self.processes[name]
            try:
                status = process.stop(STOP_TIMEOUT_S)
            except AssertionError:
                self.crash(name, f"did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM")
                continue
            finally:
                self.live.remove(name)
            if status != 0:
                self.crash(name, f"exited with status {status} on SIGTERM")

    def scan_logs(self) -> None:
        """Any traceback in any runtime log is a crash."""
        for name, process in self.processes.items():
            text = process.log()
            count = text.count("Traceback (most recent call last)")
            if count:
                start = text.index("Traceback (most recent call last)")
                last = next((line for line in text[start:].splitlines()[1:]
                             if line and not line.startswith((" ", "\t"))), "?")
                self.crash(name, f"{count} traceback(s) in its log, first: {last}")

    def abort(self) -> None:
        """Leave nothing running (error paths)."""
        for process in self.processes.values():
            if process.process is not None and process.process.poll() is None:
                process.signal(signal.SIGCONT)
                process.kill()
        self.client.close()


# ---------------------------------------------------------------------------------- analysis


@dataclass
class Outcome:
    documents: int
    executions: int
    finished: int
    lost: list[int]
    stuck: list[Doc]
    failed: int
    duplicates: int
    duplicates_finished: int
    duplicate_examples: list[Doc]
    missing_writes: list[int]

    @property
    def settled(self) -> bool:
        return not self.lost and not self.stuck


def observe(db: Database[Doc], acknowledged: dict[int, int]) -> Outcome:
    """Compare the documents' final versions with the recorded executions."""
    final = {int(d["_id"]): int(d["v"]) for d in db.docs.find({}, {"v": 1})}
    runs: Counter[tuple[int, int]] = Counter()
    finished: Counter[tuple[int, int]] = Counter()
    by: dict[tuple[int, int], list[str]] = {}
    for run in db.runs.find({}, {"source": 1, "v": 1, "instance": 1, "finishedAt": 1}):
        key = (int(run["source"]), int(run["v"]))
        runs[key] += 1
        done = "finishedAt" in run
        finished[key] += done
        by.setdefault(key, []).append(f"{run.get('instance')}{'' if done else ' (unfinished)'}")
    tasks = list(db.docs_tasks.find({}, {"sourceId": 1, "status": 1, "attempts": 1,
                                         "lastError": 1}))
    return Outcome(
        documents=len(final),
        executions=sum(runs.values()),
        finished=sum(finished.values()),
        lost=sorted(doc_id for doc_id, v in final.items() if finished[(doc_id, v)] == 0),
        stuck=[t for t in tasks if t.get("status") in ACTIVE],
        failed=sum(1 for t in tasks if t.get("status") == "failed"),
        duplicates=sum(n - 1 for n in runs.values() if n > 1),
        duplicates_finished=sum(n - 1 for n in finished.values() if n > 1),
        duplicate_examples=[{"source": key[0], "v": key[1], "runs": by[key]}
                            for key, n in runs.items() if n > 1][:10],
        missing_writes=sorted(doc_id for doc_id, v in acknowledged.items()
                              if final.get(doc_id, 0) < v))


def summarise(values: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(values) if values else None,
            "max": max(values) if values else None}


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fault injection: kill/pause runtime instances and the embedded server "
                    "under a writer; report lost, stuck, duplicate executions, failovers.")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds of faults (the first round of faults always completes)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work directory (must not exist or be empty; kept)")
    parser.add_argument("--rate", type=float, default=25.0, help="writes per second")
    parser.add_argument("--work-ms", type=float, default=50.0,
                        help="handlers work (sleep) a random 0..N ms between recording the "
                             "start and the end of the execution")
    parser.add_argument("--interval", type=float, nargs=2, default=[2.0, 5.0],
                        metavar=("MIN", "MAX"), help="seconds between faults")
    parser.add_argument("--pause-extra", type=float, default=1.0,
                        help="seconds a paused leader stays stopped beyond its lease")
    parser.add_argument("--server-downtime", type=float, nargs=2, default=[0.2, 1.5],
                        metavar=("MIN", "MAX"), help="seconds the killed server stays down")
    parser.add_argument("--leader-ttl-ms", type=int, default=None,
                        help="passed to runtime serve (default: the runtime's)")
    parser.add_argument("--task-lease-ms", type=int, default=None,
                        help="passed to runtime serve (default: the runtime's)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="passed to runtime serve (default: the runtime's)")
    parser.add_argument("--fault-timeout", type=float, default=60.0,
                        help="deadline for a failover or recovery after a fault")
    parser.add_argument("--quiesce-timeout", type=float, default=120.0)
    parser.add_argument("--max-failover-median", type=float, default=5.0)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The whole run; returns the summary."""
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    runtime_args: list[str] = []
    for flag, value in (("--leader-ttl-ms", args.leader_ttl_ms),
                        ("--task-lease-ms", args.task_lease_ms),
                        ("--concurrency", args.concurrency)):
        if value is not None:
            runtime_args += [flag, str(value)]
    app = build_app(workdir, {REACTOR: DEFINITION}, {REACTOR: HANDLER})
    server = EmbeddedServer(dbpath=workdir / "db", log_path=workdir / "server.log")
    server.start()
    report = Report()
    began = time.time()
    cluster = Cluster(app, server, runtime_args, args.work_ms, report, began, args.quiet)
    writer: Writer | None = None
    try:
        cluster.say(f"server {server.uri} (dbpath {workdir / 'db'}); seed {seed}")
        for _ in range(args.instances):
            cluster.start_instance()
        first = cluster.live_leader(args.fault_timeout)
        ttl_ms = None
        if first is not None:
            expires, renewed = utc_seconds(first.get("expiresAt")), \
                utc_seconds(first.get("renewedAt"))
            if expires is not None and renewed is not None:
                ttl_ms = round((expires - renewed) * 1000)
        writer = Writer(server.uri, args.rate, random.Random(rng.random()))
        writer.start()
        chaos_began = time.time()
        rounds = 0
        done = False
        while not done:
            rounds += 1
            order = list(FAULTS)
            rng.shuffle(order)
            for fault in order:
                cluster.idle(rng.uniform(*args.interval))
                if rounds > 1 and time.time() - chaos_began >= args.duration:
                    done = True
                    break
                report.faults[fault] += 1
                if fault == "kill":
                    cluster.fault_kill(args.fault_timeout, rng)
                elif fault == "kill-leader":
                    cluster.fault_kill_leader(args.fault_timeout)
                elif fault == "pause-leader":
                    cluster.fault_pause_leader(args.fault_timeout, args.pause_extra)
                else:
                    cluster.fault_kill_server(args.fault_timeout,
                                              rng.uniform(*args.server_downtime))
                cluster.check_server()
                cluster.reap()
        chaos_seconds = time.time() - chaos_began
        cluster.say(f"chaos over after {chaos_seconds:.1f} s; stopping the writer, waiting "
                    "for quiescence")
        writer.stop()
        if writer.is_alive() or writer.error is not None:
            raise RuntimeError(f"the writer failed: {writer.error!r}")
        cluster.check_server()
        cluster.reap()
        while len(cluster.live) < args.instances:
            cluster.start_instance()
        quiesce_began = time.time()
        acknowledged = dict(writer.acknowledged)

        def quiet() -> Outcome | None:
            outcome = observe(cluster.db, acknowledged)
            return outcome if outcome.settled else None

        settled = poll(quiet, args.quiesce_timeout, interval=0.5)
        quiesce_seconds = time.time() - quiesce_began
        outcome = settled or observe(cluster.db, acknowledged)
        cluster.say(f"quiesced in {quiesce_seconds:.1f} s" if settled else
                    f"NOT quiesced within {args.quiesce_timeout:g} s")
        cluster.reap()
        cluster.shutdown()
        cluster.scan_logs()
        status = server.stop()
        if status != 0:
            report.server_crashes.append(f"exited with status {status} on SIGTERM")
        failover_times = [f.seconds for f in report.failovers if f.seconds is not None]
        recoveries = [s for s in report.server_recoveries if s is not None]
        stepdowns = [s for s in report.stepdowns if s is not None]
        defaults = RuntimeSettings()
        summary: dict[str, Any] = {
            "settings": {
                "instances": args.instances, "duration_s": args.duration, "seed": seed,
                "leader_ttl_ms": args.leader_ttl_ms or defaults.leader_ttl_ms,
                "leader_ttl_ms_observed": ttl_ms,
                "task_lease_ms": args.task_lease_ms or defaults.task_lease_ms,
                "runtime_defaults": [name for name, value in (
                    ("leader_ttl_ms", args.leader_ttl_ms), ("task_lease_ms", args.task_lease_ms))
                    if value is None],
                "rate": args.rate,
                "work_ms": args.work_ms, "interval_s": args.interval,
            },
            "chaos_s": round(chaos_seconds, 1),
            "faults": dict(report.faults),
            "leader_kills_by_random_kill": report.leader_kills_by_random,
            "documents": outcome.documents,
            "inserts": writer.inserts,
            "updates": writer.updates,
            "unknown_outcomes": writer.unknown,
            "acknowledged_writes_lost": len(outcome.missing_writes),
            "executions": outcome.executions,
            "executions_finished": outcome.finished,
            "lost": len(outcome.lost),
            "lost_ids": outcome.lost[:20],
            "stuck": len(outcome.stuck),
            "stuck_tasks": [{k: v for k, v in t.items() if k != "_id"}
                            for t in outcome.stuck[:20]],
            "failed_tasks": outcome.failed,
            "duplicates": outcome.duplicates,
            "duplicates_pct": round(percent(outcome.duplicates, outcome.executions), 2),
            "duplicates_finished": outcome.duplicates_finished,
            "duplicate_examples": outcome.duplicate_examples,
            "failovers": [{"kind": f.kind, "from": f.old, "to": f.new,
                           "s": None if f.seconds is None else round(f.seconds, 2)}
                          for f in report.failovers],
            "failover_s": summarise(failover_times),
            "stepdowns_s": [None if s is None else round(s, 3) for s in report.stepdowns],
            "stepdown_s": summarise(stepdowns),
            "server_restarts": report.faults["kill-server"],
            "server_recovery_s": summarise(recoveries),
            "crashes": len(report.crashes),
            "crash_details": report.crashes,
            "server_crashes": report.server_crashes,
            "quiesce_s": round(quiesce_seconds, 1),
            "quiesced": settled is not None,
            "problems": list(report.problems),
        }
        problems: list[str] = summary["problems"]
        for key in ("lost", "stuck", "crashes", "acknowledged_writes_lost"):
            if summary[key]:
                problems.append(f"{key}: {summary[key]}")
        if report.server_crashes:
            problems.append(f"server crashes: {report.server_crashes}")
        median = summary["failover_s"]["median"]
        if median is not None and median > args.max_failover_median:
            problems.append(f"failover median {median:.2f} s > {args.max_failover_median:g} s")
        summary["ok"] = not problems
        return summary
    finally:
        if writer is not None and writer.is_alive():
            writer.halt.set()
        cluster.abort()
        if server.running:
            server.stop()


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(s: dict[str, Any]) -> None:
    settings = s["settings"]
    faults = s["faults"]

    def origin(name: str) -> str:
        return " (runtime default)" if name in settings["runtime_defaults"] else ""

    print(f"chaos: {settings['instances']} instances, {s['chaos_s']} s of faults, "
          f"seed {settings['seed']}; leader TTL {settings['leader_ttl_ms']} ms"
          f"{origin('leader_ttl_ms')}, task lease {settings['task_lease_ms']} ms"
          f"{origin('task_lease_ms')}; writer {settings['rate']:g} writes/s; "
          f"handler work 0-{settings['work_ms']:g} ms")
    print(f"faults: {faults.get('kill', 0)} random instance kills "
          f"({s['leader_kills_by_random_kill']} hit the leader), "
          f"{faults.get('kill-leader', 0)} leader kills, {faults.get('pause-leader', 0)} leader "
          f"pauses (SIGSTOP), {faults.get('kill-server', 0)} server kills\n")
    failovers = ", ".join(f"{f['kind']} {fmt_s(f['s'])}" for f in s["failovers"]) or "-"
    stepdowns = ", ".join("-" if x is None else f"{x:.3f}" for x in s["stepdowns_s"]) or "-"
    rows = [
        ("documents", f"{s['documents']:,}"),
        ("writes acknowledged (inserts / updates)",
         f"{s['inserts'] + s['updates']:,} ({s['inserts']:,} / {s['updates']:,})"),
        ("writes with unknown outcome (re-read)", f"{s['unknown_outcomes']:,}"),
        ("acknowledged writes lost by the server", f"{s['acknowledged_writes_lost']}"),
        ("executions started / finished",
         f"{s['executions']:,} / {s['executions_finished']:,}"),
        ("**lost** (final version never finished)", f"{s['lost']}"),
        ("**stuck** (task pending/processing at the end)", f"{s['stuck']}"),
        ("failed tasks (retries exhausted)", f"{s['failed_tasks']}"),
        ("**duplicate executions** (same document and v started again)",
         f"{s['duplicates']:,} ({s['duplicates_pct']:.2f}% of executions)"),
        ("duplicate executions finished again", f"{s['duplicates_finished']:,}"),
        ("failover (s): signal to next owner's acquiredAt", failovers),
        ("failover median / max (s)",
         f"{fmt_s(s['failover_s']['median'])} / {fmt_s(s['failover_s']['max'])}"),
        ("paused leader: SIGCONT to its leader.lost log line (s)", stepdowns),
        ("server restarts; restart to lease written again, median / max (s)",
         f"{s['server_restarts']}; {fmt_s(s['server_recovery_s']['median'])} / "
         f"{fmt_s(s['server_recovery_s']['max'])}"),
        ("**crashes**", f"{s['crashes']}"),
        ("quiescence after the faults (s)",
         f"{s['quiesce_s']}" + ("" if s["quiesced"] else " (deadline hit)")),
    ]
    print("| metric | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    for name, reasons in s["crash_details"].items():
        print(f"crash {name}: {'; '.join(reasons)}")
    for dup in s["duplicate_examples"]:
        print(f"duplicate: document {dup['source']} v {dup['v']} run by {', '.join(dup['runs'])}")
    if s["lost_ids"]:
        print(f"lost documents (first 20): {s['lost_ids']}")
    for task in s["stuck_tasks"]:
        print(f"stuck task: {task}")
    print("result: " + ("PASS" if s["ok"] else "FAIL: " + "; ".join(s["problems"])))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.instances < 2:
        raise SystemExit("--instances must be at least 2 (failover needs a follower)")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        if any(args.workdir.iterdir()):
            raise SystemExit(f"--workdir {args.workdir} is not empty")
        workdir = args.workdir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="reactgen-chaos-"))
    summary: dict[str, Any] | None = None
    try:
        summary = run(args, workdir)
    finally:
        keep = args.keep or args.workdir is not None or summary is None or not summary["ok"]
        if keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_table(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
