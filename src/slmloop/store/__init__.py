"""Project metadata (SQL) and artifacts (content-addressed files), written atomically."""

from slmloop.store.db import (
    AliasHistory,
    DatasetVersion,
    DriftReport,
    Evaluation,
    Event,
    GoldVersion,
    Import,
    Prediction,
    Release,
    RequestLog,
    Run,
    Store,
    utcnow,
)
from slmloop.store.files import (
    ObjectStore,
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)

__all__ = [
    "AliasHistory",
    "DatasetVersion",
    "DriftReport",
    "Evaluation",
    "Event",
    "GoldVersion",
    "Import",
    "ObjectStore",
    "Prediction",
    "Release",
    "RequestLog",
    "Run",
    "Store",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
    "utcnow",
]
