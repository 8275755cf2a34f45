"""The model card (README.md) every release ships: what the model does, how well, on what, and its limits.

Written from the store at export time, so it states what was measured, never
what was hoped: the gold metrics with their intervals, the base model and the
cheap baselines scored on the same gold rows, the verdict of the paired test,
the training data and gold lineage, and the prompt the model expects.
"""

from __future__ import annotations

from typing import Any

from slmloop.evaluate.results import latest_evaluations
from slmloop.manifest import TaskConfig
from slmloop.metrics import HEADLINE
from slmloop.project import Project
from slmloop.store import Evaluation, Run

__all__ = ["model_card", "parity_lines"]

_USE = {
    "classification": "assigns one of the labels below to a text",
    "extraction": "reads a text and answers a JSON object of the fields below",
    "generation": "rewrites an input into an output in the style of its training data",
    "chat": "answers the last user turn of a conversation like its training conversations",
}


def _cell(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if not isinstance(value, int | float):
        return "–"
    ci = (metrics.get("ci") or {}).get(name)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _results_table(evaluations: list[Evaluation], names: tuple[str, ...], this: str) -> list[str]:
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for ev in evaluations:
        label = f"**{ev.model_ref} (this release)**" if ev.model_ref == this else ev.model_ref
        lines.append(f"| {label} | " + " | ".join(_cell(ev.metrics, n) for n in names) + " |")
    return lines


def _schema(task: TaskConfig) -> list[str]:
    if task.type == "classification" and task.label_list:
        labels = task.label_list
        shown = ", ".join(f"`{x}`" for x in labels[:40]) + (f" … ({len(labels)} in all)" if len(labels) > 40 else "")
        return [f"Labels ({len(labels)}): {shown}", ""]
    if task.type == "extraction" and task.field_list:
        required = set(task.required)
        fields = ", ".join(f"`{f}`" + (" (required)" if f in required else "") for f in task.field_list)
        return [f"Fields ({len(task.field_list)}, optional unless marked): {fields}", ""]
    return []


def _shortlist_lines(prompt: dict[str, Any]) -> list[str]:
    k, w = prompt.get("shortlist"), prompt.get("label_prior")
    lines: list[str] = []
    if w:
        lines = [
            f"Labels are ranked with a **label prior**: log P(model) + {w:g} x log P(prior), the prior a logistic",
            "regression over the request's all-MiniLM-L6-v2 embedding (`adapter/shortlist.npz`; the weight was",
            "chosen on the validation split). `slmloop serve` and `slmloop eval` apply it; a client that ranks the",
            "labels itself must too (`slmloop.predict.companion.load_companion`).",
            "",
        ]
    spans = prompt.get("span_prior")
    if spans:
        lines = [
            *lines,
            f"Answers are weighed with a **span prior**: a CRF tagger over {len(spans['fields'])} span field(s)",
            "(`adapter/shortlist.npz`). Every value the model or the tagger gives is rated by a judge (a logistic",
            "regression over who gives it and the tagger's probability of its span and of overlapping ones), fit on",
            f"the validation split; the values it rates {spans['threshold']:g} or more are kept. `slmloop serve`",
            "and `slmloop eval` apply it (`raw` is the weighed answer, `model_raw` the model's own); a client that",
            "calls the GGUF file directly gets the model's own answers (`slmloop.predict.spans.fuse_spans`).",
            "",
        ]
    if not k:
        return lines
    if prompt.get("task") == "extraction":
        return [
            *lines,
            f"The model reads **examples** after each request: its {k} most similar training request(s)",
            "with their answers (all-MiniLM-L6-v2 neighbours, index in `adapter/shortlist.npz`), appended to",
            "the user message as `\\n(similar request: INPUT -> ANSWER)`. `slmloop serve` and `slmloop eval` add",
            "them; a client that calls the GGUF file directly must add them too",
            "(`slmloop.predict.companion.load_companion`).",
            "",
        ]
    return [
        *lines,
        f"The model reads a **shortlist** after each request: the {k} labels of its most similar training",
        "requests (all-MiniLM-L6-v2 neighbours, index in `adapter/shortlist.npz`), appended to the user",
        "message as `\\n(similar requests: a, b, c)`. `slmloop serve` and `slmloop eval` add it; a client",
        "that calls the GGUF file directly must add it too (`slmloop.predict.companion.load_companion`).",
        "",
    ]


def _answer_lines(prompt: dict[str, Any]) -> list[str]:
    if prompt.get("answer") != "inline":
        return []
    return [
        "- answer format: inline. The model copies the request and marks each value where it occurs,",
        "  `[field: value]` (values that are not in the request are marked after it); `slmloop serve` and",
        "  `slmloop eval` turn that into the JSON object (`slmloop.predict.inline.unmark`), and so must a client that",
        "  calls the merged weights or the GGUF file directly.",
    ]


def model_card(
    project: Project,
    run: Run,
    version: int,
    task: TaskConfig,
    prompt: dict[str, Any],
    evaluation: Evaluation | None,
    gguf: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
) -> str:
    """The release's README.md, in Markdown."""
    name = project.manifest.project.name
    lines = [
        f"# {name} v{version}",
        "",
        f"A LoRA fine-tune of `{run.base_model}` that {_USE.get(task.type, 'does the task below')}.",
        f"Exported by slmloop from {run.name}.",
        "",
        "## Task",
        "",
        f"- type: {task.type}",
        f"- instruction: {task.instruction.strip() or '(none)'}",
        f"- prompt style: {prompt['style']} (the system message below is part of the model: send it as is)",
        *_answer_lines(prompt),
        "",
        *_schema(task),
        "System message:",
        "",
        "```",
        prompt.get("system") or "(none)",
        "```",
        "",
        *_shortlist_lines(prompt),
        "## Gold evaluation",
        "",
    ]
    if evaluation is None:
        lines += [
            "**Not evaluated.** No evaluation of this run on the project's gold set existed at export time;",
            f"run `slmloop eval --model v{version}` before promoting it.",
            "",
        ]
    else:
        names = tuple(n for n in HEADLINE.get(task.type, ()) if n in evaluation.metrics)
        others = [e for e in latest_evaluations(project, evaluation.gold_id) if e.model_ref != evaluation.model_ref]
        shown = [e for e in others if e.model_ref == "base" or e.model_ref.startswith("baseline:")] + [evaluation]
        conf = evaluation.metrics.get("confidence", 0.95)
        lines += [
            f"{evaluation.metrics.get('n', '?')} gold rows (`{evaluation.gold_id}`, never trained on), "
            f"{evaluation.name}; brackets are {conf:.0%} confidence intervals.",
            "",
            *_results_table(shown, names, evaluation.model_ref),
            "",
        ]
        verdict = (evaluation.metrics.get("vs_baseline") or {}).get("sentence")
        if verdict:
            lines += [f"Against the best cheap baseline: {verdict}", ""]
        subsets = evaluation.metrics.get("subsets") or {}
        if subsets.get("close_neighbour") and names:
            head = names[0]
            close, far = subsets["close_neighbour"], subsets["no_close_neighbour"]
            lines += [
                f"Gold rows with a close training paraphrase (cosine ≥ {subsets['threshold']}): "
                f"{subsets['close_share']:.0%}. {head} on those: {_cell(close, head)}; "
                f"on the rest: {_cell(far, head)}.",
                "",
            ]
        gates = evaluation.metrics.get("gates") or []
        if gates:
            lines += [
                "Gates: "
                + "; ".join(
                    f"{g['metric']} {g['op']} {g['threshold']}: " + ("passed" if g["passed"] else "FAILED")
                    for g in gates
                ),
                "",
            ]
    lines += parity_lines(parity)
    if gguf:
        lines += ["## GGUF (llama.cpp, Ollama)", ""]
        lines += [f"- `{entry['file']}` ({qtype})" for qtype, entry in gguf.items()]
        lines += ["", "`ollama create NAME -f gguf/Modelfile` makes an Ollama model of it.", ""]
    train = run.config.get("train", {})
    lines += [
        "## Lineage",
        "",
        f"- base model: `{run.base_model}`",
        f"- training data: `{run.dataset_id}`; gold set: `{run.gold_id}`",
        f"- run: {run.name}, recipe: "
        + ", ".join(f"{k} {train[k]}" for k in ("epochs", "learning_rate", "lora_r", "target_modules") if k in train),
        "",
        "## Intended use and limits",
        "",
        f"- Use it for the task above, on inputs like its training data (`{run.dataset_id}`). "
        "Inputs unlike them (other languages, domains, lengths) are out of scope: `slmloop monitor` "
        "measures how far live traffic drifts from the training data.",
        "- The figures above hold for the gold set; they are estimates with the intervals shown, "
        "not guarantees for every input.",
    ]
    if task.type == "classification":
        lines.append('- It always answers one of its labels; it cannot say "none of these" unless that is a label.')
    if task.type == "extraction":
        lines.append(
            "- Field values are copied from the text as the training data wrote them; it does not normalise "
            "dates, numbers or names unless its training answers did."
        )
    lines += ["", "Files and their sha256 are listed in `manifest.json`; `slmloop verify` re-checks them.", ""]
    return "\n".join(lines)


def parity_lines(parity: dict[str, Any] | None) -> list[str]:
    """The card's section on what each shipped file answers, against the evaluated answers."""
    lines = ["## Served as evaluated", ""]
    if parity is None:
        return [*lines, "Parity of the shipped files with the evaluated answers was NOT checked.", ""]
    lines += [
        f"Each file answered the first {parity['rows']} gold rows as a server asks them ({parity['mode']}), "
        f"compared with the answers of {parity['reference']}:",
        "",
        "| file | engine | same answer | metric | diff [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for name, e in parity["artifacts"].items():
        lo, hi = e["agreement_ci"]
        dlo, dhi = e["diff_ci"]
        lines.append(
            f"| `{name}` | {e['engine']} | {e['agreement']:.1%} [{lo:.1%}, {hi:.1%}] | {e['metric']} {e['value']:.3f} "
            f"(evaluated {e['reference_value']:.3f}) | {e['diff']:+.3f} [{dlo:+.3f}, {dhi:+.3f}] |"
        )
    return [*lines, ""]
