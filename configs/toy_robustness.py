"""The toy lab's robustness study (`docs/robustness.md` and its plot): a colour, a shape and a motion,
each erased by the paper's ∅ recipe, the default method, RECE and the robust option, then attacked with
every attack of `t2vu_jax.attack` at several budgets, beside the base model and negative prompting.

  python -m t2vu_jax.toy.experiments --config=configs/toy_robustness.py
  python -m t2vu_jax.toy.experiments --config=configs/toy_robustness.py:quick   # tiny sizes, a smoke test

The experiments config (`configs/toy_experiments.py`) with attacks; their budgets are the run config's
`attack` group (`config.erasure.attack`), e.g. `--config.erasure.attack.soft_steps=0,100,400`.
"""
import os

from configs import toy_experiments


def get_config(arg: str = ""):
  if arg not in ("", "quick"):
    raise ValueError(f"configs/toy_robustness.py takes no argument or 'quick', got {arg!r}")
  c = toy_experiments.get_config(arg)
  c.out = os.path.join(os.path.dirname(c.out), "robustness.md")
  c.concepts = "colour:red,shape:triangle,motion:left"
  c.variants = "paper target,full,RECE,robust option"
  c.attacks = "concept_vector,soft_prompt,resurgence"
  if arg == "quick":
    c.concepts = "colour:red"
    c.variants = "full,RECE"
    c.erasure.attack.update(dict(num_prompts=2, strengths="0,1", soft_steps="0,2", soft_train_prompts=2,
                                 resurgence_steps="0,2", resurgence_prompts=2))
  return c
