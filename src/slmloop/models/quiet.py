"""Quiet library chatter while models load and run (load reports, progress bars, deprecation warnings)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence library chatter (load reports, progress bars, deprecation warnings)."""
    import transformers

    tlog = transformers.utils.logging
    old = tlog.get_verbosity()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loggers = [logging.getLogger(n) for n in ("peft", "accelerate", "sentence_transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(old)
        tlog.enable_progress_bar()
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)
