"""Bake-off: several training settings, ranked on the validation split, the winner judged on gold once.

Each trial is a normal run (``slmloop runs`` lists it, its config says ``origin: bakeoff``) scored on
the validation split — never on gold. Successive halving spends the budget where it pays: every trial
trains ``min_epochs``, the best 1/eta train on to ``min_epochs × eta``, and so on to the end of their
schedule (a paused run resumes from its checkpoint, so nothing is trained twice). Locally the trials
run one after another, each in its own process (its memory is handed back whole); with Ray
(``ray="local"`` or a cluster address) Ray Tune runs them under its ASHA scheduler.

The state lives in ``.slmloop/bakeoffs/bo-N/state.json``, written after every trial: a killed
bake-off continues where it stopped. The winner is evaluated on gold and compared with the incumbent
(the production release, else the newest run outside the bake-off, else the base model) by the
paired test; a table and a plot of the trials are written next to the state.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import select

from slmloop.errors import ConfigError, SlmloopError
from slmloop.graduate.report import describe_params, write_bakeoff_report
from slmloop.manifest import BakeoffConfig, RangeSpec, TrainConfig
from slmloop.project import Project
from slmloop.store import Evaluation, Run, atomic_write_json, utcnow

__all__ = [
    "Bakeoff",
    "Trial",
    "draw_trials",
    "list_bakeoffs",
    "load_bakeoff",
    "mark_run",
    "run_bakeoff",
    "rungs",
    "save_state",
    "train_trial",
    "trial_overrides",
    "trial_progress",
    "trial_run",
    "trial_spec",
]

PATIENCE_OFF = 10**6  # early stopping only tracks the best validation point in a trial
EVAL_AT_RUNGS = 10**9  # no periodic validation: trials are scored at their rungs and at the end


@dataclass
class Trial:
    n: int
    params: dict[str, Any]  # the train: settings this trial changes
    epochs: float  # its whole schedule
    status: str = "pending"  # pending | running | paused | completed | pruned | failed
    run: str | None = None
    scores: list[dict[str, float]] = field(default_factory=list)  # {"epochs", "value"} at each rung
    seconds: float = 0.0
    error: str | None = None
    best: float | None = None  # a completed trial: its best validation point, which its adapter keeps

    @property
    def score(self) -> float | None:
        if self.status == "completed" and self.best is not None:
            return self.best
        return self.scores[-1]["value"] if self.scores else None

    @property
    def reached(self) -> float:
        return self.scores[-1]["epochs"] if self.scores else 0.0


@dataclass
class Bakeoff:
    id: str
    created_at: str
    metric: str
    higher_is_better: bool
    config: dict[str, Any]  # the bakeoff: section it was started with
    trials: list[Trial]
    backend: str = "local"
    #: what every trial trains on, fixed when the bake-off starts (a rerun refuses other inputs)
    dataset_id: str | None = None
    train_base: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    rungs_done: int = 0  # rungs whose cut is decided: a continued bake-off never cuts twice
    winner: int | None = None
    incumbent: str | None = None
    gold: dict[str, Any] | None = None  # the winner's and the incumbent's gold evaluations, the paired test
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bakeoff:
        return cls(**{**d, "trials": [Trial(**t) for t in d["trials"]]})


# ---------------------------------------------------------------------------------------------
# the trials
# ---------------------------------------------------------------------------------------------
def _draw(spec: list[Any] | RangeSpec, rng: random.Random) -> Any:
    if isinstance(spec, list):
        return rng.choice(spec)
    if spec.log:
        v = math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
    else:
        v = rng.uniform(spec.low, spec.high)
    return round(v) if spec.integer else float(f"{v:.3g}")


def draw_trials(cfg: BakeoffConfig, train: TrainConfig) -> list[dict[str, Any]]:
    """The settings to try: the manifest's own first (if asked), then every combination of the space when
    there are no more than ``cfg.trials`` (lists only), else a seeded draw without repeats."""
    base = train.model_dump()
    seen: list[dict[str, Any]] = []

    def add(params: dict[str, Any]) -> None:
        changed = {k: v for k, v in params.items() if base.get(k) != v}
        if changed not in seen:
            seen.append(changed)

    if cfg.include_default:
        add({})
    keys = sorted(cfg.space)
    if all(isinstance(cfg.space[k], list) for k in keys):
        whole = list(seen)
        for combo in itertools.product(*(cfg.space[k] for k in keys)):
            changed = {k: v for k, v in zip(keys, combo, strict=True) if base.get(k) != v}
            if changed not in whole:
                whole.append(changed)
        if len(whole) <= cfg.trials:  # the whole grid (with the manifest's settings) fits
            return whole
    rng = random.Random(cfg.seed)
    for _ in range(cfg.trials * 50):
        if len(seen) >= cfg.trials:
            break
        add({k: _draw(cfg.space[k], rng) for k in keys})
    return seen


def rungs(cfg: BakeoffConfig, longest: float) -> list[float]:
    """Epochs at which trials are cut: min_epochs × eta^k below the longest schedule, then the end."""
    if cfg.halving is None:
        return [longest]
    out: list[float] = []
    b = cfg.halving.min_epochs
    while b < longest - 1e-9:
        out.append(round(b, 6))
        b *= cfg.halving.eta
    return [*out, longest]


# ---------------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------------
def save_state(project: Project, bo: Bakeoff) -> None:
    atomic_write_json(project.bakeoffs_dir / bo.id / "state.json", bo.to_dict())


def load_bakeoff(project: Project, ref: str) -> Bakeoff:
    path = project.bakeoffs_dir / ref / "state.json"
    if not path.exists():
        known = ", ".join(sorted(p.parent.name for p in project.bakeoffs_dir.glob("*/state.json"))) or "none yet"
        raise ConfigError(f"no bake-off {ref!r}", hint=f"Bake-offs of this project: {known}.")
    return Bakeoff.from_dict(json.loads(path.read_text()))


def list_bakeoffs(project: Project) -> list[Bakeoff]:
    found = sorted(project.bakeoffs_dir.glob("bo-*/state.json"), key=lambda p: int(p.parent.name.removeprefix("bo-")))
    return [Bakeoff.from_dict(json.loads(p.read_text())) for p in found]


def _inputs(project: Project, init_from: str | None) -> dict[str, Any]:
    """What the trials train on: the newest dataset version, the manifest's train: section, the warm start."""
    from slmloop.data.versions import resolve_dataset

    return {
        "dataset_id": resolve_dataset(project).id,
        "train_base": project.manifest.train.model_dump(mode="json"),
        "init_from": init_from,
    }


