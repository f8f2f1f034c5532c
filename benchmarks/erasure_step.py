"""Erasure train step: t2vu-jax vs the PyTorch reference, and on-policy vs pooled trajectories.

  python benchmarks/erasure_step.py [--layers 4 --heads 4 --frames 3 --size 16 --repeats 3]

Both sides get the same random Wan-architecture transformer (built with diffusers, moved to JAX by
our converter), the same adapter erasers, batch and hyper-parameters, in fp32 on this machine, in
this run. One step = the whole objective (erasers-off v_c and v∅ with the concept attention,
erasers-on forward with the localization term, preservation forwards), its eraser gradients and an
Adam update. The PyTorch reference is `tests/torch_erasure.py` (diffusers' model with hooked
erasers). Contexts are as Wan's encoder leaves them, the prompt's tokens then zero padding; our step
gets them as the erase loop feeds it, the padding cut to one row that stands for the rest (exact:
`text.collapse_padding`), PyTorch the full contexts. Then our step is timed with fresh on-policy
trajectories (k + 1 guided sampling steps inside the jitted step, averaged over k) against training
points drawn from a `TrajectoryPool`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict:
  """name -> seconds of each of `repeats` rounds, every round calling each function once in turn, so
  that a busy moment of a shared machine slows every side alike."""
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  return times


def summary(times) -> str:
  return f"{min(times):9.3f} {float(np.median(times)):9.3f}"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4, help="of width 64")
  p.add_argument("--frames", type=int, default=3, help="latent frames")
  p.add_argument("--size", type=int, default=16, help="latent height = width")
  p.add_argument("--text-len", type=int, default=512)
  p.add_argument("--prompt-tokens", type=int, default=32,
                 help="real tokens of each context; the rest is zero padding, as Wan's encoder leaves it")
  p.add_argument("--rank", type=int, default=32)
  p.add_argument("--steps", type=int, default=10, help="sampling steps of a trajectory")
  p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (min and median are printed)")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  import torch
  import t2vu_jax
  from builders import build_diffusers_transformer
  from torch_erasure import TorchErasers, erasure_objective
  from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
  from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step, merge_model
  from t2vu_jax.erase.pool import TrajectoryPool
  from t2vu_jax.erase.trajectory import TrajectoryConfig
  from t2vu_jax.models.erasers import EraserConfig, attach_erasers
  from t2vu_jax.text import collapse_padding

  jax.config.update("jax_default_matmul_precision", "highest")
  dim = 64 * args.heads
  config = dict(patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=64, in_channels=16,
                out_channels=16, text_dim=dim, freq_dim=256, ffn_dim=4 * dim, num_layers=args.layers,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
  torch_model = build_diffusers_transformer(config)
  workdir = tempfile.mkdtemp()
  torch_model.save_pretrained(os.path.join(workdir, "transformer"))
  model = attach_erasers(t2vu_jax.load_transformer(os.path.join(workdir, "transformer"), "float32", progress=False),
                         EraserConfig(rank=args.rank))
  erasers = TorchErasers(torch_model, "adapter", "cross_attn", rank=args.rank)
  erasers.set_params({k: np.array(v) for k, v in zip(("down_w", "down_b", "up_w", "up_b"),
                      (model.erasers.down_w[...], model.erasers.down_b[...], model.erasers.up_w[...],
                       model.erasers.up_b[...]))})

  rng = np.random.default_rng(0)
  latent = (1, 16, args.frames, args.size, args.size)
  concept = np.zeros((1, args.text_len), np.float32)
  concept[0, 3:5] = 1
  def context(tokens):  # a prompt's real tokens, then exact zeros
    return np.pad(rng.standard_normal((1, tokens, dim)), ((0, 0), (0, args.text_len - tokens), (0, 0)))
  arrays = dict(x_t=rng.standard_normal(latent), t=np.array([600.0]), sigma=np.array([0.6]),
                cond=context(args.prompt_tokens), uncond=context(1), concept_mask=concept,
                x_pre=rng.standard_normal(latent), t_pre=np.array([300.0]), cond_pre=context(args.prompt_tokens))
  arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
  hyper = dict(eta=1.0, lambda_loc=1.0, lambda_pre=1.0, threshold=0.1)
  tokens = args.frames * (args.size // 2) ** 2

  # PyTorch reference: objective + gradients + Adam with global-norm clipping.
  torch.set_num_threads(os.cpu_count())
  torch_batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
  params = list(erasers.params.values())
  optimizer = torch.optim.Adam(params, lr=1e-4)

  def torch_step():
    out = erasure_objective(torch_model, erasers, torch_batch, **hyper)
    for p_, name in zip(params, erasers.params):
      p_.grad = torch.from_numpy(out["grads"][name])
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
  torch_step()  # warm-up

  tx = make_optimizer(OptimConfig(learning_rate=1e-4))
  graphdef, state = init_train_state(model, tx)
  pooled_step = make_train_step(graphdef, tx, ObjectiveConfig(**hyper))
  # As the erase loop feeds the step (`StepBatches.contexts`): the common padding cut to one row.
  texts, masks, padding = collapse_padding({k: arrays[k] for k in ("cond", "uncond", "cond_pre")},
                                           {"concept_mask": arrays["concept_mask"]})
  batch = ErasureBatch(**{k: jnp.asarray(v) for k, v in {**arrays, **texts, **masks}.items()},
                       text_padding=None if padding is None else jnp.asarray(padding))
  holder = [state]

  def jax_step(step_fn, batch, key=jax.random.key(0)):
    holder[0], metrics = step_fn(holder[0], batch, key)
    jax.block_until_ready(metrics)
  jax_step(pooled_step, batch)  # compiles
  times = interleaved({"PyTorch reference": torch_step, "t2vu-jax": lambda: jax_step(pooled_step, batch)},
                      args.repeats)

  print(f"model: {args.layers} layers, dim {dim}, {tokens} video tokens, text {args.text_len} "
        f"({args.prompt_tokens} prompt tokens, then zero padding), "
        f"adapter rank {args.rank}; fp32 on {os.cpu_count()} CPU cores ({cpu_model()}), "
        f"{args.repeats} interleaved rounds")
  print(f"{'train step':28s} {'min s':>9s} {'median s':>9s}")
  for name, t in times.items():
    print(f"{name:28s} {summary(t)}")
  median = {name: float(np.median(t)) for name, t in times.items()}
  print(f"time ratio ours/PyTorch: median {median['t2vu-jax'] / median['PyTorch reference']:.2f}x, "
        f"min {min(times['t2vu-jax']) / min(times['PyTorch reference']):.2f}x (target <= 0.5x)")

  # On-policy trajectories inside the step vs points drawn from a pool built once.
  trajectory = TrajectoryConfig(steps=args.steps, guidance=5.0)
  on_policy_step = make_train_step(graphdef, tx, ObjectiveConfig(**hyper), trajectory, latent)
  prompt_batch = batch._replace(x_t=None, t=None, sigma=None, x_pre=None, t_pre=None)
  jax_step(on_policy_step, prompt_batch)
  keys = [jax.random.key(i) for i in range(max(args.repeats, 4))]  # several k: the cost depends on k
  start = time.perf_counter()
  for key in keys:
    jax_step(on_policy_step, prompt_batch, key)
  on_policy_seconds = (time.perf_counter() - start) / len(keys)

  frozen = TrajectoryConfig(steps=args.steps, guidance=5.0, model="frozen")
  start = time.perf_counter()
  pool = TrajectoryPool.build(merge_model(graphdef, holder[0]),
                              frozen.make_scheduler(), jnp.asarray(arrays["cond"]), jnp.asarray(arrays["uncond"][0]),
                              frozen.guidance, latent[1:],
                              repeats=2, batch_size=1, progress=False)
  pool_seconds = time.perf_counter() - start
  draw = np.random.default_rng(0)

  def pooled():  # (a preservation pool would be built the same way; the concept pool stands in)
    x_t, t, sigma = pool.draw(draw, np.array([0]))
    x_pre, t_pre, _ = pool.draw(draw, np.array([0]))
    jax_step(pooled_step, batch._replace(x_t=jnp.asarray(x_t), t=jnp.asarray(t), sigma=jnp.asarray(sigma),
                                         x_pre=jnp.asarray(x_pre), t_pre=jnp.asarray(t_pre)))
  pooled()
  pooled_times = [timed(pooled) for _ in range(args.repeats)]
  print(f"\nper iteration, {args.steps}-step trajectories   {'min s':>9s} {'median s':>9s}")
  print(f"{'on-policy (sampled in step)':28s} {on_policy_seconds:9.3f} {on_policy_seconds:9.3f}  (mean over k)")
  print(f"{'pooled frozen trajectories':28s} {summary(pooled_times)}  (pool of 2 built once in {pool_seconds:.1f} s)")
  print(f"speed-up of pooling: {on_policy_seconds / float(np.median(pooled_times)):.1f}x")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    import platform
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
  main()
