"""The Grafana dashboard (grafana/reactgen.json): importable, and every panel's query returns
data from a real Prometheus that scrapes a real ``runtime serve`` after known activity
(completed, retried and failed tasks).

Needs the ``prometheus`` binary (Debian package ``prometheus``; ``.ci/run`` installs it); the
query test skips, saying so, when it is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from metrics_support import COMPLETED, activity_done, build_flaky, free_port, write_activity
from pymongo.database import Database
from scenario import start
from support import wait_until

Db = Database[dict[str, Any]]
DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "reactgen.json"
WINDOWS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
"""Grafana's interval variables, as a short window that covers the whole test."""
VARIABLES = {"reactor": ".*"}
"""The dashboard's template variables, set to "All"."""


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows' nested panels included, rows themselves not)."""
    found: list[dict[str, Any]] = []
    for panel in data["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels") or [])
        else:
            found.append(panel)
    return found


def concrete(expr: str) -> str:
    """A panel query with Grafana's variables substituted."""
    for name, window in WINDOWS.items():
        expr = expr.replace(name, window)
    for name, chosen in VARIABLES.items():
        expr = expr.replace(f"${{{name}}}", chosen).replace(f"${name}", chosen)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def test_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert set(variables) - {"datasource"} == set(VARIABLES)
    ids = [p["id"] for p in data["panels"]] + [p["id"] for p in panels(data)
                                               if p not in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in data["panels"] if p["type"] == "row"]
    assert rows == ["Health and lag", "Throughput and latency", "Queue depth",
                    "Errors and retries", "Leader and instances", "Scans"]
    for panel in panels(data):
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert re.findall(r"\breactgen_\w+", target["expr"]), target["expr"]


class Prometheus:
    """A Prometheus server of our own, scraping one target every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: reactgen\n    static_configs:\n"
            f"      - targets: ['{target}']\n", encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)

    def url(self, path: str) -> str:
        """A URL of its HTTP API."""
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        """Whether it serves queries yet (fails if it exited)."""
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (``/api/v1/query``)."""
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the error
            raise AssertionError(f"{expr!r}: {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a while."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def prometheus_binary() -> str:
    """The ``prometheus`` executable, or a skip saying how to get it."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install "
                    "prometheus; .ci/run installs it)")
    return binary


@pytest.fixture
def prometheus_factory(prometheus_binary: str, tmp_path: Path) -> Iterator[Any]:
    """``prometheus_factory(target)``: a Prometheus scraping ``target``, stopped after."""
    started: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        server = Prometheus(prometheus_binary, workdir, target)
        started.append(server)
        wait_until(server.ready, timeout=30, interval=0.1, message="prometheus ready")
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


def test_every_panel_query_returns_data_from_prometheus(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db,
        prometheus_factory: Any) -> None:
    app = build_flaky(make_app)
    db.things.insert_one({"_id": "early", "kind": "ok", "n": 1})  # scanned at first start
    port = free_port()
    start(start_runtime, app, "a", "--metrics-port", str(port), "--metrics-refresh-ms", "500",
          "--task-lease-ms", "500")
    prometheus = prometheus_factory(f"127.0.0.1:{port}")
    wait_until(lambda: [r for r in prometheus.query('up{job="reactgen"}')
                        if r["value"][1] == "1"],
               timeout=30, interval=0.2, message="the runtime scraped by prometheus")
    write_activity(db)
    wait_until(lambda: activity_done(db), timeout=30, message="every task final")
    # Until Prometheus holds the final counts, from the instance and from the database.
    completed = COMPLETED + 1

    seen: dict[str, float | None] = {}

    def scraped() -> bool:
        for name, expr in (("executions", 'sum(reactgen_task_executions_total'
                                          '{outcome="completed"})'),
                           ("tasks", 'sum(reactgen_tasks{status="completed"})')):
            result = prometheus.query(expr)
            seen[name] = float(result[0]["value"][1]) if result else None
        return seen == {"executions": completed, "tasks": completed}

    try:
        wait_until(scraped, timeout=30, interval=0.2)
    except AssertionError:
        raise AssertionError(f"prometheus never had {completed} completions from both the "
                             f"instance and the database; last seen: {seen}") from None
    time.sleep(2)  # a couple more scrapes, so that every rate has samples after the activity
    empty: list[str] = []
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            expr = concrete(target["expr"])
            if not prometheus.query(expr):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    outcomes = {r["metric"]["outcome"] for r in prometheus.query(concrete(
        "sum by (outcome) (rate(reactgen_task_executions_total[$__rate_interval]))"))}
    assert {"completed", "failed"} <= outcomes
