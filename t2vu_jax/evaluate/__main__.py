"""Evaluate (again) the erased model of a run: its evaluate and report stages.

  python -m t2vu_jax.evaluate --run runs/wan_nudity [--prompts authors.csv] [--num-prompts 100]

Reads the run's saved `config.json`, restores the erasers of its latest checkpoint, generates every
evaluation prompt with the base and the erased model on the same seeds, scores them (the config's
scorer, or `--scorer`) and rewrites `evaluation.json`, `report.md`, `report.json` and the contact sheet.
"""
from __future__ import annotations

import argparse
import os

from t2vu_jax.cli import usage_error


def main(argv=None):
  import ml_collections
  from t2vu_jax.checkpoint import RunCheckpointError
  from t2vu_jax.io.errors import CheckpointError
  from t2vu_jax.erase.job import ConfigError, ErasureJob
  from t2vu_jax.erase.run_config import read_record
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--run", required=True, help="run directory (holds config.json and checkpoints/)")
  p.add_argument("--prompts", help="evaluation prompts: JSONL pool(s) or an authors' CSV (default: the config's)")
  p.add_argument("--num-prompts", type=int, help="evaluate the first N prompts")
  p.add_argument("--seeds", type=int, help="seeds per prompt without a seed of its own")
  p.add_argument("--scorer", help="none | nudenet | toy (default: the config's)")
  args = p.parse_args(argv)
  path = os.path.join(args.run, "config.json")
  if not os.path.isfile(path):
    usage_error(f"{path} does not exist: --run must be a run directory written by run.py")
  config = ml_collections.ConfigDict(read_record(path))
  config.workdir = args.run
  config.stages = "evaluate,report"
  for field, value in (("prompts.evaluate", args.prompts), ("eval.num_prompts", args.num_prompts),
                       ("eval.seeds", args.seeds), ("eval.scorer", args.scorer)):
    if value is not None:
      group, name = field.split(".")
      config[group][name] = value
  try:
    job = ErasureJob(config)  # validates every override (prompt files included) before anything changes
  except ConfigError as e:
    usage_error(str(e))
  try:
    job.rerun(("evaluate", "report"))
  except (ConfigError, RunCheckpointError, CheckpointError, FileNotFoundError) as e:
    usage_error(str(e))
  if job.primary:
    print(f"wrote {job.path('report.md')}")


if __name__ == "__main__":
  main()
