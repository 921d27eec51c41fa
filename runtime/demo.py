"""The main job of the quick start: the example shop application running end to end.

It builds ``schemas/`` into ``generated/``, starts ``runtime serve`` (which starts the embedded
server, since no ``MONGODB_URI`` is given), writes a few users, orders and reviews the way an
application would, and waits until every reactor has visibly fired. Run it with
``python3 dev.py start`` or ``python -m runtime.demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo import MongoClient

URI_PATTERN = re.compile(r"uri=(mongodb://\S+)")
DEMO_TOKEN = "demo-token"
"""The demo's dashboard token (the dashboard binds 127.0.0.1 only)."""


def _echo_logs(stream: Any, found_uri: list[str], ready: threading.Event) -> None:
    for raw in stream:
        line = raw.rstrip("\n")
        print(f"  [runtime] {line}", flush=True)
        match = URI_PATTERN.search(line)
        if match and not found_uri:
            found_uri.append(match.group(1))
        if "event=runtime.started" in line:
            ready.set()


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)
    print(f"✔ {what}", flush=True)


def write_and_verify(uri: str, timeout: float) -> None:
    """Act like the shop application, then check each reactor's effect."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    db = client["app"]
    print("\n— a user signs up (send_welcome_message runs once per new user)", flush=True)
    db.users.insert_one({"_id": "u1", "email": "ada@example.com", "name": "Ada"})
    _wait("welcome e-mail queued in outbox",
          lambda: db.outbox.count_documents({"_id": "welcome:u1"}) == 1, timeout)
    db.users.update_one({"_id": "u1"}, {"$set": {"name": "Ada L."}})

    print("\n— an order is placed, then paid (sync_paid_orders filters on status: paid)",
          flush=True)
    db.orders.insert_one({"_id": "o1", "status": "new", "total": 42.0,
                          "items": [{"sku": "book", "quantity": 1, "price": 42.0}]})
    db.orders.update_one({"_id": "o1"}, {"$set": {"status": "paid"}})
    _wait("paid order pushed to the ERP",
          lambda: db.erp_outbox.count_documents({"_id": "o1", "pushes": 1}) == 1, timeout)
    print("\n— an unwatched field changes (no new push), then a watched one (pushed again)",
          flush=True)
    db.orders.update_one({"_id": "o1"}, {"$set": {"note": "gift wrap"}})
    db.orders.update_one({"_id": "o1"}, {"$set": {"total": 40.0}})
    _wait("changed total pushed again (2 pushes in all)",
          lambda: db.erp_outbox.count_documents({"_id": "o1", "pushes": 2, "total": 40.0}) == 1,
          timeout)

    print("\n— three reviews of one product arrive at once: recalculate_product_rating runs "
          "once per review (debounce is per document: it merges quick edits of the same "
          "review, each run waits 2 s after its review's last change); every run recomputes "
          "the product's average, so the last one sees all three", flush=True)
    db.reviews.insert_many([{"_id": f"r{i}", "productId": "p1", "rating": rating}
                            for i, rating in enumerate([5, 4, 3])])
    _wait("product rating recalculated",
          lambda: db.products.count_documents({"_id": "p1", "reviewCount": 3}) == 1, timeout)
    product = db.products.find_one({"_id": "p1"}) or {}
    print(f"  products.p1 = {product}")

    print("\n— the daily sales report is a cron job (06:00 Berlin time); run it now",
          flush=True)
    run_cron_now(uri, "daily_sales_report")
    _wait("sales report written by the cron job",
          lambda: db.sales_reports.count_documents({"trigger": "manual"}) == 1, timeout)

    print("\nTasks now:")
    for collection in ("users_tasks", "orders_tasks", "reviews_tasks", "reactgen_cron_tasks"):
        for task in db[collection].find({}, {"reactor": 1, "sourceId": 1, "status": 1,
                                             "attempts": 1}).sort("reactor", 1):
            print(f"  {collection:19} {task['reactor']:28} {task['sourceId']!s:4} "
                  f"{task['status']:10} attempts={task.get('attempts')}")
    erp = db.erp_outbox.find_one({"_id": "o1"}) or {}
    if erp.get("pushes") != 2:
        raise SystemExit(f"demo: expected exactly 2 ERP pushes, saw {erp.get('pushes')}")


def run_cron_now(uri: str, job: str) -> None:
    """``runtime cron run-now JOB`` through the management API."""
    from runtime.app_loader import load_app
    from runtime.management import ManagementSync

    with ManagementSync(uri, "app", load_app("generated").crons) as management:
        management.run_cron_now(job, "demo")


def explore(uri: str, dashboard: str | None, keep: bool) -> None:
    """Where to look next: the dashboard and the operator's commands."""
    cli = ".venv/bin/runtime"
    flags = f"--mongodb-uri {uri} --app generated"
    print("\nExplore it" + ("" if keep else " (run `python3 dev.py start --keep` to keep it "
                                            "running)") + ":")
    if dashboard:
        print(f"  dashboard:  {dashboard}   (actions need the token: {DEMO_TOKEN})")
    for command in ("reactors", "tasks list --status completed", "explain sync_paid_orders o1",
                    "instances", "cron list", "tasks retry --reactor send_welcome_message --all"):
        print(f"  {cli} {command} {flags}")


def main(argv: list[str] | None = None) -> int:
    """Build, serve, write, verify, stop (or keep serving with ``--keep``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true",
                        help="keep runtime serve (with the dashboard) running until Ctrl-C")
    parser.add_argument("--dashboard-port", type=int, default=8700)
    args = parser.parse_args(argv)
    print("$ reactgen build schemas/", flush=True)
    built = subprocess.run([sys.executable, "-m", "generator", "build", "schemas/"], check=False)
    if built.returncode != 0:
        return built.returncode
    with tempfile.TemporaryDirectory(prefix="reactgen-demo-") as data_dir:
        print(f"\n$ runtime serve --data-dir {data_dir}   (no MONGODB_URI: embedded server)",
              flush=True)
        env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
        command = [sys.executable, "-m", "runtime", "serve", "--data-dir", data_dir]
        if args.keep:
            command += ["--dashboard-port", str(args.dashboard_port),
                        "--dashboard-token", DEMO_TOKEN]
        serve = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        found_uri: list[str] = []
        ready = threading.Event()
        echo = threading.Thread(target=_echo_logs, args=(serve.stderr, found_uri, ready),
                                daemon=True)
        echo.start()
        try:
            if not ready.wait(args.timeout) or not found_uri:
                raise SystemExit("demo: runtime serve did not start; see its log above")
            write_and_verify(found_uri[0], args.timeout)
            dashboard = f"http://127.0.0.1:{args.dashboard_port}/" if args.keep else None
            explore(found_uri[0], dashboard, args.keep)
            if args.keep:
                print("\nServing until Ctrl-C.", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    serve.wait()
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(timeout=60)
            echo.join(timeout=5)
        print(f"\nruntime serve stopped (exit status {code}). The example works end to end.")
        return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
