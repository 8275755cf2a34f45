"""``slmloop ui``: the whole loop in a browser, served by the same FastAPI stack as the model server.

Server-rendered pages (Jinja2, a few lines of JavaScript for filters and
confirmations). Every number on a page comes from the same library call the CLI
makes (:mod:`slmloop.ui.views`); promote and rollback go through
:func:`slmloop.release.registry.promote` / ``rollback``, so the gates are
enforced exactly as on the command line and every move lands in the alias history.

Auth: with dashboard keys (the ``serve.ui_keys_env`` variable; the model server's API keys
do not open it) every page needs one — as ``Authorization: Bearer``/``X-API-Key``, or once
through ``/login``, which starts a session: the cookie holds a random token (HttpOnly,
SameSite=Strict, Secure over HTTPS, expiring after :data:`SESSION_S`), never the key, and
``/logout`` ends it. ``read_only`` hides and refuses every action. Forms carry a per-process
token, so another site cannot post to them, and a request naming a host the dashboard does not
answer to is refused (DNS rebinding).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from slmloop.errors import ConfigError, ConflictError, GateError, NotFoundError, SlmloopError
from slmloop.project import Project
from slmloop.ui import views

__all__ = ["LOCAL_HOSTS", "UIState", "create_ui_app"]

COOKIE = "slmloop_session"
_STATUS = {NotFoundError: 404, GateError: 409, ConflictError: 409, ConfigError: 400}


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return "–"
    return f"{value:.{digits}f}"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("slmloop.ui", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = _num
    env.filters["ci"] = _ci
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    env.filters["when"] = lambda d: f"{d:%Y-%m-%d %H:%M}" if d else ""
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["basename"] = lambda p: Path(str(p)).name
    return env


def _status(exc: SlmloopError) -> int:
    return next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)


@dataclass
class UIState:
    """What every page reads: the project, the templates, the keys, the anti-forgery token, the sessions."""

    project: Project
    env: Environment
    keys: frozenset[str]
    read_only: bool
    csrf: str
    #: signed-in browsers: session token → (the key's fingerprint, expiry on time.monotonic)
    sessions: dict[str, tuple[str, float]] = field(default_factory=dict)

    def identity(self, request: Request) -> str | None:
        """Who makes this request: ``key <fingerprint>`` for a valid key (a header, or the session a login
        made), else None."""
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if key is not None:
            return f"key {_fingerprint(key)}" if self.valid(key) else None
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is None or session[1] < time.monotonic():
            return None
        return session[0]

    def valid(self, key: str | None) -> bool:
        return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in self.keys)

    def sign_in(self, key: str) -> str:
        """A new session for a valid ``key``: a random token for the cookie (the key never leaves the form)."""
        now = time.monotonic()
        for token in [t for t, (_, until) in self.sessions.items() if until < now]:
            del self.sessions[token]
        token = secrets.token_urlsafe(32)
        self.sessions[token] = (f"key {_fingerprint(key)}", now + SESSION_S)
        return token

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        page = self.env.get_template(template).render(
            request=request,
            path=request.url.path,
            read_only=self.read_only,
            csrf=self.csrf,
            project=self.project,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    async def form(self, request: Request) -> dict[str, str]:
        """The posted form, after the read-only and anti-forgery checks."""
        if self.read_only:
            raise StarletteHTTPException(403, "this dashboard is read-only (started with --read-only)")
        data = {k: str(v) for k, v in (await request.form()).items()}
        if not hmac.compare_digest(data.get("csrf", "").encode(), self.csrf.encode()):
            raise StarletteHTTPException(403, "the form is stale or came from another site; reload the page")
        return data

    def who(self, request: Request) -> str | None:
        """Who moved an alias from here: the key's fingerprint (never the key), else the dashboard's user."""
        identity = self.identity(request) if self.keys else None
        return f"ui ({identity})" if identity else None


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


#: how long a signed-in browser stays signed in (seconds)
SESSION_S = 8 * 3600


def _ui(request: Request) -> UIState:
    state: UIState = request.app.state.ui
    return state


#: the names a dashboard answers to by default: a page on another site that rebinds its own name to
#: 127.0.0.1 sends that name as its Host, and is refused
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def create_ui_app(
    project: Project,
    *,
    keys: set[str] | frozenset[str] = frozenset(),
    read_only: bool = False,
    hosts: Sequence[str] = LOCAL_HOSTS,
) -> FastAPI:
    """The dashboard of ``project``; ``keys`` (when any) are required, ``read_only`` refuses every action, and
    a request whose Host header is none of ``hosts`` gets 400 (DNS rebinding)."""
    env = _templates()
    env.filters["project_relative"] = lambda stored: str(project.locate(stored).relative_to(project.home))
    app = FastAPI(title="slmloop dashboard", docs_url=None, redoc_url=None)
    app.state.ui = UIState(project, env, frozenset(keys), read_only, secrets.token_urlsafe(24))
    app.middleware("http")(_authenticate)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.add_exception_handler(SlmloopError, _slmloop_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    pages: dict[str, Callable[..., Any]] = {
        "/": _overview,
        "/data": _data,
        "/data/rejects/{ref}": _rejects,
        "/runs": _runs,
        "/bakeoffs": _bakeoffs,
        "/runs/{run_id}": _run,
        "/evals": _evaluations,
        "/evals/{evaluation_id}": _evaluation,
        "/evals/{evaluation_id}/rows": _evaluation_rows,
        "/compare": _compare,
        "/releases": _releases,
        "/monitor": _monitor,
        "/login": _login_page,
    }
    app.add_api_route("/health", _health, methods=["GET"])
    for path, page in pages.items():
        app.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/login", _login, methods=["POST"])
    app.add_api_route("/logout", _logout, methods=["POST"])
    app.add_api_route("/releases/promote", _promote, methods=["POST"])
    app.add_api_route("/releases/rollback", _rollback, methods=["POST"])
    app.add_api_route("/monitor/history.png", _monitor_history, methods=["GET"])
    app.add_api_route("/monitor/export", _monitor_export, methods=["POST"])
    app.add_api_route("/files/{path:path}", _files, methods=["GET"])
    return app


async def _authenticate(request: Request, call_next: Any) -> Response:
    ui = _ui(request)
    if ui.keys and request.url.path not in ("/login", "/health") and ui.identity(request) is None:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return Response("an API key is required (Authorization: Bearer KEY)", status_code=401)
    response: Response = await call_next(request)
    return response


async def _slmloop_error(request: Request, exc: SlmloopError) -> HTMLResponse:
    return _ui(request).render(request, "error.html", _status(exc), message=exc.message, hint=exc.hint)


async def _http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
    return _ui(request).render(request, "error.html", exc.status_code, message=str(exc.detail), hint="")


# ---------------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------------
def _health(request: Request) -> dict[str, str]:
    return {"status": "ok", "project": _ui(request).project.manifest.project.name}


def _login_page(request: Request, next: str = "/") -> HTMLResponse:
    return _ui(request).render(request, "login.html", next=next, failed=False)


async def _login(request: Request) -> Response:
    ui = _ui(request)
    data = {k: str(v) for k, v in (await request.form()).items()}
    target = data.get("next", "/")
    target = target if target.startswith("/") and not target.startswith("//") else "/"
    if not ui.valid(data.get("key")):
        return ui.render(request, "login.html", 401, next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE, ui.sign_in(data["key"]), max_age=int(SESSION_S), httponly=True, samesite="strict", secure=secure
    )
    return response


async def _logout(request: Request) -> Response:
    ui = _ui(request)
    data = {k: str(v) for k, v in (await request.form()).items()}
    if not hmac.compare_digest(data.get("csrf", "").encode(), ui.csrf.encode()):
        raise StarletteHTTPException(403, "the form is stale or came from another site; reload the page")
    ui.sessions.pop(request.cookies.get(COOKIE, ""), None)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _overview(request: Request) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "overview.html", **views.overview(ui.project))


def _data(request: Request, old: str = "", new: str = "") -> HTMLResponse:
    from slmloop.data.report import diff_datasets

    ui = _ui(request)
    diff = diff_datasets(ui.project, old, new) if old and new else None
    return ui.render(request, "data.html", diff=diff, old=old, new=new, **views.data_view(ui.project))


def _rejects(request: Request, ref: str, reason: str | None = None) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "rejects.html", **views.rejects_view(ui.project, ref, reason))


def _runs(request: Request) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "runs.html", runs=views.runs_view(ui.project))


def _bakeoffs(request: Request) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "bakeoffs.html", bakeoffs=views.bakeoffs_view(ui.project))


def _run(request: Request, run_id: int) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "run.html", **views.run_view(ui.project, run_id))


def _evaluations(request: Request) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "evals.html", **views.evaluations_view(ui.project))


def _evaluation(request: Request, evaluation_id: int) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "eval.html", page=views.eval_view(ui.project, evaluation_id))


def _evaluation_rows(
    request: Request, evaluation_id: int, q: str = "", only: str = "all", label: str = "", page: int = 1
) -> HTMLResponse:
    ui = _ui(request)
    rows = views.eval_rows(ui.project, evaluation_id, query=q, only=only, label=label, page=page)
    return ui.render(request, "rows.html", **rows)


def _compare(request: Request, a: str = "", b: str = "") -> HTMLResponse:
    ui = _ui(request)
    listing = views.evaluations_view(ui.project)
    result = views.compare_view(ui.project, a, b) if a and b and a != b else None
    return ui.render(request, "compare.html", a=a, b=b, result=result, choices=listing["current"])


def _releases(request: Request, done: str = "") -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "releases.html", done=done, refused=None, **views.releases_view(ui.project))


async def _promote(request: Request) -> Response:
    from slmloop.release.registry import promote as do_promote

    ui = _ui(request)
    data = await ui.form(request)
    alias = data.get("alias", "").strip()
    try:
        row = do_promote(
            ui.project,
            data.get("version", ""),
            alias,
            reason=data.get("reason", ""),
            force=data.get("force") == "on",
            who=ui.who(request),
        )
    except GateError as exc:  # shown next to the form, with the forced promotion offered
        context = views.releases_view(ui.project)
        refused = {"message": exc.message, "hint": exc.hint, **data}
        return ui.render(request, "releases.html", 409, done="", refused=refused, **context)
    done = f"{row.alias} → v{row.version}" + (" (forced past failed gates)" if row.forced else "")
    return RedirectResponse(f"/releases?done={quote(done)}", status_code=303)


async def _rollback(request: Request) -> Response:
    from slmloop.release.registry import rollback as do_rollback

    ui = _ui(request)
    data = await ui.form(request)
    expect = int(data["expect"]) if data.get("expect", "").isdigit() else None
    row = do_rollback(
        ui.project, data.get("alias", "").strip(), reason=data.get("reason", ""), who=ui.who(request), expect=expect
    )
    done = f"{row.alias} rolled back to v{row.version} (from v{row.previous})"
    return RedirectResponse(f"/releases?done={quote(done)}", status_code=303)


def _monitor(request: Request) -> HTMLResponse:
    ui = _ui(request)
    return ui.render(request, "monitor.html", **views.monitor_view(ui.project))


def _monitor_history(request: Request) -> Response:
    from slmloop.monitor.report import plot_history
    from slmloop.store import DriftReport

    project = _ui(request).project
    runs = [{"id": r.id, **r.stats} for r in project.store.list(DriftReport, DriftReport.id)]
    png = io.BytesIO()
    plot_history(runs, png)
    return Response(png.getvalue(), media_type="image/png")


async def _monitor_export(request: Request) -> Response:
    from slmloop.monitor.feedback import export_for_labelling

    ui = _ui(request)
    data = await ui.form(request)
    try:
        most_drifted = int(data.get("most_drifted", "50"))
    except ValueError:
        raise ConfigError("most_drifted must be a whole number", hint="e.g. 50") from None
    path = ui.project.home / "exports" / f"monitor-export-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S-%f}.jsonl"
    n, _ = export_for_labelling(ui.project, path, data.get("release") or None, most_drifted=most_drifted)
    headers = {
        "content-disposition": f'attachment; filename="{path.name}"',
        "x-slmloop-rows": str(n),
        "x-slmloop-file": str(path),
    }
    return Response(path.read_bytes(), media_type="application/x-ndjson", headers=headers)


def _files(request: Request, path: str) -> FileResponse:
    """Plots and HTML reports the stages wrote (only under the project's reports and runs folders)."""
    project = _ui(request).project
    home = project.home.resolve()
    target = (home / path).resolve()
    allowed = (project.reports_dir.resolve(), project.runs_dir.resolve(), project.bakeoffs_dir.resolve())
    if not any(target.is_relative_to(a) for a in allowed) or not target.is_file():
        raise StarletteHTTPException(404, f"no report file {path!r}")
    if target.suffix not in (".png", ".svg", ".html", ".json", ".jsonl"):
        raise StarletteHTTPException(404, f"{path!r} is not a report file")
    return FileResponse(target)
