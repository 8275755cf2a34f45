"""Graduating: bake-offs (local or Ray Tune), distillation, synthetic data and the forgetting pack."""
