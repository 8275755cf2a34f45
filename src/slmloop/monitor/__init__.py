"""Monitoring: live traffic against the training data — drift tests and reports."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "monitor": "drift",
        "write_drift_report": "report",
    },
)
