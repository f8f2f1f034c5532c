"""t2vu-jax main entry point.

  python run.py                                  # embedded toy default (configs/toy.py)
  python run.py --config=configs/wan_nudity.py --config.model.path=Wan2.1-T2V-1.3B-Diffusers

A config (built on configs/base.py) runs the stages load, encode, erase, export, evaluate and
report under its run directory (see t2vu_jax/erase/job.py); rerunning the same command resumes.
For a multi-process run (one process per host) set
JAX_COORDINATOR_ADDRESS=host:port of process 0, JAX_NUM_PROCESSES and JAX_PROCESS_ID on each
(or only the address on a cluster JAX detects: SLURM, Open MPI, Kubernetes, Cloud TPU) and run the
same command everywhere; process 0 writes the run directory (a filesystem all of them share).

The toy default erases the colour red from the shipped toy-world model (a pixel-space
Wan2.1-architecture DiT, `t2vu_jax/toy/pretrained`) and scores the result with the toy world's exact
classifier: every stage of the real path, in minutes on a laptop CPU.
"""
import json
import os

from absl import app, flags, logging

from t2vu_jax.cli import define_config_flag, loaded_config, parse_flags, usage_error

TOY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "toy.py")

define_config_flag(TOY_CONFIG, "config file (default: the embedded toy config)")
FLAGS = flags.FLAGS


def run_erasure(config):
  from t2vu_jax.checkpoint import RunCheckpointError
  from t2vu_jax.io.errors import CheckpointError
  from t2vu_jax.erase.job import ConfigError, ErasureJob
  from t2vu_jax.sharding import initialize_distributed
  initialize_distributed()
  try:
    job = ErasureJob(config)
    summary = job.run()
  except (ConfigError, RunCheckpointError, CheckpointError, FileNotFoundError) as e:
    usage_error(str(e))
  if job.primary:
    print(json.dumps({"run_dir": job.run_dir, "stages": summary}, indent=2))


def main(_):
  if not FLAGS["verbosity"].present:  # keep Orbax's per-save INFO lines out of the progress bars
    logging.set_verbosity(logging.WARNING)
  run_erasure(loaded_config())


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
