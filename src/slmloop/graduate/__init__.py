"""Graduating: bake-offs (local or Ray Tune), distillation, synthetic data and the forgetting pack."""

from slmloop.graduate.bakeoff import Bakeoff, list_bakeoffs, load_bakeoff, run_bakeoff
from slmloop.graduate.distill import Distilled, distill
from slmloop.graduate.forgetting import forgetting_check, load_pack
from slmloop.graduate.synth import synthesize

__all__ = [
    "Bakeoff",
    "Distilled",
    "distill",
    "forgetting_check",
    "list_bakeoffs",
    "load_bakeoff",
    "load_pack",
    "run_bakeoff",
    "synthesize",
]
