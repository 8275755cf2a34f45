"""Releases: exported, checksummed, self-describing bundles of a run, and the aliases that point at them."""

from slmloop import lazy_api

__all__, __getattr__ = lazy_api(
    __name__,
    {
        "export_release": "export",
        "verify_release": "export",
        "promote": "registry",
        "rollback": "registry",
        "aliases": "registry",
        "alias_history": "registry",
        "write_gguf": "gguf",
        "release_parity": "parity",
    },
)
