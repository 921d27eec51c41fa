"""The dashboard's ASGI application (Starlette): pages rendered on the server, and the POST
actions (retry, bulk retry, pause, resume, reconciliation request) behind the token and CSRF
checks of :mod:`runtime.dashboard.security`.

Pages: ``/`` (reactors and instances, refreshed in place every few seconds), ``/tasks`` (the
task list; filters, order and page in the query string), ``/tasks/<id>`` (one task: history,
tracebacks, snapshot, source document, explanation). Everything is read through
:class:`runtime.management.Management`; templates are autoescaped.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import jinja2
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from runtime.dashboard import views
from runtime.dashboard.security import (
    AUTH_COOKIE,
    CSRF_FIELD,
    FLASH_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    Guard,
    content_security_policy,
)
from runtime.management.errors import InvalidSelection, NotFound, UnknownReactor
from runtime.management.facade import Management
from runtime.management.formatting import compact, display_id, duration, iso, relative
from runtime.management.scope import Doc
from runtime.management.status import TaskStatus
from runtime.management.tasks import TaskRecord, TaskSelection
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.dashboard")

MAX_FORM_BYTES = 64 * 1024
MAX_FLASH_CHARS = 400
REFRESH_MS = 5_000
"""How often the overview refreshes its counts in place."""
STATUS_ORDER = [status.value for status in TaskStatus]

Form = dict[str, list[str]]
Handler = Callable[[Request], Awaitable[Response]]


def default_actor() -> str:
    """``by`` of the dashboard's pauses and requests."""
    return f"dashboard@{socket.gethostname()}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("runtime.dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(iso=iso, duration=duration, display_id=display_id, compact=compact,
                       pretty=views.pretty, task_path=views.task_path,
                       source_id_text=views.source_id_text, id_text=views.id_text)
    env.globals.update(url=views.url, STATUS_ORDER=STATUS_ORDER, relative=relative,
                       SORT_LABELS=views.SORT_LABELS)
    return env


