"""The bake-off's trials on Ray Tune, cut by its ASHA scheduler.

Every trial is the same normal run as locally (:func:`slmloop.graduate.bakeoff.train_trial`); it
reports the validation metric every ``min_epochs`` epochs and ASHA stops the ones behind at its
rungs (``min_epochs × eta^k``). The project folder must be reachable at the same path by every
Ray worker (one machine, or a shared file system); the SQLite store is written by one trial at a
time when the trials run one after another (the default on one machine). Ray keeps its own
experiment state next to the bake-off: running the command again restores it.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from slmloop.errors import ConfigError
from slmloop.graduate.bakeoff import Bakeoff, mark_run, save_state, trial_progress, trial_run, trial_spec
from slmloop.manifest import BakeoffConfig
from slmloop.project import Project

__all__ = ["ray_available", "run_ray"]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        return False
    return True


def _trainable(config: dict[str, Any]) -> None:
    """One trial inside a Ray worker: train, reporting each validation point to the scheduler."""
    from ray import tune

    from slmloop.graduate.bakeoff import train_trial
    from slmloop.project import open_project

    project = open_project(config["project"])
    metric = config["metric"]

    def report(entry: dict[str, Any]) -> None:
        # the last point is reported once the run is saved: at max_t the scheduler ends the trial at once
        if entry.get(metric) is not None and entry["epochs"] < config["epochs"] - 1e-6:
            tune.report({"score": float(entry[metric]), "epochs": float(entry["epochs"])})

    try:
        result = train_trial(project, {**config["spec"], "on_validation": report}, console=Console(stderr=True))
        points = [h for h in result["history"] if h.get(metric) is not None]
        if points:
            tune.report({"score": float(points[-1][metric]), "epochs": float(points[-1]["epochs"])})
    finally:
        project.close()


def _cpus_per_trial(ray: Any, requested: int | None) -> int:
    if requested:
        return requested
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return max(1, int(min(n["Resources"].get("CPU", 1) for n in nodes))) if nodes else 1


def run_ray(
    project: Project, bo: Bakeoff, address: str, console: Console, *, cpus_per_trial: int | None = None
) -> None:
    """Run ``bo``'s trials on Ray Tune with ASHA; fill in each trial's run, scores and status."""
    if not ray_available():
        raise ConfigError(
            "--ray needs Ray Tune, which is not installed",
            hint="pip install 'ray[tune]' (or run the bake-off locally without --ray).",
        )
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cfg = BakeoffConfig.model_validate(bo.config)
    longest = max(t.epochs for t in bo.trials)
    min_epochs = min(cfg.halving.min_epochs, longest) if cfg.halving else longest
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
        else:
            ray.init(address=address, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"could not start or reach Ray at {address!r}: {exc}",
            hint="--ray local starts one here; for a cluster pass its address (ray://host:10001 or auto).",
        ) from None
    try:
        scheduler = ASHAScheduler(
            time_attr="epochs",
            max_t=longest,  # type: ignore[arg-type]  # epochs: Ray's ASHA works with fractional time
            grace_period=min_epochs,  # type: ignore[arg-type]
            reduction_factor=cfg.halving.eta if cfg.halving else 2,
        )
        configs = {
            t.n: {
                "project": str(project.root),
                "metric": bo.metric,
                "epochs": t.epochs,
                "spec": trial_spec(bo, t, validate_every=min_epochs if cfg.halving else None),
            }
            for t in bo.trials
        }
        resources: dict[str, float] = {"cpu": float(_cpus_per_trial(ray, cpus_per_trial))}
        if ray.cluster_resources().get("GPU", 0) >= 1:
            resources["gpu"] = 1  # without it Ray hides the GPUs from the trial
        trainable = tune.with_resources(tune.with_parameters(_run_numbered, configs=configs), resources)
        storage = (project.bakeoffs_dir / bo.id / "ray").resolve()
        path = storage / "tune"
        if tune.Tuner.can_restore(str(path)):
            console.print(f"restoring the Ray Tune experiment in {path}")
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([t.n for t in bo.trials])},
                tune_config=tune.TuneConfig(
                    metric="score", mode="max" if bo.higher_is_better else "min", scheduler=scheduler
                ),
                run_config=tune.RunConfig(name="tune", storage_path=str(storage), verbose=1),
            )
        grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
        errors = {r.config["trial"]: str(r.error) for r in results if r.error is not None and r.config}
        settled = grid.num_terminated + grid.num_errors
    finally:
        ray.shutdown()
    if settled < len(bo.trials):  # Ctrl-C: Tune saved its state and returned; the next run restores it
        console.print(f"[yellow]{len(bo.trials) - settled} trial(s) unfinished: run the command again[/yellow]")
        raise KeyboardInterrupt
    _collect(project, bo, errors)


def _run_numbered(config: dict[str, Any], configs: dict[int, dict[str, Any]]) -> None:
    _trainable(configs[int(config["trial"])])


def _collect(project: Project, bo: Bakeoff, errors: dict[int, str]) -> None:
    """Each trial's run, validation points and fate (completed, cut by ASHA, failed) from the store."""
    for t in bo.trials:
        run = trial_run(project, bo.id, t.n)
        if run is None:
            t.status, t.error = "failed", errors.get(t.n, "the trial never started a run")
            continue
        t.run = run.name
        history, t.seconds = trial_progress(project, run)
        t.scores = [
            {"epochs": round(h["epochs"], 6), "value": float(h[bo.metric])}
            for h in history
            if h.get(bo.metric) is not None
        ]
        if run.status == "completed":
            t.status, t.best = "completed", (run.metrics or {}).get("best_value")
        elif t.n in errors:
            t.status, t.error = "failed", errors[t.n]
            mark_run(project, run.name, "failed")
        else:
            t.status = "pruned"
            mark_run(project, run.name, "pruned")
    save_state(project, bo)
