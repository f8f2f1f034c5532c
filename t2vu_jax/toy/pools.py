"""Write the JSONL prompt pools of a toy-world erasure run (what `configs/toy.py` ships).

  python -m t2vu_jax.toy.pools --concept colour:red

Writes, next to the other shipped pools, t2vu_jax/erase/pools/toy_<value>.jsonl (the value with its
training wordings over every template) and toy_<value>_preserve.jsonl (the other values of its kind),
and configs/prompts/toy_<value>_eval.jsonl (evaluation prompts disjoint from both: the value with
training wordings, with its held-out wording, and the other values, interleaved so any prefix mixes
them). The sets are `experiments.concept_sets` at the default `PromptSetSizes`.
"""
from __future__ import annotations

import argparse
import itertools
import os

from t2vu_jax.toy.experiments import SETS, PromptSetSizes, concept_sets, parse_concepts, write_pool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POOLS = os.path.join(ROOT, "t2vu_jax", "erase", "pools")
EVAL = os.path.join(ROOT, "configs", "prompts")


def write_run_pools(kind: str, value: str, pools: str = POOLS, evaluation: str = EVAL,
                    sizes: PromptSetSizes = PromptSetSizes()) -> dict[str, str]:
  """Write the three pools of erasing `kind` = `value`; returns name -> path."""
  sets = concept_sets(kind, value, sizes)
  mixed = [p.entry(kind) for group in itertools.zip_longest(*(sets.evaluation[s].prompts for s in SETS))
           for p in group if p is not None]
  for d in (pools, evaluation):
    os.makedirs(d, exist_ok=True)
  return {"erase": write_pool(sets.erase, os.path.join(pools, f"toy_{value}.jsonl")),
          "preserve": write_pool(sets.preserve, os.path.join(pools, f"toy_{value}_preserve.jsonl")),
          "evaluate": write_pool(mixed, os.path.join(evaluation, f"toy_{value}_eval.jsonl"))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--concept", default="colour:red", help="kind:value to erase")
  p.add_argument("--pools", default=POOLS, help="directory of the training pools")
  p.add_argument("--eval", default=EVAL, help="directory of the evaluation prompts")
  args = p.parse_args(argv)
  (kind, value), = parse_concepts(args.concept)
  for name, path in write_run_pools(kind, value, args.pools, args.eval).items():
    print(f"{name}: {os.path.relpath(path)}")


if __name__ == "__main__":
  main()
