"""The forgetting guard: did task tuning cost the model its general abilities?

A small general-capability pack (by default 250 GSM8K questions with whole-number answers, shipped
in ``slmloop/evaluate/packs``) is put to the base model and to the fine-tuned one, without the
task's prompt, and scored two ways that work even for models too small to solve the questions:

* ``choice_accuracy``: the number the model finds most likely among four (the answer and three
  distractors) — chance is 0.25;
* ``solution_nll``: the mean negative log-likelihood per token of the reference worked solution —
  the most sensitive sign that the adapter bent the model's general language away.

Both are paired on the same rows (McNemar for the accuracy, a paired bootstrap for the NLL); a gate
(``eval.forgetting.max_drop`` / ``max_nll_rise``) bounds how much worse the fine-tuned model may be.
The base model's scores are cached per base model, pack and precision.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from slmloop.errors import ConfigError
from slmloop.manifest import ForgettingConfig
from slmloop.progress import status
from slmloop.project import Project
from slmloop.store import atomic_write_json

__all__ = ["PACKS", "forgetting_check", "load_pack", "score_pack"]

PACKS = {"gsm8k-numeric": "gsm8k-numeric.jsonl"}
QUESTION_SUFFIX = "\nAnswer with the number only."


def load_pack(name: str, rows: int | None = None, root: Path | None = None) -> list[dict[str, Any]]:
    """A built-in pack by name, or a JSONL file with question, answer, solution and choices per row."""
    if name in PACKS:
        text = resources.files("slmloop.evaluate").joinpath("packs", PACKS[name]).read_text(encoding="utf-8")
        where = f"built-in pack {name}"
    else:
        path = Path(name) if root is None or Path(name).is_absolute() else root / name
        if not path.exists():
            raise ConfigError(
                f"no forgetting pack {name!r}", hint=f"Use a built-in pack ({', '.join(PACKS)}) or a JSONL file."
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} line {n} is not JSON ({exc.msg})") from None
        missing = [k for k in ("question", "answer", "solution", "choices") if k not in row]
        if missing or str(row.get("answer")) not in [str(c) for c in row.get("choices", [])]:
            raise ConfigError(
                f"{where} line {n} needs question, answer, solution and choices (with the answer among them)",
                hint="See slmloop/evaluate/packs/README.md for the format.",
            )
        out.append(row)
    return out[:rows] if rows else out


def score_pack(model: Any, tok: Any, pack: list[dict[str, Any]], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per row: whether the answer is the likeliest choice, and the solution's NLL per token."""
    from slmloop.models.inference import continuation_logprobs
    from slmloop.models.loading import render_prompt

    prompts = [render_prompt(tok, [{"role": "user", "content": r["question"] + QUESTION_SUFFIX}]) for r in pack]
    flat_prompts = [p for p, r in zip(prompts, pack, strict=True) for _ in r["choices"]]
    flat_choices = [str(c) for r in pack for c in r["choices"]]
    choice_lp = continuation_logprobs(model, tok, flat_prompts, flat_choices, batch_size=batch_size)
    correct, k = [], 0
    for r in pack:
        scores = [lp for lp, _ in choice_lp[k : k + len(r["choices"])]]
        correct.append(str(r["choices"][int(np.argmax(scores))]) == str(r["answer"]))
        k += len(r["choices"])
    sol = continuation_logprobs(model, tok, prompts, [r["solution"] for r in pack], batch_size=batch_size)
    nll = [-lp / max(n, 1) for lp, n in sol]
    return {"correct": np.array(correct, dtype=bool), "nll": np.array(nll, dtype=float)}


def _base_scores(
    project: Project, cfg: ForgettingConfig, pack: list[dict[str, Any]], dtype: Any, console: Console
) -> dict[str, np.ndarray]:
    from slmloop.models.catalog import resolve_model
    from slmloop.predict.targets import ModelTarget, load_target

    base = resolve_model(project.manifest.model.base)
    digest = hashlib.sha256(json.dumps(pack, sort_keys=True).encode()).hexdigest()[:12]
    key = hashlib.sha256(f"{base.spec}:{base.path}:{digest}:{dtype}".encode()).hexdigest()[:16]
    cache = project.home / "cache" / f"forgetting-{key}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return {"correct": np.array(data["correct"], dtype=bool), "nll": np.array(data["nll"], dtype=float)}
    with status(console, f"forgetting pack: scoring the base model on {len(pack)} rows …"):
        model, tok = load_target(ModelTarget("base", base), dtype)
        scores = score_pack(model, tok, pack)
    atomic_write_json(cache, {"correct": scores["correct"].tolist(), "nll": scores["nll"].tolist()})
    return scores


def forgetting_check(
    project: Project, model: Any, tok: Any, cfg: ForgettingConfig, dtype: Any, console: Console | None = None
) -> dict[str, Any]:
    """The fine-tuned ``model`` against the base on the pack: both scores, the paired differences, the gate."""
    from slmloop.evaluate.stats import bootstrap_ci, mcnemar

    console = console or Console(stderr=True)
    pack = load_pack(cfg.pack, cfg.rows, project.root)
    base = _base_scores(project, cfg, pack, dtype, console)
    with status(console, f"forgetting pack: scoring the fine-tuned model on {len(pack)} rows …"):
        mine = score_pack(model, tok, pack)
    acc = mcnemar(base["correct"], mine["correct"])
    rise = mine["nll"] - base["nll"]
    rise_ci = bootstrap_ci(lambda idx: float(rise[idx].mean()), len(rise))
    drop = -acc.diff
    problems = []
    if cfg.max_drop is not None and drop > cfg.max_drop:
        problems.append(f"choice accuracy fell {drop:.3f} (more than {cfg.max_drop})")
    if cfg.max_nll_rise is not None and float(rise.mean()) > cfg.max_nll_rise:
        problems.append(f"solution NLL rose {float(rise.mean()):.3f} nats/token (more than {cfg.max_nll_rise})")
    return {
        "pack": cfg.pack,
        "rows": len(pack),
        "base": {"choice_accuracy": float(base["correct"].mean()), "solution_nll": float(base["nll"].mean())},
        "model": {"choice_accuracy": float(mine["correct"].mean()), "solution_nll": float(mine["nll"].mean())},
        "choice_accuracy_drop": drop,
        "choice_accuracy_ci": [-acc.ci[1], -acc.ci[0]],
        "choice_accuracy_p": acc.p_value,
        "solution_nll_rise": float(rise.mean()),
        "solution_nll_rise_ci": list(rise_ci),
        "required": cfg.required,
        "passed": not problems,
        "problems": problems,
    }
