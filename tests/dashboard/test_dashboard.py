"""The web dashboard end to end: ``runtime serve`` runs a real application on the test
database, ``runtime dashboard`` serves that database as a process of its own, and headless
Chromium (Playwright) drives the pages and the actions; forged requests go through httpx."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from dashboard_support import (
    DEFINITION,
    HANDLER,
    TOKEN,
    AppBuilder,
    DashboardFactory,
    Doc,
    RuntimeFactory,
    hidden_field,
    server_now,
)
from playwright.sync_api import BrowserContext, Page, expect
from pymongo.database import Database
from runtime_harness import REPO, App, RuntimeProcess
from support import wait_until

from runtime.app_loader import load_app
from runtime.management import ManagementSync

SCREENSHOT = REPO / "docs" / "dashboard.png"
UPDATE_SCREENSHOT = "REACTGEN_UPDATE_SCREENSHOT"
"""Set to 1 to write the screenshot of the shop overview to docs/dashboard.png."""
FAILED_ERROR = "ValueError: boom <b>bad1</b> & <script>alert(1)</script>"


def build(make_app: AppBuilder) -> App:
    return make_app({"record": DEFINITION}, {"record": HANDLER})


def statuses(db: Database[Doc]) -> dict[str, str]:
    return {doc["sourceId"]: doc["status"]
            for doc in db.things_tasks.find({}, {"sourceId": 1, "status": 1})}


def runs(db: Database[Doc], source: str) -> list[Doc]:
    return list(db.runs.find({"source": source}).sort("startedAt", 1))


def run_tasks(db: Database[Doc], app: App, start_runtime: RuntimeFactory,
              ok: tuple[str, ...], bad: tuple[str, ...]) -> RuntimeProcess:
    """``runtime serve`` (instance ``a``) with tasks completed (``ok``) and failed (``bad``)."""
    runtime = start_runtime(app, instance_id="a")
    db.things.insert_many([{"_id": source, "n": i + 1} for i, source in enumerate(ok)]
                          + [{"_id": source, "n": 10 + i, "fail": True}
                             for i, source in enumerate(bad)])
    expected = {**{s: "completed" for s in ok}, **{s: "failed" for s in bad}}
    wait_until(lambda: statuses(db) == expected, timeout=30,
               message=f"tasks reach {expected}")
    return runtime


def navigate(page: Page, selector: str) -> None:
    """Click something that loads another page (a link, a form), and wait until it has."""
    with page.expect_navigation():
        page.click(selector)


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def sources_shown(page: Page) -> list[str]:
    return [row.get_attribute("data-source") or ""
            for row in page.locator("#task-table tbody tr[data-source]").all()]


def test_pages_filters_and_task_page(db: Database[Doc], make_app: AppBuilder,
                                     start_runtime: RuntimeFactory,
                                     start_dashboard: DashboardFactory,
                                     browser: BrowserContext) -> None:
    app = build(make_app)
    run_tasks(db, app, start_runtime, ok=("ok1", "ok2", "ok3"), bad=("bad1", "bad2"))
    dashboard = start_dashboard(app, token=TOKEN)
    page = browser.new_page()

    # overview: counts by status, state, last error (as text), instances and the leader
    page.goto(dashboard.url + "/")
    row = page.locator("#reactor-record")
    expect(row.locator('[data-count="completed"]')).to_have_text("3")
    expect(row.locator('[data-count="failed"]')).to_have_text("2")
    expect(row.locator('[data-count="pending"]')).to_have_text("0")
    expect(row.locator('[data-field="state"]')).to_contain_text("active")
    expect(row.locator('[data-field="last-error"]')).to_contain_text("ValueError: boom <b>bad")
    assert row.locator('[data-field="last-error"] b, [data-field="last-error"] script') \
        .count() == 0
    expect(page.locator("#leader .badge.leader")).to_have_text("a")
    expect(page.locator('#instances tr[data-instance="a"]')).to_contain_text("leader")
    # the buttons say why they are disabled until the token is entered
    expect(row.locator('button:has-text("Pause")')).to_be_disabled()
    # counts refresh in place, without a reload
    db.things.insert_one({"_id": "ok4", "n": 4})
    expect(row.locator('[data-count="completed"]')).to_have_text("4", timeout=30_000)

    # the task list: filters live in the query string
    navigate(page, "header >> text=Failed tasks")
    assert query(page) == {"status": ["failed"]}
    expect(page.locator("#task-count")).to_contain_text("2 matching")
    assert sorted(sources_shown(page)) == ["bad1", "bad2"]
    expect(page.locator("#task-table")).to_contain_text(FAILED_ERROR)
    assert page.locator("#task-table b, #task-table script").count() == 0
    page.fill('#filters input[name="error"]', "bad2")
    navigate(page, "#apply")
    expect(page.locator("#task-count")).to_contain_text("1 matching")
    assert query(page) == {"status": ["failed"], "error": ["bad2"]}
    assert sources_shown(page) == ["bad2"]
    page.reload()  # the state is the URL
    assert sources_shown(page) == ["bad2"]
    expect(page.locator('#filters input[name="error"]')).to_have_value("bad2")
    expect(page.locator('#filters input[value="failed"]')).to_be_checked()
    page.go_back()
    expect(page.locator("#task-count")).to_contain_text("2 matching")

    page.goto(dashboard.url + "/tasks")
    page.fill('#filters input[name="source_id"]', "ok1")
    navigate(page, "#apply")
    assert query(page) == {"source_id": ["ok1"]}
    assert sources_shown(page) == ["ok1"]
    page.goto(dashboard.url + "/tasks")
    page.select_option('#filters select[name="reactor"]', "record")
    page.check('#filters input[value="completed"]')
    navigate(page, "#apply")
    assert query(page) == {"reactor": ["record"], "status": ["completed"]}
    page.select_option('#filters select[name="order"]', "asc")
    navigate(page, "#apply")
    assert query(page) == {"reactor": ["record"], "status": ["completed"], "order": ["asc"]}
    expect(page.locator("#task-count")).to_contain_text("4 matching")

    # pagination keeps the filters
    page.goto(dashboard.url + "/tasks?status=completed&limit=3")
    first = sources_shown(page)
    assert len(first) == 3
    expect(page.locator("#prev-page")).to_have_count(0)
    navigate(page, "#next-page")
    assert query(page) == {"status": ["completed"], "limit": ["3"], "skip": ["3"]}
    second = sources_shown(page)
    assert sorted(first + second) == ["ok1", "ok2", "ok3", "ok4"]
    navigate(page, "#prev-page")
    assert sources_shown(page) == first

    # a bad filter is reported, not a crash
    page.goto(dashboard.url + "/tasks?reactor=nope&status=bogus")
    expect(page.locator(".problem").first).to_be_visible()
    expect(page.locator("main")).to_contain_text("unknown status 'bogus'")
    expect(page.locator("main")).to_contain_text("unknown reactor 'nope'")

    # the task page: state, history, error, source document, snapshot, explanation
    page.goto(dashboard.url + "/tasks?source_id=bad1")
    navigate(page, "#task-table tbody tr >> a >> nth=0")
    expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f]{24}$"))
    expect(page.locator("#task-status")).to_have_text("failed")
    expect(page.locator("#task-attempts")).to_have_text("1")
    expect(page.locator("#last-error")).to_have_text(FAILED_ERROR)
    entries = page.locator("#history .history-entry")
    expect(entries).to_have_count(1)
    assert entries.first.get_attribute("data-status") == "failed"
    expect(entries.first).to_contain_text(FAILED_ERROR)
    expect(entries.first.locator("td").nth(4)).to_have_text("a")  # the instance that ran it
    expect(page.locator("#source-document")).to_contain_text('"_id": "bad1"')
    expect(page.locator("#source-document")).to_contain_text('"fail": true')
    expect(page.locator("#snapshot")).to_contain_text('"n": 10')
    expect(page.locator("#explanation")).to_contain_text("failed for good after 1 attempt")
    assert page.locator("main b, main script").count() == 0
    stored = db.things_tasks.find_one({"sourceId": "bad1"})
    assert stored is not None
    traceback = (stored.get("history") or [{}])[-1].get("traceback")
    if traceback:  # the runtime records tracebacks: they are shown with the entry
        expect(page.locator("#history details.traceback pre")).to_contain_text("ValueError")
    if stored.get("lastTraceback"):
        expect(page.locator("#task-traceback")).to_contain_text("ValueError")
    # an unknown task is a 404 page
    missing = page.goto(dashboard.url + "/tasks/0123456789abcdef01234567")
    assert missing is not None and missing.status == 404

    # enter the token once; then the actions are enabled: the screenshot of the docs
    page.goto(dashboard.url + "/")
    page.fill('#login input[name="token"]', TOKEN)
    navigate(page, '#login button')
    expect(page.locator("#flash")).to_have_text("actions enabled")
    expect(page.locator("#actions-enabled")).to_be_visible()
    expect(page.locator('#reactor-record button:has-text("Pause")')).to_be_enabled()
    navigate(page, "header >> text=log out")
    expect(page.locator("#login")).to_be_visible()


def test_actions_end_to_end(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                            start_runtime: RuntimeFactory, start_dashboard: DashboardFactory,
                            browser: BrowserContext) -> None:
    app = build(make_app)
    runtime = run_tasks(db, app, start_runtime, ok=("ok1",), bad=("bad1", "bad2", "bad3"))
    dashboard = start_dashboard(app, token=TOKEN)
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    # a wrong token is refused; the right one enables the actions
    page.goto(dashboard.url + "/")
    page.fill('#login input[name="token"]', "not-the-token")
    navigate(page, "#login button")
    expect(page.locator("#flash")).to_have_text("wrong token")
    expect(page.locator("#actions-enabled")).to_have_count(0)
    page.fill('#login input[name="token"]', TOKEN)
    navigate(page, "#login button")
    expect(page.locator("#actions-enabled")).to_be_visible()

    # retry one failed task: it runs again and now succeeds
    db.control.insert_one({"_id": "fixed"})
    page.goto(dashboard.url + "/tasks?source_id=bad1")
    navigate(page, "#task-table tbody tr >> a >> nth=0")
    task_url = page.url
    navigate(page, "#retry-task button")
    expect(page.locator("#flash")).to_contain_text("retried task")
    assert page.url == task_url
    wait_until(lambda: statuses(db)["bad1"] == "completed", timeout=30,
               message="bad1 completes after the retry")
    assert [run["attempt"] for run in runs(db, "bad1")] == [1, 1]
    assert statuses(db)["bad2"] == statuses(db)["bad3"] == "failed"
    page.reload()
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.locator("#history .history-entry")).to_have_count(2)

    # retry every task matching the filters
    page.goto(dashboard.url + "/tasks?status=failed")
    expect(page.locator("#task-count")).to_contain_text("2 matching")
    navigate(page, "#retry-matching button")
    expect(page.locator("#flash")).to_have_text("retried 2 task(s) of 2 matching")
    assert query(page) == {"status": ["failed"]}
    wait_until(lambda: statuses(db) == {s: "completed" for s in ("ok1", "bad1", "bad2",
                                                                   "bad3")},
               timeout=30, message="every task completes")
    assert len(runs(db, "bad2")) == len(runs(db, "bad3")) == 2
    assert len(runs(db, "ok1")) == 1

    # pause: the same document as the management API's pause
    page.goto(dashboard.url + "/")
    page.fill('#reactor-record input[name="reason"]', "maintenance <window>")
    navigate(page, '#reactor-record button:has-text("Pause")')
    expect(page.locator("#flash")).to_contain_text("paused record")
    meta = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert meta is not None
    paused = meta["paused"]
    assert set(paused) == {"at", "by", "reason"}
    assert paused["reason"] == "maintenance <window>"
    assert paused["by"].startswith("dashboard@")
    assert isinstance(paused["at"], datetime.datetime)
    expect(page.locator('#reactor-record [data-field="state"]')).to_contain_text(
        "paused")
    expect(page.locator('#reactor-record [data-field="state"]')).to_contain_text(
        "maintenance <window>")
    # every instance learns it; work planned meanwhile waits
    wait_until(lambda: (db.reactgen_meta.find_one({"_id": "instance:a"}) or {}).get(
        "paused") == ["record"], timeout=15, message="instance a reports the pause")
    db.things.insert_one({"_id": "later", "n": 99})
    wait_until(lambda: statuses(db).get("later") == "pending", timeout=30,
               message="the new task is planned")
    resumed_at = server_now(db)
    navigate(page, '#reactor-record button:has-text("Resume")')
    expect(page.locator("#flash")).to_have_text("resumed record")
    assert "paused" not in (db.reactgen_meta.find_one({"_id": "reactor:record"}) or {})
    wait_until(lambda: statuses(db).get("later") == "completed", timeout=30,
               message="the task runs after the resume")
    assert all(run["startedAt"] >= resumed_at for run in runs(db, "later"))
    expect(page.locator('#reactor-record [data-field="state"]')).to_contain_text("active")

    # request a scan: the leader picks the request up and queues a pass
    navigate(page, '#reactor-record button:has-text("Request scan")')
    expect(page.locator("#flash")).to_contain_text("requested a reconciliation scan")
    runtime.wait_for_log(r"event=scan\.queued .*dashboard request", timeout=30)
    wait_until(lambda: "scanRequest" not in (db.reactgen_meta.find_one(
        {"_id": "reactor:record"}) or {}), timeout=15, message="the request is consumed")

    # a forged cross-site form in the same (logged-in) browser is refused
    before = db.reactgen_meta.find_one({"_id": "reactor:record"})
    evil = browser.new_page()
    evil.set_content(f'<form id="f" method="post" action="{dashboard.url}/actions/pause">'
                     '<input name="reactor" value="record"><input name="csrf" value="x">'
                     "</form>")
    with evil.expect_navigation():
        evil.evaluate("document.getElementById('f').submit()")
    expect(evil.locator("#problem-title")).to_have_text("Forbidden")
    assert db.reactgen_meta.find_one({"_id": "reactor:record"}) == before
    dashboard.wait_for_log(r"event=dashboard\.refused")
    dashboard.wait_for_log(r"event=dashboard\.pause .*reactor=record")


def _session(client: httpx.Client, base: str) -> str:
    """Open a page (the session cookie is set) and return its CSRF field."""
    response = client.get(base + "/")
    assert response.status_code == 200
    return hidden_field(response.text, "csrf")


def test_refused_without_token_or_csrf(db: Database[Doc], make_app: AppBuilder,
                                       start_dashboard: DashboardFactory) -> None:
    """Every mutating request without the token, the session's CSRF field, or from another
    origin is refused with 403 and changes nothing; a read-only dashboard refuses them all."""
    app = build(make_app)
    now = server_now(db)
    db.things.insert_one({"_id": "bad1", "n": 1, "fail": True})
    db.things_tasks.insert_one({"reactor": "record", "sourceId": "bad1", "status": "failed",
                                "nextRunAt": None, "attempts": 1, "lastError": "ValueError: x",
                                "snapshot": {"n": 1}, "snapshotHash": "h", "dueAt": now,
                                "createdAt": now, "updatedAt": now, "history": []})
    task = db.things_tasks.find_one({"sourceId": "bad1"})
    assert task is not None
    meta_before = list(db.reactgen_meta.find())
    dashboard = start_dashboard(app, token=TOKEN)
    base = dashboard.url
    actions: list[tuple[str, dict[str, Any]]] = [
        ("/actions/pause", {"reactor": "record", "reason": "x"}),
        ("/actions/resume", {"reactor": "record"}),
        ("/actions/scan", {"reactor": "record"}),
        ("/actions/retry-task", {"task": str(task["_id"])}),
        ("/actions/retry-matching", {"status": "failed"}),
    ]

    with httpx.Client(follow_redirects=False, timeout=30) as anonymous:
        # no session, no CSRF field, no token: a plain cross-site POST
        for path, form in actions:
            response = anonymous.post(base + path, data=form)
            assert response.status_code == 403, (path, response.text)
    with httpx.Client(follow_redirects=False, timeout=30) as browser_like:
        csrf = _session(browser_like, base)
        # a valid session and CSRF field, but the token was never entered
        for path, form in actions:
            response = browser_like.post(base + path, data={**form, "csrf": csrf})
            assert response.status_code == 403, (path, response.text)
            assert "enter the dashboard token first" in response.text
        # logging in needs the CSRF field too
        response = browser_like.post(base + "/login", data={"token": TOKEN})
        assert response.status_code == 403 and "reactgen_dashboard_auth" not in \
            response.headers.get("set-cookie", "")
        response = browser_like.post(base + "/login", data={"token": TOKEN, "csrf": csrf})
        assert response.status_code == 303 and "reactgen_dashboard_auth" in \
            response.headers.get("set-cookie", "")
        # logged in: still refused without the CSRF field, with another session's field,
        # from another origin, or as another site's request
        with httpx.Client(timeout=30) as other:
            other_csrf = _session(other, base)
        for path, form in actions:
            for data, headers in [
                    (form, {}),
                    ({**form, "csrf": other_csrf}, {}),
                    ({**form, "csrf": "0" * 64}, {}),
                    ({**form, "csrf": csrf}, {"Origin": "http://evil.example"}),
                    ({**form, "csrf": csrf}, {"Origin": "null"}),
                    ({**form, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"})]:
                response = browser_like.post(base + path, data=data, headers=headers)
                assert response.status_code == 403, (path, headers, response.text)
        # JSON or multipart bodies are not forms of this dashboard
        response = browser_like.post(base + "/actions/pause",
                                     json={"reactor": "record", "csrf": csrf})
        assert response.status_code == 403
        # a request addressed to another host name (DNS rebinding) is not served at all
        response = browser_like.get(base + "/", headers={"Host": "evil.example"})
        assert response.status_code == 400

        assert list(db.reactgen_meta.find()) == meta_before
        assert db.things_tasks.find_one({"_id": task["_id"]}) == task

        # the same session with everything in order is accepted (the refusals above were
        # for the reasons given)
        response = browser_like.post(base + "/actions/pause",
                                     data={"reactor": "record", "csrf": csrf})
        assert response.status_code == 303
        assert "paused" in (db.reactgen_meta.find_one({"_id": "reactor:record"}) or {})
        response = browser_like.post(base + "/actions/resume",
                                     data={"reactor": "record", "csrf": csrf})
        assert response.status_code == 303
        # a page carries the security headers
        page = browser_like.get(base + "/tasks")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"

    # without a configured token the dashboard is read-only, and says so
    read_only = start_dashboard(app, token=None)
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        csrf = _session(client, read_only.url)
        assert "read-only: no token configured" in client.get(read_only.url + "/").text
        response = client.post(read_only.url + "/login", data={"token": TOKEN, "csrf": csrf})
        assert response.status_code == 403
        for path, form in actions:
            response = client.post(read_only.url + path, data={**form, "csrf": csrf})
            assert response.status_code == 403, (path, response.text)
            assert "read-only" in response.text
    assert "paused" not in (db.reactgen_meta.find_one({"_id": "reactor:record"}) or {})
    assert db.things_tasks.find_one({"_id": task["_id"]}) == task
    read_only.wait_for_log(r"read-only: no token configured")


SHOP_SCHEMA = """
    schema:
      type: object
      title: {title}
      properties:
        _id: {{type: string}}
        status: {{type: string}}
        total: {{type: number}}
        email: {{type: string}}
        text: {{type: string}}
        broken: {{type: boolean}}
