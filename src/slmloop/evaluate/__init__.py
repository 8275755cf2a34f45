"""Evaluation: answer the gold rows, score them with one metric registry, CIs, gates, paired comparisons."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "evaluate": "evaluate",
        "failed_gates": "evaluate",
        "answer_rows": "answers",
        "METRICS": "metrics",
        "HEADLINE": "metrics",
        "score_answers": "metrics",
        "compare_pair": "paired",
        "latest_evaluations": "results",
        "row_scores": "results",
        "write_eval_report": "report",
        "bootstrap_ci": "stats",
        "wilson_ci": "stats",
    },
)