def _new(project: Project, cfg: BakeoffConfig, metric: str, backend: str, init_from: str | None = None) -> Bakeoff:
    from slmloop.metrics import METRICS

    train = project.manifest.train
    trials = []
    for n, params in enumerate(draw_trials(cfg, train), start=1):
        epochs = float(params.get("epochs", train.epochs))
        trials.append(Trial(n=n, params=params, epochs=epochs))
    existing = list_bakeoffs(project)
    number = 1 + max((int(b.id.removeprefix("bo-")) for b in existing), default=0)
    better = METRICS[metric].higher_is_better if metric in METRICS else True
    bo = Bakeoff(
        f"bo-{number}",
        utcnow().isoformat(),
        metric,
        better,
        cfg.model_dump(mode="json"),
        trials,
        backend,
        **_inputs(project, init_from),
    )
    save_state(project, bo)
    return bo


def _unfinished(project: Project, cfg: BakeoffConfig, init_from: str | None) -> Bakeoff | None:
    """The newest unfinished bake-off started with the same section; it must also find the same inputs."""
    found = [b for b in list_bakeoffs(project) if not b.finished]
    if not found or found[-1].config != json.loads(json.dumps(cfg.model_dump(mode="json"))):
        return None
    bo = found[-1]
    now = _inputs(project, init_from)
    changed = [k for k in now if now[k] != getattr(bo, k)]
    if changed:
        raise ConfigError(
            f"{bo.id} is unfinished but its inputs changed since it started ({', '.join(changed)}): its trials "
            "would be ranked against trials trained on something else",
            hint=f"Restore them to finish {bo.id}, or start a new bake-off with --new.",
        )
    return bo