"""
SHOP = {
    "sync_paid_orders": ("orders", "Order", "filter: {status: paid}\n      watch: [status, total]",
                         "ConnectionError('ERP erp.internal:443 did not answer within 30 s')"),
    "send_welcome_email": ("users", "User", "watch: [email]",
                           "RuntimeError('SMTP 550: mailbox unavailable')"),
    "index_reviews": ("reviews", "Review", "watch: [text]", "RuntimeError('never')"),
}
SHOP_HANDLER = """
    from {package}.reactors.NAME import Context


    async def handle(ctx: Context) -> None:
        document = await ctx.get_document()
        if document.broken:
            raise ERROR
"""


def test_shop_overview_screenshot(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                                  start_runtime: RuntimeFactory,
                                  start_dashboard: DashboardFactory, browser: BrowserContext,
                                  tmp_path: Any) -> None:
    """Three reactors on three collections, failures, a paused reactor with waiting work:
    the overview shows each, and its screenshot is the one in the docs."""
    app = make_app(
        {name: f"    collection: {collection}\n" + SHOP_SCHEMA.format(title=title)
         + f"    trigger:\n      {trigger}\n    policies:\n      retry: {{maxAttempts: 1}}\n"
         for name, (collection, title, trigger, _) in SHOP.items()},
        {name: SHOP_HANDLER.replace("NAME", name).replace("ERROR", error)
         for name, (_, _, _, error) in SHOP.items()})
    sys_path_app(app)
    with ManagementSync(mongodb_uri, db.name, load_app(app.package).reactors,
                        actor="ops@example") as api:
        api.pause("index_reviews", "search cluster upgrade")
    start_runtime(app, instance_id="worker-1")
    start_runtime(app, instance_id="worker-2")
    db.orders.insert_many([{"_id": f"order-{i}", "status": "paid", "total": 10.0 * i,
                            "broken": i in (3, 7)} for i in range(1, 13)])
    db.users.insert_many([{"_id": f"user-{i}", "email": f"u{i}@example.com",
                           "broken": i == 4} for i in range(1, 8)])
    db.reviews.insert_many([{"_id": f"review-{i}", "text": "great"} for i in range(1, 5)])

    def counts() -> dict[str, int]:
        found: dict[str, int] = {}
        for collection in ("orders_tasks", "users_tasks", "reviews_tasks"):
            for doc in db[collection].find():
                key = f"{doc['reactor']}:{doc['status']}"
                found[key] = found.get(key, 0) + 1
        return found

    expected = {"sync_paid_orders:completed": 10, "sync_paid_orders:failed": 2,
                "send_welcome_email:completed": 6, "send_welcome_email:failed": 1,
                "index_reviews:pending": 4}
    wait_until(lambda: counts() == expected, timeout=30, message=f"tasks reach {expected}")
    dashboard = start_dashboard(app, token=TOKEN)
    page = browser.new_page()
    page.set_viewport_size({"width": 1440, "height": 620})
    page.goto(dashboard.url + "/")
    page.fill('#login input[name="token"]', TOKEN)
    navigate(page, "#login button")
    expect(page.locator("#actions-enabled")).to_be_visible()
    page.locator("#flash").evaluate("element => element.remove()")
    expect(page.locator("#reactors tbody tr")).to_have_count(3)
    reviews = page.locator("#reactor-index_reviews")
    expect(reviews.locator('[data-count="pending"]')).to_have_text("4")
    expect(reviews.locator('[data-field="state"]')).to_contain_text("search cluster upgrade")
    expect(reviews.locator('[data-field="state"]')).to_contain_text("by ops@example")
    expect(reviews.locator('[data-field="lag"]')).to_contain_text("waiting")
    expect(reviews.locator('button:has-text("Resume")')).to_be_enabled()
    orders = page.locator("#reactor-sync_paid_orders")
    expect(orders.locator('[data-count="failed"]')).to_have_text("2")
    expect(orders.locator('[data-field="last-error"]')).to_contain_text("ERP erp.internal")
    expect(page.locator("#instances tbody tr")).to_have_count(2)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        shutil.copyfile(shot, SCREENSHOT)


def sys_path_app(app: App) -> None:
    """Make the app importable in this process (for the management API)."""
    if str(app.root) not in sys.path:
        sys.path.insert(0, str(app.root))