class Dashboard:
    """The pages and actions of one dashboard (one :class:`Management`, one :class:`Guard`)."""

    def __init__(self, management: Management, guard: Guard,
                 refresh_ms: int = REFRESH_MS) -> None:
        self.management = management
        self.guard = guard
        self.refresh_ms = refresh_ms
        self.templates = _environment()

    # ------------------------------------------------------------------ rendering

    def _render(self, request: Request, template: str, status_code: int = 200,
                **context: Any) -> Response:
        session = self.guard.session_id(request)
        new_session = session is None
        if session is None:
            session = self.guard.new_session_id()
        flash = self._flash(request)
        nonce = secrets.token_urlsafe(16)
        authenticated = self.guard.authenticated(request)
        body = self.templates.get_template(template).render(
            request_path=_current_path(request), nonce=nonce,
            csrf_field=CSRF_FIELD, csrf=self.guard.csrf_token(session),
            actions_enabled=self.guard.actions_enabled,
            authenticated=authenticated, can_act=self.guard.actions_enabled and authenticated,
            flash=flash,
            refresh_ms=self.refresh_ms, database=self.management.scope.db.name, **context)
        response = HTMLResponse(body, status_code=status_code)
        _secure(response, nonce)
        if new_session:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict",
                                path="/")
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _flash(self, request: Request) -> dict[str, str] | None:
        raw = request.cookies.get(FLASH_COOKIE)
        text = self.guard.unsign(raw) if raw else None
        if text is None:
            return None
        kind, _, message = unquote(text).partition(":")
        return {"kind": kind if kind in ("ok", "error") else "ok", "message": message}

    def _redirect(self, target: str, kind: str, message: str) -> Response:
        if len(message) > MAX_FLASH_CHARS:  # a cookie holds about 4 KB
            message = message[:MAX_FLASH_CHARS - 1] + "…"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(FLASH_COOKIE, self.guard.sign(quote(f"{kind}:{message}", safe="")),
                            httponly=True, samesite="strict", path="/")
        return response

    def _problem(self, request: Request, status_code: int, title: str, message: str) -> Response:
        return self._render(request, "error.html", status_code, title=title, message=message)

    # ------------------------------------------------------------------ pages

    async def overview(self, request: Request) -> Response:
        """Reactors with their counts, lag, pause and last error; instances and the leader."""
        try:
            summaries = await self.management.reactor_summaries()
            cluster = await self.management.instances()
        except PyMongoError as exc:
            return self._database_error(request, exc)
        return self._render(request, "overview.html", summaries=summaries, cluster=cluster,
                            now=cluster.server_time)

    async def tasks(self, request: Request) -> Response:
        """The task list: filters in the query string, a count, one page."""
        query: Form = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        filters = views.TaskFilters.from_query(query)
        problems = list(filters.problems)
        page = None
        total = None
        status_code = 200
        try:
            selection = filters.selection()
            total = await self.management.count_tasks(selection)
            page = await self.management.list_tasks(selection, sort=filters.sort,
                                                    descending=filters.descending,
                                                    limit=filters.limit, skip=filters.skip)
        except (InvalidSelection, UnknownReactor) as exc:
            problems.append(str(exc))
            status_code = 400
        except PyMongoError as exc:
            return self._database_error(request, exc)
        now = await self._now()
        return self._render(request, "tasks.html", status_code, filters=filters,
                            problems=problems, page=page, total=total, now=now,
                            reactors=self.management.reactor_names,
                            statuses=STATUS_ORDER, sorts=list(views.SORT_LABELS),
                            default_sort=views.DEFAULT_SORT.value,
                            default_limit=views.DEFAULT_PAGE_SIZE)

    async def task(self, request: Request) -> Response:
        """One task: facts, history with tracebacks, snapshot, source document, explanation."""
        ref = str(request.path_params["ref"])
        task_id = views.parse_id(ref)
        try:
            task = await self.management.show_task(task_id)
            raw = await self._raw_task(task)
            source, source_error = await self._source_document(task)
            explanation, explain_error = await self._explain(task)
        except NotFound as exc:
            return self._problem(request, 404, "No such task", str(exc))
        except PyMongoError as exc:
            return self._database_error(request, exc)
        raw_history = [entry for entry in (raw or {}).get("history") or []
                       if isinstance(entry, dict)]
        history = []
        for index, entry in enumerate(task.history):
            traceback = getattr(entry, "traceback", None)
            if traceback is None and index < len(raw_history):
                traceback = _text(raw_history[index].get("traceback"))
            history.append({"entry": entry, "traceback": traceback})
        history.reverse()
        now = await self._now()
        return self._render(
            request, "task.html", task=task, raw=raw, history=history,
            task_traceback=_text((raw or {}).get("lastTraceback")
                                 or (raw or {}).get("traceback")),
            source=source, source_error=source_error, explanation=explanation,
            explain_error=explain_error, now=now, task_ref=views.id_text(task.id))

    async def _now(self) -> datetime.datetime:
        try:
            return await self.management.server_time()
        except PyMongoError:
            return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    async def _raw_task(self, task: TaskRecord) -> Doc | None:
        """The stored task document (for fields the typed record does not carry yet, such as
        tracebacks)."""
        collection = self.management.scope.db.client[task.database][task.collection]
        doc: Doc | None = await collection.find_one({"_id": task.id})
        return doc

    async def _source_document(self, task: TaskRecord) -> tuple[Doc | None, str | None]:
        try:
            spec = self.management.scope.reactor(task.reactor)
        except UnknownReactor as exc:
            return None, str(exc)
        source = await self.management.scope.source_of(spec).find_one({"_id": task.source_id})
        if source is None:
            return None, (f"no document with _id {display_id(task.source_id)} in "
                          f"{self.management.scope.database_name(spec)}.{spec.collection}")
        return source, None

    async def _explain(self, task: TaskRecord) -> tuple[str | None, str | None]:
        try:
            explanation = await self.management.explain(task.reactor, task.source_id)
        except (UnknownReactor, NotFound) as exc:
            return None, str(exc)
        except PyMongoError as exc:
            return None, f"database error: {exc}"
        return explanation.render(), None

    def _database_error(self, request: Request, exc: PyMongoError) -> Response:
        log_event(log, logging.WARNING, f"dashboard page failed: {exc}",
                  event="dashboard.database_error", path=request.url.path, error=str(exc))
        return self._problem(request, 503, "Database error",
                             f"The database could not be read: {exc}")

    # ------------------------------------------------------------------ checks

    async def _checked_form(self, request: Request) -> Form | Response:
        """The posted form if the request passes the Host, origin and CSRF checks, else the
        403 (or 413) response."""
        if not self.guard.same_origin(request):
            return self._refuse(request, "the request comes from another site")
        form = await _read_form(request)
        if form is None:
            return self._problem(request, 413, "Request too large",
                                 "The form is larger than this dashboard accepts.")
        flat = {key: values[0] for key, values in form.items() if values}
        if not self.guard.csrf_valid(request, flat):
            return self._refuse(request, "the form's CSRF token is missing or does not match "
                                "this browser session (reload the page and try again)")
        return form

    async def _action_form(self, request: Request) -> Form | Response:
        """The form of a mutating action: the checks of :meth:`_checked_form`, a configured
        token, and an operator who entered it."""
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        if not self.guard.actions_enabled:
            return self._refuse(request, "this dashboard is read-only: no token is configured "
                                "(--token or REACTGEN_DASHBOARD_TOKEN)")
        if not self.guard.authenticated(request):
            return self._refuse(request, "enter the dashboard token first")
        return form

    def _refuse(self, request: Request, reason: str) -> Response:
        log_event(log, logging.WARNING, f"dashboard refused {request.method} "
                  f"{request.url.path}: {reason}", event="dashboard.refused",
                  path=request.url.path, client=_client(request), reason=reason)
        return self._problem(request, 403, "Forbidden", f"Refused: {reason}.")

    # ------------------------------------------------------------------ session

    async def login(self, request: Request) -> Response:
        """Enter the token: sets the auth cookie."""
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        target = _local_target(_first(form, "next"))
        if not self.guard.actions_enabled:
            return self._refuse(request, "this dashboard is read-only: no token is configured")
        if not self.guard.token_matches(_first(form, "token")):
            log_event(log, logging.WARNING, "dashboard login with a wrong token",
                      event="dashboard.login_failed", client=_client(request))
            return self._redirect(target, "error", "wrong token")
        response = self._redirect(target, "ok", "actions enabled")
        response.set_cookie(AUTH_COOKIE, self.guard.auth_cookie_value(), httponly=True,
                            samesite="strict", path="/")
        log_event(log, logging.INFO, "dashboard login", event="dashboard.login",
                  client=_client(request))
        return response

    async def logout(self, request: Request) -> Response:
        """Forget the token in this browser."""
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        response = self._redirect(_local_target(_first(form, "next")), "ok", "logged out")
        response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ actions

    async def retry_task(self, request: Request) -> Response:
        """Retry one task (as ``runtime tasks retry --source-id``)."""
        form = await self._action_form(request)
        if isinstance(form, Response):
            return form
        target = _local_target(_first(form, "next"))
        task_id = views.parse_id(_first(form, "task"))
        try:
            task = await self.management.show_task(task_id)
            result = await self.management.retry_tasks(
                TaskSelection(reactor=task.reactor, source_ids=(task.source_id,)))
        except NotFound as exc:
            return self._redirect(target, "error", str(exc))
        except PyMongoError as exc:
            return self._redirect(target, "error", f"database error: {exc}")
        self._audit(request, "retry", reactor=task.reactor, task=display_id(task.id),
                    modified=result.modified)
        if not result.modified:
            return self._redirect(target, "error", f"task {display_id(task.id)} was not "
                                  "retried (its source document is gone)")
        return self._redirect(target, "ok", f"retried task {display_id(task.id)} "
                              f"({task.reactor}, source {display_id(task.source_id)})")

    async def retry_matching(self, request: Request) -> Response:
        """Retry every task matching the posted filters (at least one filter)."""
        form = await self._action_form(request)
        if isinstance(form, Response):
            return form
        try:
            filters = views.selection_from_form(form)
        except InvalidSelection as exc:
            return self._redirect("/tasks", "error", str(exc))
        target = filters.url()
        if not filters.has_selection:
            return self._redirect(target, "error", "choose at least one filter before "
                                  "retrying every matching task")
        try:
            result = await self.management.retry_tasks(filters.selection())
        except (InvalidSelection, UnknownReactor) as exc:
            return self._redirect(target, "error", str(exc))
        except PyMongoError as exc:
            return self._redirect(target, "error", f"database error: {exc}")
        self._audit(request, "retry_matching", filters=views.url("", filters.filter_params()),
                    modified=result.modified, selected=result.selected)
        return self._redirect(target, "ok", f"retried {result.modified} task(s) of "
                              f"{result.selected} matching")

    async def pause(self, request: Request) -> Response:
        """Pause a reactor on every instance (as ``runtime pause``)."""
        form = await self._action_form(request)
        if isinstance(form, Response):
            return form
        name = _first(form, "reactor")
        reason = _first(form, "reason").strip() or None
        target = _local_target(_first(form, "next"))
        try:
            state = await self.management.pause(name, reason)
        except UnknownReactor as exc:
            return self._redirect(target, "error", str(exc))
        except PyMongoError as exc:
            return self._redirect(target, "error", f"database error: {exc}")
        self._audit(request, "pause", reactor=name, reason=reason or "")
        return self._redirect(target, "ok", f"paused {name} by {state.by}"
                              + (f" ({reason})" if reason else ""))

    async def resume(self, request: Request) -> Response:
        """Resume a paused reactor (as ``runtime resume``)."""
        form = await self._action_form(request)
        if isinstance(form, Response):
            return form
        name = _first(form, "reactor")
        target = _local_target(_first(form, "next"))
        try:
            lifted = await self.management.resume(name)
        except UnknownReactor as exc:
            return self._redirect(target, "error", str(exc))
        except PyMongoError as exc:
            return self._redirect(target, "error", f"database error: {exc}")
        self._audit(request, "resume", reactor=name)
        return self._redirect(target, "ok", f"resumed {name}" if lifted is not None
                              else f"{name} was not paused")

    async def request_scan(self, request: Request) -> Response:
        """Ask the leader to reconcile a reactor (as ``runtime reconcile``)."""
        form = await self._action_form(request)
        if isinstance(form, Response):
            return form
        name = _first(form, "reactor")
        reason = _first(form, "reason").strip() or "dashboard request"
        target = _local_target(_first(form, "next"))
        try:
            await self.management.request_reconcile(name, reason)
        except UnknownReactor as exc:
            return self._redirect(target, "error", str(exc))
        except PyMongoError as exc:
            return self._redirect(target, "error", f"database error: {exc}")
        self._audit(request, "request_scan", reactor=name, reason=reason)
        return self._redirect(target, "ok", f"requested a reconciliation scan of {name}; "
                              "the leader picks it up within about a second")

    def _audit(self, request: Request, action: str, **fields: Any) -> None:
        log_event(log, logging.INFO, f"dashboard action {action}",
                  event=f"dashboard.{action}", client=_client(request), **fields)


