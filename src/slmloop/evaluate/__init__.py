"""Evaluation: answer the gold rows, score them with one metric registry, CIs, gates, paired comparisons."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "evaluate": "evaluate",
        "failed_gates": "evaluate",
        "forgetting_check": "forgetting",
        "load_pack": "forgetting",
        "score_answers": "scoring",
        "compare_pair": "paired",
        "latest_evaluations": "results",
        "row_scores": "results",
        "write_eval_report": "report",
        "bootstrap_ci": "stats",
        "wilson_ci": "stats",
    },
)
