"""Attack the erasure of a run: its attack and report stages.

  python -m t2vu_jax.attack --run runs/toy --attack concept_vector [--strengths 0,1,2] [--num-prompts 16]
  python -m t2vu_jax.attack --run runs/toy --attack soft_prompt [--soft-tokens 4] [--soft-steps 0,50,100]
  python -m t2vu_jax.attack --run runs/toy --attack resurgence [--resurgence-steps 0,50,100]

Reads the run's saved `config.json`, restores the erasers of its latest checkpoint, runs the attack on
the base model, negative prompting and the erased model (the evaluation prompts naming the concept,
on their seeds), writes `attacks/<name>.json` and rewrites `report.md` and `report.json`.
"""
from __future__ import annotations

import argparse
import os

from t2vu_jax.attack.common import ATTACKS
from t2vu_jax.cli import usage_error


def main(argv=None):
  import ml_collections
  from t2vu_jax.checkpoint import RunCheckpointError
  from t2vu_jax.erase.job import ConfigError, ErasureJob
  from t2vu_jax.erase.run_config import read_record
  from t2vu_jax.io.errors import CheckpointError
  p = argparse.ArgumentParser(prog="python -m t2vu_jax.attack", description=__doc__.split("\n")[0])
  p.add_argument("--run", required=True, help="run directory (holds config.json and checkpoints/)")
  p.add_argument("--attack", required=True, choices=ATTACKS)
  p.add_argument("--strengths", help="concept_vector: comma-separated multiples of the concept direction")
  p.add_argument("--num-prompts", type=int, help="evaluation prompts naming the concept to attack")
  p.add_argument("--negative-prompt", help="negative prompting's phrase (default: the erase pools' main concept)")
  p.add_argument("--batch-size", type=int, help="prompts per sampling call")
  p.add_argument("--soft-tokens", type=int, help="soft_prompt: learned embeddings per prompt")
  p.add_argument("--soft-steps", help="soft_prompt: comma-separated step counts to measure")
  p.add_argument("--soft-lr", type=float, help="soft_prompt: Adam's learning rate")
  p.add_argument("--resurgence-steps", help="resurgence: comma-separated fine-tuning step counts to measure")
  p.add_argument("--resurgence-rank", type=int, help="resurgence: the LoRA's rank")
  p.add_argument("--resurgence-lr", type=float, help="resurgence: Adam's learning rate")
  args = p.parse_args(argv)
  path = os.path.join(args.run, "config.json")
  if not os.path.isfile(path):
    usage_error(f"{path} does not exist: --run must be a run directory written by run.py")
  checkpoints = os.path.join(args.run, "checkpoints")
  trained = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
  if not trained and not os.path.isfile(os.path.join(args.run, "rece.npz")):
    usage_error(f"{args.run} has no erasers (no checkpoint in {checkpoints}, no RECE edit): run its erase stage first")
  config = ml_collections.ConfigDict(read_record(path))
  config.workdir = args.run
  config.stages = "attack,report"
  if "attack" not in config:
    from t2vu_jax.attack.common import AttackConfig
    from t2vu_jax.erase.run_config import config_group
    config.attack = config_group(AttackConfig)
  config.attack.names = args.attack
  for field, value in (("strengths", args.strengths), ("num_prompts", args.num_prompts),
                       ("negative_prompt", args.negative_prompt), ("batch_size", args.batch_size),
                       ("soft_tokens", args.soft_tokens), ("soft_steps", args.soft_steps), ("soft_lr", args.soft_lr),
                       ("resurgence_steps", args.resurgence_steps), ("resurgence_rank", args.resurgence_rank),
                       ("resurgence_lr", args.resurgence_lr)):
    if value is not None:
      config.attack[field] = value
  try:
    job = ErasureJob(config)  # validates every override before anything runs
  except ConfigError as e:
    usage_error(str(e))
  try:
    job.rerun(("attack", "report"))
  except (ConfigError, RunCheckpointError, CheckpointError, FileNotFoundError, ValueError) as e:
    usage_error(str(e))
  if job.primary:
    print(f"wrote {job.path('attacks', args.attack + '.json')} and {job.path('report.md')}")


if __name__ == "__main__":
  main()
