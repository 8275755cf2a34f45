"""Starting the server: in this process (``slmloop serve``) or as a child process (demo, tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slmloop.errors import ModelError, ServeError
from slmloop.models.loading import pick_dtype
from slmloop.predict.answers import resolve_mode, unsupported
from slmloop.predict.constrain import decoding_schema
from slmloop.predict.targets import load_engine, resolve_release, resolve_target
from slmloop.project import STORE_DIR, Project
from slmloop.release.export import verify_release
from slmloop.serve.app import api_keys, create_app
from slmloop.serve.engine import ModelSlot, Predictor
from slmloop.store import Release

__all__ = ["ServerProcess", "build_app", "free_port", "load_predictor", "serve", "start_child", "stop_child"]


def load_predictor(project: Project, release_ref: str | int | None) -> Predictor:
    """The release ``release_ref`` (a version, an alias, or None: production, else newest) loaded to answer,
    after its files were checked against the checksums written at export (a changed release is refused)."""
    release = resolve_release(project, release_ref)
    changed = verify_release(project, release)
    if changed:
        raise ServeError(
            f"v{release.version} changed since it was exported and will not be served: {'; '.join(changed)}",
            hint="Export the run again (a new release), or restore the folder; `slmloop verify` checks it.",
        )
    target = resolve_target(project, f"release-{release.version}")
    m = project.manifest
    task = target.answering_task(project)
    common: dict[str, Any] = {
        "task": task,
        "name": f"{m.project.name}-v{release.version}",
        "release": release.version,
        "max_new_tokens": m.serve.max_new_tokens,
        "prompt": target.prompt,
        "companion": target.companion(),
        "mode": resolve_mode(task, m.eval.mode),
        "rank_margin": m.eval.rank_margin,
        "schema": decoding_schema(task, m.eval),
    }
    if common["companion"] is not None:  # load the embedding model now, not on the first request
        common["companion"].hints(task, [{"text": "warm-up", "input": "warm-up"}])
    if m.serve.engine == "vllm":
        return _vllm_predictor(project, release, common)
    try:
        engine = load_engine(target, m.serve.engine, pick_dtype(m.serve.precision))
    except ModelError as exc:
        raise ServeError(f"v{release.version} cannot be served with {m.serve.engine}: {exc}", hint=exc.hint) from None
    return Predictor(engine, **common)


def _vllm_predictor(project: Project, release: Release, common: dict[str, Any]) -> Predictor:
    """Start vLLM's OpenAI server on the merged weights (a child process) and answer through it."""
    import atexit
    import importlib.util

    import httpx

    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.engines import UpstreamEngine

    missing = unsupported(common["task"], common["mode"], common["companion"], ranks=False, scores_marks=False)
    if missing:
        raise ServeError(
            f"v{release.version} cannot be served with vLLM: its answers need an engine that can "
            f"{' and '.join(missing)}; vLLM here only generates text",
            hint="Serve it with --engine transformers or --engine llamacpp (both give the evaluated answers).",
        )
    if importlib.util.find_spec("vllm") is None:
        raise ServeError(
            "--engine vllm needs vLLM, which is not installed here",
            hint="On a GPU host: pip install vllm, then slmloop serve --engine vllm. "
            "On CPU use --engine transformers (default) or llamacpp.",
        )
    merged = project.locate(release.path) / "merged"
    if not (merged / "config.json").exists():
        raise ServeError(f"v{release.version} has no merged weights for vLLM", hint="Export with export.merged: true.")
    port, name = free_port(), str(common["name"])
    log_path = project.root / STORE_DIR / f"vllm-v{release.version}.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(merged),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        *project.manifest.serve.vllm_args,
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it as long as it lives
    proc = start_child(cmd, log)
    atexit.register(stop_child, proc)
    deadline = time.monotonic() + 900
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServeError(f"vLLM exited with code {proc.returncode}:\n{tail}", hint=f"Full log: {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_child(proc)
            raise ServeError("vLLM did not become healthy within 15 min", hint=f"See {log_path}.")
        time.sleep(1)
    tok = load_tokenizer(ResolvedModel(str(merged), str(merged), "local"))
    engine = UpstreamEngine(f"http://127.0.0.1:{port}/v1", name, tok, on_close=lambda: stop_child(proc))
    return Predictor(engine, **common)


def start_child(cmd: list[str], log: Any) -> subprocess.Popen[bytes]:
    """A child process that dies with this one: on Linux the kernel sends it SIGTERM when its parent dies,
    however the parent dies (a kill -9 included), so no GPU server outlives the slmloop that started it."""
    preexec = None
    if sys.platform.startswith("linux"):

        def preexec() -> None:
            import ctypes
            import signal

            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)


def stop_child(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` seconds; returns once the child is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build_app(
    project: Project, release_ref: str | int | None = None, *, alias: str | None = None
) -> tuple[Any, Predictor]:
    """The app serving ``release_ref``, or whatever ``alias`` points at (following its moves: hot swap).

    Without either, the ``production`` alias is followed if it exists, else the newest release is served.
    """
    cfg = project.manifest.serve
    if alias is None and release_ref is None and project.store.alias_target("production") is not None:
        alias = "production"
    predictor = load_predictor(project, alias if alias is not None else release_ref)
    slot = ModelSlot(predictor)
    if alias is not None and cfg.reload_interval > 0:
        followed = alias
        slot.watch(
            lambda: project.store.alias_target(followed),
            lambda version: load_predictor(project, version),
            cfg.reload_interval,
            # a vLLM server holds the GPU's memory: the old one stops before the new one starts
            exclusive=cfg.engine == "vllm",
        )
    app = create_app(slot, project.store, cfg, keys=api_keys(cfg, dict(os.environ)))
    return app, predictor


def serve(project: Project, release_ref: str | int | None, host: str, port: int, alias: str | None = None) -> None:
    import uvicorn

    app, predictor = build_app(project, release_ref, alias=alias)
    keys = "with API keys" if app.state.server.keys else "without API keys (anyone who can reach it may call it)"
    print(f"slmloop serve: {predictor.name} on http://{host}:{port} {keys}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}", hint="Pick another --port.") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``slmloop serve`` in a child process; ``with`` waits for /health and stops it after."""

    def __init__(
        self,
        project_dir: Path,
        release: int | None = None,
        port: int | None = None,
        alias: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.project_dir = project_dir
        self.release = release
        self.alias = alias
        self.extra_env = env or {}
        self.extra_args = extra_args or []
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or (project_dir / ".slmloop" / "serve.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "slmloop",
            "serve",
            "--project",
            str(self.project_dir),
            "--port",
            str(self.port),
        ]
        if self.release is not None:
            cmd += ["--release", str(self.release)]
        if self.alias is not None:
            cmd += ["--alias", self.alias]
        cmd += self.extra_args
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy(timeout=180)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ServeError(f"the server exited with code {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise ServeError(
            f"the server did not answer /health within {timeout:.0f} s", hint=f"See its log: {self.log_path}"
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