# ---------------------------------------------------------------------------------------------
# one trial, in its own process
# ---------------------------------------------------------------------------------------------
def trial_spec(bo: Bakeoff, trial: Trial, **extra: Any) -> dict[str, Any]:
    """What a trial's process needs: its bake-off, its settings, the pinned dataset and warm start."""
    return {
        "bakeoff": bo.id,
        "trial": trial.n,
        "overrides": trial_overrides(bo, trial),
        "dataset_id": bo.dataset_id,
        "init_from": bo.init_from,
        **extra,
    }


def trial_overrides(bo: Bakeoff, trial: Trial) -> dict[str, Any]:
    es = {"metric": bo.metric, "patience": PATIENCE_OFF}
    rows = int(bo.config["validation_rows"])
    return {**trial.params, "early_stopping": es, "validation_rows": rows, "eval_every": EVAL_AT_RUNGS}


def trial_run(project: Project, bo_id: str, n: int) -> Run | None:
    """The newest run a trial started (found by the origin recorded in its config)."""
    with project.store.session() as s:
        for run in s.scalars(select(Run).order_by(Run.id.desc())):
            origin = (run.config or {}).get("origin") or {}
            if origin.get("bakeoff") == bo_id and origin.get("trial") == n:
                s.expunge(run)
                return run
    return None


def _resumable(project: Project, run: Run | None) -> bool:
    from slmloop.train.checkpoint import latest_checkpoint

    return (
        run is not None
        and run.status in ("paused", "running", "interrupted", "failed")
        and run.path is not None
        and latest_checkpoint(project.locate(run.path)) is not None
    )


def train_trial(project: Project, spec: dict[str, Any], console: Console | None = None) -> dict[str, Any]:
    """Train one trial up to ``spec['pause_at']`` epochs (None: to the end), resuming its run if it has
    one; the result: run name, status, and the validation metric at each evaluation."""
    from slmloop.train.recipe import train

    run = trial_run(project, spec["bakeoff"], spec["trial"])
    resume = run.name if run is not None and _resumable(project, run) else None
    if run is not None and resume is None and run.status in ("running", "interrupted"):
        mark_run(project, run.name, "failed")  # stopped before its first checkpoint: a new run replaces it
    if run is not None and resume is None and run.status == "completed":
        done = run
    else:
        done = train(
            project,
            None if resume else spec["overrides"],
            console=console,
            pause_at=spec.get("pause_at"),
            validate_every=spec.get("validate_every"),
            on_validation=spec.get("on_validation"),
            resume=resume,
            init_from=None if resume else spec.get("init_from"),
            dataset_id=None if resume else spec.get("dataset_id"),
            origin={"bakeoff": spec["bakeoff"], "trial": spec["trial"]},
        )
    history, seconds = trial_progress(project, done)
    best = (done.metrics or {}).get("best_value") if done.status == "completed" else None
    return {"run": done.name, "status": done.status, "history": history, "best": best, "seconds": seconds}


