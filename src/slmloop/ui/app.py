"""``slmloop ui``: the whole loop in a browser, served by the same FastAPI stack as the model server.

Server-rendered pages (Jinja2, a few lines of JavaScript for filters and
confirmations). Every number on a page comes from the same library call the CLI
makes (:mod:`slmloop.ui.views`); promote and rollback go through
:func:`slmloop.release.registry.promote` / ``rollback``, so the gates are
enforced exactly as on the command line and every move lands in the alias history.

Auth: when the project's serve config has API keys (``serve.api_keys`` or the
``serve.api_keys_env`` variable), every page needs one — as ``Authorization:
Bearer``/``X-API-Key`` or once through ``/login``, which sets an HttpOnly cookie.
``read_only`` hides and refuses every action. Forms carry a per-process token
(and the cookie is SameSite=Strict), so another site cannot post to them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmloop.errors import ConfigError, GateError, NotFoundError, SlmloopError
from slmloop.project import Project
from slmloop.ui import views

__all__ = ["create_ui_app"]

COOKIE = "slmloop_key"
_STATUS = {NotFoundError: 404, GateError: 409, ConfigError: 400}


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


def create_ui_app(
    project: Project, *, keys: set[str] | frozenset[str] = frozenset(), read_only: bool = False
) -> FastAPI:
    """The dashboard of ``project``; ``keys`` (when any) are required, ``read_only`` refuses every action."""
    env = _templates()
    env.filters["project_relative"] = lambda stored: str(project.locate(stored).relative_to(project.home))
    csrf = secrets.token_urlsafe(24)
    app = FastAPI(title="slmloop dashboard", docs_url=None, redoc_url=None)

    def key_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.headers.get("x-api-key") or request.cookies.get(COOKIE)

    def valid(key: str | None) -> bool:
        return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        page = env.get_template(template).render(
            request=request, path=request.url.path, read_only=read_only, csrf=csrf, project=project, **context
        )
        return HTMLResponse(page, status_code=status_code)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        if keys and request.url.path not in ("/login", "/health") and not valid(key_of(request)):
            if "text/html" in request.headers.get("accept", ""):
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            return Response("an API key is required (Authorization: Bearer KEY)", status_code=401)
        return await call_next(request)

    @app.exception_handler(SlmloopError)
    async def slmloop_error(request: Request, exc: SlmloopError) -> HTMLResponse:
        return render(request, "error.html", _status(exc), message=exc.message, hint=exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return render(request, "error.html", exc.status_code, message=str(exc.detail), hint="")

    async def form(request: Request) -> dict[str, str]:
        """The posted form, after the read-only and anti-forgery checks."""
        if read_only:
            raise StarletteHTTPException(403, "this dashboard is read-only (started with --read-only)")
        data = {k: str(v) for k, v in (await request.form()).items()}
        if not hmac.compare_digest(data.get("csrf", "").encode(), csrf.encode()):
            raise StarletteHTTPException(403, "the form is stale or came from another site; reload the page")
        return data

    def who(request: Request) -> str | None:
        """Who moved an alias from here: the key's fingerprint (never the key), else the dashboard's user."""
        key = key_of(request)
        return f"ui (key {hashlib.sha256(key.encode()).hexdigest()[:8]})" if keys and key else None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "project": project.manifest.project.name}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=next, failed=False)

    @app.post("/login")
    async def login(request: Request) -> Response:
        data = {k: str(v) for k, v in (await request.form()).items()}
        target = data.get("next", "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        if not valid(data.get("key")):
            return render(request, "login.html", 401, next=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, data["key"], httponly=True, samesite="strict")
        return response

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        return render(request, "overview.html", **views.overview(project))

    @app.get("/data", response_class=HTMLResponse)
    def data(request: Request, old: str = "", new: str = "") -> HTMLResponse:
        from slmloop.data.report import diff_datasets

        diff = diff_datasets(project, old, new) if old and new else None
        return render(request, "data.html", diff=diff, old=old, new=new, **views.data_view(project))

    @app.get("/data/rejects/{ref}", response_class=HTMLResponse)
    def rejects(request: Request, ref: str, reason: str | None = None) -> HTMLResponse:
        return render(request, "rejects.html", **views.rejects_view(project, ref, reason))

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        return render(request, "runs.html", runs=views.runs_view(project))

    @app.get("/bakeoffs", response_class=HTMLResponse)
    def bakeoffs(request: Request) -> HTMLResponse:
        return render(request, "bakeoffs.html", bakeoffs=views.bakeoffs_view(project))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: int) -> HTMLResponse:
        return render(request, "run.html", **views.run_view(project, run_id))

    @app.get("/evals", response_class=HTMLResponse)
    def evaluations(request: Request) -> HTMLResponse:
        return render(request, "evals.html", **views.evaluations_view(project))

    @app.get("/evals/{evaluation_id}", response_class=HTMLResponse)
    def evaluation(request: Request, evaluation_id: int) -> HTMLResponse:
        return render(request, "eval.html", page=views.eval_view(project, evaluation_id))

    @app.get("/evals/{evaluation_id}/rows", response_class=HTMLResponse)
    def evaluation_rows(
        request: Request, evaluation_id: int, q: str = "", only: str = "all", label: str = "", page: int = 1
    ) -> HTMLResponse:
        rows = views.eval_rows(project, evaluation_id, query=q, only=only, label=label, page=page)
        return render(request, "rows.html", **rows)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str = "", b: str = "") -> HTMLResponse:
        listing = views.evaluations_view(project)
        result = views.compare_view(project, a, b) if a and b and a != b else None
        return render(request, "compare.html", a=a, b=b, result=result, choices=listing["current"])

    @app.get("/releases", response_class=HTMLResponse)
    def releases(request: Request, done: str = "") -> HTMLResponse:
        return render(request, "releases.html", done=done, refused=None, **views.releases_view(project))

    @app.post("/releases/promote")
    async def promote(request: Request) -> Response:
        from slmloop.release.registry import promote as do_promote

        data = await form(request)
        alias = data.get("alias", "").strip()
        try:
            row = do_promote(
                project,
                data.get("version", ""),
                alias,
                reason=data.get("reason", ""),
                force=data.get("force") == "on",
                who=who(request),
            )
        except GateError as exc:  # shown next to the form, with the forced promotion offered
            context = views.releases_view(project)
            refused = {"message": exc.message, "hint": exc.hint, **data}
            return render(request, "releases.html", 409, done="", refused=refused, **context)
        done = f"{row.alias} → v{row.version}" + (" (forced past failed gates)" if row.forced else "")
        return RedirectResponse(f"/releases?done={quote(done)}", status_code=303)

    @app.post("/releases/rollback")
    async def rollback(request: Request) -> Response:
        from slmloop.release.registry import rollback as do_rollback

        data = await form(request)
        row = do_rollback(project, data.get("alias", "").strip(), reason=data.get("reason", ""), who=who(request))
        done = f"{row.alias} rolled back to v{row.version} (from v{row.previous})"
        return RedirectResponse(f"/releases?done={quote(done)}", status_code=303)

    @app.get("/monitor", response_class=HTMLResponse)
    def monitor(request: Request) -> HTMLResponse:
        return render(request, "monitor.html", **views.monitor_view(project))

    @app.get("/monitor/history.png")
    def monitor_history() -> Response:
        from slmloop.monitor.report import plot_history
        from slmloop.store import DriftReport

        runs = [{"id": r.id, **r.stats} for r in project.store.list(DriftReport, DriftReport.id)]
        png = io.BytesIO()
        plot_history(runs, png)
        return Response(png.getvalue(), media_type="image/png")

    @app.post("/monitor/export")
    async def monitor_export(request: Request) -> Response:
        from slmloop.monitor.feedback import export_for_labelling

        data = await form(request)
        try:
            most_drifted = int(data.get("most_drifted", "50"))
        except ValueError:
            raise ConfigError("most_drifted must be a whole number", hint="e.g. 50") from None
        path = project.home / "exports" / f"monitor-export-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S-%f}.jsonl"
        n, _ = export_for_labelling(project, path, data.get("release") or None, most_drifted=most_drifted)
        headers = {
            "content-disposition": f'attachment; filename="{path.name}"',
            "x-slmloop-rows": str(n),
            "x-slmloop-file": str(path),
        }
        return Response(path.read_bytes(), media_type="application/x-ndjson", headers=headers)

    @app.get("/files/{path:path}")
    def files(path: str) -> FileResponse:
        """Plots and HTML reports the stages wrote (only under the project's reports and runs folders)."""
        home = project.home.resolve()
        target = (home / path).resolve()
        allowed = (project.reports_dir.resolve(), project.runs_dir.resolve(), project.bakeoffs_dir.resolve())
        if not any(target.is_relative_to(a) for a in allowed) or not target.is_file():
            raise StarletteHTTPException(404, f"no report file {path!r}")
        if target.suffix not in (".png", ".svg", ".html", ".json", ".jsonl"):
            raise StarletteHTTPException(404, f"{path!r} is not a report file")
        return FileResponse(target)

    return app
