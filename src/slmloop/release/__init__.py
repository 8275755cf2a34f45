"""Releases: exported, checksummed, self-describing bundles of a run."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "export_release": "export",
        "verify_release": "export",
    },
)
