"""``slmloop demo``: the whole loop, for real, on the bundled SMS spam example.

    init → data import → data prepare → cheap baselines → eval base → train (LoRA)
    → eval fine-tuned (against base and the best baseline) → export v1 → serve
    → send traffic → monitor (same-domain, then shifted) → summary

Every stage is the same library call the CLI makes; nothing is simulated.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slmloop.project import EXAMPLES, init_project, open_project

__all__ = [
    "DemoResult",
    "run_demo",
    "summary_table",
]


@dataclass
class DemoResult:
    project_dir: Path
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    tuned: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    vs_baseline: str = ""
    release: int | None = None
    smoke: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, str] = field(default_factory=dict)
    comparison: str = ""


class _Clock:
    def __init__(self, result: DemoResult, console: Console) -> None:
        self.result, self.console = result, console

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, clock: _Clock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.clock.console.rule(f"[bold]{self.name}")

    def __exit__(self, *exc: object) -> None:
        self.clock.result.stages[self.name] = time.perf_counter() - self.t0


DEMO_WINDOW = 50  # requests per monitor window


def _traffic(name: str) -> list[str]:
    path = EXAMPLES["sms-spam"] / name
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _send(url: str, texts: list[str]) -> dict[str, Any]:
    import httpx

    ok, latencies = 0, []
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in texts:
            t0 = time.perf_counter()
            r = client.post("/v1/predict", json={"text": text})
            latencies.append((time.perf_counter() - t0) * 1000)
            ok += r.status_code == 200 and r.json().get("label") in ("ham", "spam")
    return {"sent": len(texts), "ok": ok, "p50_ms": statistics.median(latencies)}


def _smoke(url: str) -> dict[str, Any]:
    """The server answers the three endpoints and rejects a malformed request with a 4xx."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/health").status_code == 200
        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "WINNER! Claim your free prize now, call 09061701461"}],
                "max_tokens": 8,
            },
        )
        chat_ok = chat.status_code == 200 and bool(chat.json()["choices"][0]["message"]["content"])
        bad = client.post("/v1/predict", content=b'{"text": ', headers={"content-type": "application/json"})
        return {
            "health": health,
            "chat": chat_ok,
            "chat_answer": chat.json()["choices"][0]["message"]["content"] if chat_ok else "",
            "malformed_status": bad.status_code,
        }


def run_demo(directory: Path | None = None, console: Console | None = None) -> DemoResult:
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.evaluate.paired import compare_pair
    from slmloop.monitor.drift import monitor
    from slmloop.release.export import export_release
    from slmloop.serve.server import ServerProcess
    from slmloop.train.recipe import train

    console = console or Console(stderr=True)
    started = time.perf_counter()
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="slmloop-demo-"))
    result = DemoResult(project_dir=root)
    clock = _Clock(result, console)

    with clock.stage("1. init + import + prepare"):
        init_project(root, example="sms-spam")
        project = open_project(root)
        imp = import_source(project, project.manifest.data.sources[0]).record
        splits = prepare_dataset(project).splits
        c = splits.version.counts
        console.print(
            f"imported {imp.rows_read} rows ({imp.accepted} accepted, {imp.rejected} rejected) → "
            f"{splits.version.id}: train {c['train']}, validation {c['validation']}, gold {c['gold']} "
            f"(rejected: {c['rejected']})"
        )
    with clock.stage("2. cheap baselines and the base model on gold"):
        from slmloop.baselines import baselines_for

        for name in baselines_for(project.task):
            result.baselines[name] = evaluate(project, f"baseline:{name}", console=console).metrics
        base = evaluate(project, "base", console=console)
        result.base = base.metrics
    with clock.stage("3. train (LoRA SFT)"):
        run = train(project, console=console)
        console.print(
            f"{run.name}: {run.metrics['steps']} steps, {run.metrics['tokens_per_s']:.0f} tok/s, "
            f"validation loss {run.metrics['val_loss_first']:.3f} → {run.metrics['val_loss']:.3f}"
        )
    with clock.stage("4. evaluate the fine-tuned model on gold"):
        tuned = evaluate(project, run.name, console=console)
        result.tuned = tuned.metrics
        result.comparison = compare_pair(project, base, tuned).sentence
        result.vs_baseline = tuned.metrics.get("vs_baseline", {}).get("sentence", "")
        console.print(result.comparison)
        if result.vs_baseline:
            console.print(result.vs_baseline)
    with clock.stage("5. export release"):
        release = export_release(project, run.name, console=console)
        result.release = release.version
        console.print(f"release v{release.version}: {project.locate(release.path)}")
    with clock.stage("6. serve + traffic + monitor"), ServerProcess(root, release=release.version) as server:
        console.print(f"server up at {server.url}")
        result.smoke = _smoke(server.url)
        same = _send(server.url, _traffic("traffic_sms.txt"))
        result.smoke.update({"sms": same})
        _, same_drift = monitor(project, release.version, window=DEMO_WINDOW, console=console)
        shifted = _send(server.url, _traffic("traffic_hotels.txt"))
        result.smoke.update({"hotels": shifted})
        _, shifted_drift = monitor(project, release.version, last=shifted["sent"], window=DEMO_WINDOW, console=console)
        result.drift = {
            "sms": " ".join(w.verdict for w in same_drift.windows) or same_drift.verdict,
            "hotels": " ".join(w.verdict for w in shifted_drift.windows) or shifted_drift.verdict,
        }
    result.seconds = time.perf_counter() - started
    project.close()
    return result


def summary_table(result: DemoResult) -> Table:
    t = Table(title="slmloop demo · SMS spam · SmolLM2-135M-Instruct", title_justify="left")
    t.add_column("what")
    t.add_column("base", justify="right")
    t.add_column("fine-tuned", justify="right")

    def cell(m: dict, key: str) -> str:
        lo, hi = m.get("ci", {}).get(key, (float("nan"), float("nan")))
        return f"{m.get(key, float('nan')):.3f} [{lo:.2f}, {hi:.2f}]"

    for key in ("accuracy", "macro_f1"):
        t.add_row(f"gold {key} (95 % CI)", cell(result.base, key), f"[bold]{cell(result.tuned, key)}[/bold]")
    for name, m in result.baselines.items():
        t.add_row(f"baseline {name}: accuracy", "", cell(m, "accuracy"))
    s = result.smoke
    t.add_row("release", "", f"v{result.release}")
    smoke_ok = s.get("health") and s.get("chat") and s.get("malformed_status", 0) in range(400, 500)
    t.add_row(
        "server smoke",
        "",
        (
            f"{'ok' if smoke_ok else 'FAILED'}: {s['sms']['ok'] + s['hotels']['ok']}/"
            f"{s['sms']['sent'] + s['hotels']['sent']} predictions, p50 {s['sms']['p50_ms']:.0f} ms, "
            f"malformed → {s.get('malformed_status')}"
        )
        if "sms" in s
        else "not run",
    )
    t.add_row(f"drift per {DEMO_WINDOW} requests: SMS traffic", "", result.drift.get("sms", "?"))
    t.add_row(f"drift per {DEMO_WINDOW} requests: hotel traffic", "", result.drift.get("hotels", "?"))
    t.add_row("wall time", "", f"{result.seconds / 60:.1f} min")
    if result.comparison:
        t.caption = result.comparison + (f"\n{result.vs_baseline}" if result.vs_baseline else "")
    return t
