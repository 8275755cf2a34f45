"""Graduating: bake-offs (local or Ray Tune), distillation, and synthetic data."""

from slmloop.graduate.bakeoff import Bakeoff, list_bakeoffs, load_bakeoff, run_bakeoff
from slmloop.graduate.distill import Distilled, distill
from slmloop.graduate.synth import synthesize

__all__ = [
    "Bakeoff",
    "Distilled",
    "distill",
    "list_bakeoffs",
    "load_bakeoff",
    "run_bakeoff",
    "synthesize",
]
