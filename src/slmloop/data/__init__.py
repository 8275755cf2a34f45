"""Data: import with per-row reasons, prepare an immutable dataset version, gold versions, leakage, reports."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "import_source": "importer",
        "inspect_source": "inspect",
        "prepare_dataset": "prepare",
        "load_dataset": "versions",
        "current_gold": "versions",
        "resolve_dataset": "versions",
        "DatasetSplits": "versions",
        "read_gold_file": "gold",
        "gold_add": "gold",
        "gold_remove": "gold",
        "gold_replace": "gold",
        "leakage_gate": "leakage",
        "contamination": "leakage",
        "write_data_report": "report",
        "diff_datasets": "report",
    },
)