# ---------------------------------------------------------------------- helpers


def _secure(response: Response, nonce: str) -> None:
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first(form: Form, key: str) -> str:
    values = form.get(key) or [""]
    return values[0]


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _current_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _local_target(target: str) -> str:
    """A redirect target on this server only (a path, not ``//host`` or a URL)."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 for c in target)):
        return "/"
    return target


async def _read_form(request: Request) -> Form | None:
    """An ``application/x-www-form-urlencoded`` body (any other type reads as an empty form,
    which fails the CSRF check); None when it is too large."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    if content_type != "application/x-www-form-urlencoded":
        return {}
    return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def create_app(management: Management, token: str | None = None, *, local_only: bool = True,
               refresh_ms: int = REFRESH_MS) -> Starlette:
    """The dashboard as an ASGI application.

    ``management`` reads and writes the deployment; ``token`` enables the mutating actions
    (None or empty: read-only); ``local_only`` serves only requests whose ``Host`` is a
    loopback name (set it when binding a loopback address).
    """
    dashboard = Dashboard(management, Guard(token or None, local_only), refresh_ms)

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not dashboard.guard.host_allowed(request):
                response: Response = HTMLResponse(
                    "<!doctype html><title>Bad host</title><p>This dashboard only answers "
                    "requests addressed to 127.0.0.1, localhost or [::1].</p>", 400)
                _secure(response, secrets.token_urlsafe(8))
                return response
            return await handler(request)
        return endpoint

    routes = [
        Route("/", guarded(dashboard.overview), methods=["GET"]),
        Route("/tasks", guarded(dashboard.tasks), methods=["GET"]),
        Route("/tasks/{ref:path}", guarded(dashboard.task), methods=["GET"]),
        Route("/login", guarded(dashboard.login), methods=["POST"]),
        Route("/logout", guarded(dashboard.logout), methods=["POST"]),
        Route("/actions/retry-task", guarded(dashboard.retry_task), methods=["POST"]),
        Route("/actions/retry-matching", guarded(dashboard.retry_matching), methods=["POST"]),
        Route("/actions/pause", guarded(dashboard.pause), methods=["POST"]),
        Route("/actions/resume", guarded(dashboard.resume), methods=["POST"]),
        Route("/actions/scan", guarded(dashboard.request_scan), methods=["POST"]),
    ]
    return Starlette(routes=routes)


__all__ = ["REFRESH_MS", "Dashboard", "create_app", "default_actor"]
