"""Attacks that try to bring an erased concept back, and the concept rate they reach.

An attack edits what the models are given (prompt embeddings) or the models themselves, within a
budget, and reports the concept rate (the share of videos of prompts naming the concept that show it:
the toy classifier on toy runs, NudeNet on real ones) before and after, for three targets on the same
prompts and seeds: the base model, the base model with negative prompting (the concept phrase as the
negative prompt) and the erased model.

  python -m t2vu_jax.attack --run DIR --attack concept_vector|soft_prompt|resurgence [budget options]

or the `attack` stage of `run.py` (`--config.stages=...,attack,report`). Results go to
`attacks/<name>.json` of the run directory and its report.
"""
from t2vu_jax.attack.common import ATTACKS, AttackConfig, AttackContext, run_attack

__all__ = ["ATTACKS", "AttackConfig", "AttackContext", "run_attack"]
