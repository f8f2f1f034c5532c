"""t2vu-jax main entry point.

  python run.py                                  # embedded toy default (configs/toy.py)
  python run.py --config=configs/wan_nudity.py --config.model.path=Wan2.1-T2V-1.3B-Diffusers

An erasure config (one with `stages`, built on configs/base.py) runs the stages load, encode,
erase, export, evaluate and report under its run directory (see t2vu_jax/erase/job.py); rerunning
the same command resumes. The toy default builds a tiny Wan-architecture model, exports it as a
diffusers checkpoint, loads it back through the same loader real Wan checkpoints use and checks the
round trip is exact.
"""
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

TOY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "toy.py")
config_flags.DEFINE_config_file("config", TOY_CONFIG, "config file (default: the embedded toy config)")
FLAGS = flags.FLAGS


def validate(config):
  missing = [k for k in ("workdir", "seed", "dtype", "model", "latent_shape", "text_len") if k not in config]
  if missing:
    raise ValueError(f"config is missing field(s): {', '.join(missing)}")
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype={config.dtype!r}: choose float32 or bfloat16")
  if len(config.latent_shape) != 5 or config.latent_shape[1] != config.model.in_channels:
    raise ValueError(f"config.latent_shape={tuple(config.latent_shape)} must be (B, C, F, H, W) with "
                     f"C = config.model.in_channels = {config.model.in_channels}")


def run_erasure(config):
  from t2vu_jax.erase.job import ConfigError, ErasureJob
  from t2vu_jax.sharding import initialize_distributed
  initialize_distributed()
  try:
    job = ErasureJob(config)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  summary = job.run()
  print(json.dumps({"run_dir": job.run_dir, "stages": summary}, indent=2))


def main(_):
  if "stages" in FLAGS.config:
    return run_erasure(FLAGS.config)
  import jax
  import numpy as np
  from flax import nnx

  import t2vu_jax
  from convert.wan_writer import save_diffusers
  from t2vu_jax.models.wan import WanConfig, WanTransformer

  config = FLAGS.config
  validate(config)
  os.makedirs(config.workdir, exist_ok=True)
  with open(os.path.join(config.workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  start = time.time()
  cfg = WanConfig.from_dict(config.model.to_dict())
  model = WanTransformer(cfg, dtype=config.dtype, rngs=nnx.Rngs(config.seed))
  export = os.path.join(config.workdir, "transformer")
  # float32 on disk holds every parameter exactly, bf16 weights and fp32 norms alike.
  n_tensors, n_bytes = save_diffusers(model, export, dtype="float32", overwrite=True)
  reloaded = t2vu_jax.load_transformer(export, dtype=config.dtype)

  key = jax.random.key(config.seed)
  x = jax.random.normal(key, tuple(config.latent_shape))
  text = jax.random.normal(jax.random.fold_in(key, 1), (x.shape[0], config.text_len, cfg.text_dim))
  t = np.full((x.shape[0],), 500)
  out, out_reloaded = model(x, t, text), reloaded(x, t, text)
  exact = bool(np.array_equal(np.asarray(out), np.asarray(out_reloaded)))
  summary = {"tensors": n_tensors, "bytes": n_bytes, "output_shape": list(out.shape),
             "round_trip_exact": exact, "seconds": round(time.time() - start, 2)}
  with open(os.path.join(config.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary))
  if not exact:
    raise SystemExit("exported checkpoint does not reproduce the model")


if __name__ == "__main__":
  app.run(main)
