"""Toy-world erasure experiments (`t2vu_jax.toy.experiments`): every concept erased with the full method,
its ablations and the prompt anchor, against the base model and negative prompting.

  python -m t2vu_jax.toy.experiments --config=configs/toy_experiments.py
  python -m t2vu_jax.toy.experiments --config=configs/toy_experiments.py:quick   # tiny sizes, a smoke test
  python -m t2vu_jax.toy.experiments --config=configs/toy_experiments.py --config.concepts=shape:cross \\
      --config.erasure.optim.total_steps=300 --config.out=/tmp/cross.md

Every erasure is a run of `erasure`, the run config of `configs/toy.py` limited to the stages load,
encode and erase; the experiments set its model, prompt pools, seed and sampler, and each variant
its λs and anchor. Evaluation samples with `erasure.eval.steps` and `erasure.eval.guidance`.
"""
import dataclasses
import os

import ml_collections

from configs import toy
from t2vu_jax.toy.experiments import VARIANTS, PromptSetSizes


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.model = os.path.join(toy.ROOT, "t2vu_jax", "toy", "pretrained")  # a pretrained pixel-space toy pipeline
  c.out = os.path.join(toy.ROOT, "docs", "toy_results.md")  # markdown; the contact sheet goes beside it (.png)
  c.workdir = ""                   # keep the erasure job directories here (default: a temporary directory)
  # kind:value, comma-separated, one erasure each; "a+b" erases several in one run (one eraser set)
  c.concepts = "colour:red,shape:circle"
  c.variants = ",".join(VARIANTS)  # erasure rows, comma-separated names of `experiments.VARIANTS`
  c.update(dataclasses.asdict(PromptSetSizes()))  # seed, erase_per_wording, preserve_per_value, eval_videos
  c.attacks = ""                   # attacks on every row (`t2vu_jax.attack.ATTACKS`), comma-separated; budgets in
  #                                  erasure.attack; one concept per erasure (configs/toy_robustness.py)
  c.loc_sigma = 0.5                # noise level of the localization IoU column
  c.replacement_values = 0         # with anchor "replace": the n values after the concept's (cyclic), 0: all others
  c.sheet_scale = 6
  c.erasure = toy.get_config()
  c.erasure.stages = "load,encode,erase"
  if arg == "quick":
    c.concepts = "colour:red,colour:blue+shape:cross"
    c.variants = "full,no preservation,paper target"  # a row without a preservation set, one with objective overrides
    c.erase_per_wording, c.preserve_per_value, c.eval_videos = 1, 2, 2
    c.erasure.optim.total_steps = 1
    c.erasure.eraser.rank = 4
    c.erasure.batch_size = c.erasure.preserve_batch_size = 1
    c.erasure.trajectory.steps = 2
    c.erasure.eval.steps = 2
  elif arg:
    raise ValueError(f"configs/toy_experiments.py takes no argument or 'quick', got {arg!r}")
  return c