def trial_progress(project: Project, run: Run) -> tuple[list[dict[str, Any]], float]:
    """A run's validation points with their epochs (from its trace: they survive pauses and resumes), and
    its training seconds so far."""
    from slmloop.train.tracking import read_trace

    trace = read_trace(project.locate(run.path)) if run.path else []
    steps_per_epoch = (run.config or {}).get("forecast", {}).get("steps_per_epoch") or 1
    history = [{**e, "epochs": e["step"] / steps_per_epoch} for e in trace if "val_loss" in e]
    return history, float(trace[-1]["elapsed_s"]) if trace else 0.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the trial's process gets SIGTERM when the bake-off's process dies (no orphan keeps training)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_in_process(project: Project, spec: dict[str, Any]) -> dict[str, Any]:
    """``python -m slmloop.graduate.trial``: the trial's memory is handed back whole when it ends."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "project": str(project.root), "result": str(result_path)}))
        cmd = [sys.executable, "-m", "slmloop.graduate.trial", str(spec_path)]
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too: let it record its run as interrupted
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
        if code == 130:
            raise KeyboardInterrupt
        if not result_path.exists():
            return {"status": "failed", "error": f"the trial's process exited with code {code}"}
        return dict(json.loads(result_path.read_text()))


# ---------------------------------------------------------------------------------------------
# local successive halving
# ---------------------------------------------------------------------------------------------
def _score_at(result: dict[str, Any], metric: str) -> dict[str, float] | None:
    points = [h for h in result.get("history", []) if h.get(metric) is not None]
    return {"epochs": round(points[-1]["epochs"], 6), "value": float(points[-1][metric])} if points else None


def _advance(project: Project, bo: Bakeoff, trial: Trial, budget: float, console: Console) -> None:
    target = min(budget, trial.epochs)
    if trial.reached >= target - 1e-6 and trial.status in ("paused", "completed"):
        return
    console.rule(f"{bo.id} · trial {trial.n}/{len(bo.trials)} · {describe_params(trial.params)} · to epoch {target:g}")
    trial.status = "running"
    save_state(project, bo)
    spec = trial_spec(bo, trial, pause_at=None if target >= trial.epochs - 1e-6 else target)
    result = _run_in_process(project, spec)
    if result.get("status") not in ("paused", "completed"):
        trial.status, trial.error = "failed", result.get("error") or f"run ended {result.get('status')}"
        console.print(f"[red]trial {trial.n} failed: {trial.error}[/red]")
    else:
        trial.status, trial.run, trial.seconds = result["status"], result["run"], result["seconds"]
        trial.best = result.get("best")
        point = _score_at(result, bo.metric)
        if point is not None and (not trial.scores or trial.scores[-1]["epochs"] != point["epochs"]):
            trial.scores.append(point)
        console.print(
            f"trial {trial.n}: {bo.metric} {trial.score if trial.score is not None else float('nan'):.4f} "
            f"at epoch {trial.reached:g} ({trial.run}, {trial.status})"
        )
    save_state(project, bo)


def _rank_key(bo: Bakeoff, t: Trial, at: float | None = None) -> float:
    """Sort key, best first: the trial's score (at epoch ``at`` or before, for a rung's ranking)."""
    if at is None:
        value = t.score
    else:
        points = [p for p in t.scores if p["epochs"] <= at + 1e-6]
        value = points[-1]["value"] if points else None
    if value is None:
        return math.inf
    return -value if bo.higher_is_better else value


def _run_local(project: Project, bo: Bakeoff, console: Console) -> None:
    cfg = BakeoffConfig.model_validate(bo.config)
    ladder = rungs(cfg, max(t.epochs for t in bo.trials))
    eta = cfg.halving.eta if cfg.halving else 1
    for k in range(bo.rungs_done, len(ladder)):  # a continued bake-off starts at the rung it stopped in
        budget = ladder[k]
        alive = [t for t in bo.trials if t.status in ("pending", "running", "paused")]
        # trials that finished their schedule at this rung compete in its ranking too
        floor = ladder[k - 1] if k else 0.0
        finishing = [t for t in bo.trials if t.status == "completed" and floor < t.reached <= budget + 1e-6]
        for t in alive:
            _advance(project, bo, t, budget, console)
        if k < len(ladder) - 1:
            # the best 1/eta of this rung go on, ranked by the score each reached at this rung
            numbers = {t.n for t in [*alive, *finishing]}
            here = [t for t in bo.trials if t.n in numbers and t.status in ("paused", "completed")]
            ranked = sorted(here, key=lambda t: _rank_key(bo, t, at=budget))
            for t in ranked[math.ceil(len(ranked) / eta) :]:
                if t.status == "paused":
                    t.status = "pruned"
                    mark_run(project, t.run, "pruned")
        bo.rungs_done = k + 1
        save_state(project, bo)


def mark_run(project: Project, run_name: str | None, status: str) -> None:
    if run_name is None:
        return
    with project.store.session() as s:
        row = project.store.one(s, Run, int(run_name.removeprefix("run-")))
        if row.status != "completed":
            row.status = status


# ---------------------------------------------------------------------------------------------
# the winner on gold
# ---------------------------------------------------------------------------------------------
def _incumbent(project: Project, bo: Bakeoff, against: str | None) -> str:
    if against:
        if against.startswith(("endpoint:", "live:", "baseline:")):
            return against
        from slmloop.predict.targets import resolve_target

        return resolve_target(project, against).ref  # v2 → release-2, latest → run-N: stored evaluations match
    if project.store.alias_target("production") is not None:
        version = project.store.alias_target("production")
        return f"release-{version}"
    trial_runs = {t.run for t in bo.trials}
    with project.store.session() as s:
        for run in s.scalars(select(Run).where(Run.status == "completed").order_by(Run.id.desc())):
            if run.name not in trial_runs and not (run.config or {}).get("origin"):
                return run.name
    default = next((t for t in bo.trials if not t.params and t.status == "completed"), None)
    return default.run if default is not None and default.run else "base"


def _judge_on_gold(project: Project, bo: Bakeoff, against: str | None, console: Console) -> None:
    from slmloop.evaluate.evaluate import evaluate, stored_or_new
    from slmloop.evaluate.paired import compare_pair

    done = [t for t in bo.trials if t.status == "completed" and t.score is not None]
    if not done:
        raise SlmloopError("no trial completed", hint=f"See each trial's error: `slmloop bakeoff --show {bo.id}`.")
    winner = min(done, key=lambda t: _rank_key(bo, t))
    bo.winner = winner.n
    assert winner.run is not None
    console.rule(f"{bo.id} · winner: trial {winner.n} ({winner.run}) on gold")
    mine = _newest_eval(project, winner.run) or evaluate(project, winner.run, console=console)
    bo.incumbent = _incumbent(project, bo, against)
    record: dict[str, Any] = {"winner_eval": mine.name, "winner_metrics": _headline(mine)}
    if bo.incumbent != winner.run:
        other = stored_or_new(project, bo.incumbent, mine.gold_id, project.manifest.eval, console)
        c = compare_pair(project, other, mine)
        record.update(
            incumbent_eval=other.name,
            incumbent_metrics=_headline(other),
            metric=c.metric,
            diff=c.test.diff,
            ci=list(c.test.ci),
            p_value=c.test.p_value,
            test=c.test.test,
            verdict=c.verdict,
            sentence=c.sentence,
        )
    else:
        record.update(verdict="the winner is the incumbent", sentence="The incumbent won its own bake-off.")
    bo.gold = record
    save_state(project, bo)


def _newest_eval(project: Project, ref: str) -> Evaluation | None:
    from slmloop.data.versions import current_gold
    from slmloop.evaluate.results import newest_evaluation

    gold = current_gold(project)
    return newest_evaluation(project, [ref], gold.id if gold else None)


def _headline(e: Evaluation) -> dict[str, Any]:
    from slmloop.metrics import HEADLINE

    m = e.metrics
    key = HEADLINE.get(m.get("task", {}).get("type", ""), ["accuracy"])[0]
    return {"metric": key, "value": m.get(key), "ci": m.get("ci", {}).get(key)}


# ---------------------------------------------------------------------------------------------
# the whole bake-off
# ---------------------------------------------------------------------------------------------
def run_bakeoff(
    project: Project,
    *,
    cfg: BakeoffConfig | None = None,
    ray: str | None = None,
    against: str | None = None,
    init_from: str | None = None,
    new: bool = False,
    console: Console | None = None,
) -> Bakeoff:
    """Run (or continue) a bake-off: trials on validation, the winner against the incumbent on gold."""
    from slmloop.data.versions import load_dataset
    from slmloop.metrics import HEADLINE

    console = console or Console(stderr=True)
    cfg = cfg or project.manifest.bakeoff
    metric = cfg.metric or HEADLINE[project.task.type][0]
    if not load_dataset(project).validation:
        raise ConfigError(
            "the dataset version has no validation rows: a bake-off ranks its trials on them (never on gold)",
            hint="Set data.split.validation (e.g. 0.05) and run `slmloop data prepare` again.",
        )
    bo = None if new else _unfinished(project, cfg, init_from)
    if bo is None:
        bo = _new(project, cfg, metric, "ray" if ray else "local", init_from)
        console.print(f"[bold]{bo.id}[/bold]: {len(bo.trials)} trials, ranked by validation {metric}")
    else:
        done = sum(t.status in ("completed", "pruned", "failed") for t in bo.trials)
        console.print(f"[bold]continuing {bo.id}[/bold]: {done} of {len(bo.trials)} trials settled")
    if ray:
        from slmloop.graduate.tune import run_ray

        run_ray(project, bo, ray, console)
    else:
        _run_local(project, bo, console)
    _judge_on_gold(project, bo, against, console)
    bo.finished = True
    save_state(project, bo)
    write_bakeoff_report(project, bo)
    return bo
