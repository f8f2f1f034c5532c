"""GPU check: forward time, erasure train-step time and MFU of a random-weight Wan transformer.

  bash benchmarks/gpu_check.sh                   # on a GPU machine (refuses without one)
  bash benchmarks/gpu_check.sh --model 5b        # Wan2.2 TI2V-5B (or --model 14b)
  python benchmarks/gpu_check.py --tiny          # CPU smoke test of this script at a toy size

Default setting: Wan 1.3B with random bf16 weights, one 480x832 video of 17 frames (latents
16x5x60x104: 7800 video tokens) and 512 text tokens; `--model 14b` is Wan2.1 14B (the architecture of
each Wan2.2 A14B expert) on the same latents, `--model 5b` Wan2.2 TI2V-5B on the 48-channel latents of
the Wan2.2 VAE (spatial stride 16: 48x5x30x52, 1950 tokens) with one timestep for all tokens, which is
what its text-to-video path computes; cuDNN fused attention, blocks rematerialised
(`remat=full`). The train step is the whole erasure objective on given training points (erasers-off
v_c and v∅ with the concept attention, the erasers-on forward with the localization term, the
preservation forwards), its eraser gradients and an Adam update, with adapter erasers of rank 128.

MFU = model FLOPs / time / peak: the model FLOPs are the analytic matmul count of
`t2vu_jax.models.wan.forward_flops` (times `t2vu_jax.scaling.FORWARDS_PER_STEP` forward-equivalents
for a step); recomputation under remat is not counted, as MFU conventionally does not.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def timed(fn, repeats):
  """(first call seconds: compile + run, list of the following calls' seconds)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, times


MODELS = {"1.3b": ("wan_1_3b", 8), "14b": ("wan_14b", 8), "5b": ("wan22_5b", 16)}  # config, VAE spatial stride


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true",
                 help="CPU smoke test: a 2-layer, 128-wide model on 1x4x8 latents and 16 text tokens, any device")
  p.add_argument("--model", default="1.3b", choices=sorted(MODELS), help="Wan transformer to time")
  p.add_argument("--frames", type=int, default=17)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--attention", default=None, help="xla | cudnn | splash (default: cudnn; xla with --tiny)")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--remat", default="full")
  p.add_argument("--rank", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="per-device dense peak for MFU (default: looked up from the device name)")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
  from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step
  from t2vu_jax.models.erasers import EraserConfig, attach_erasers
  from t2vu_jax.models.wan import WanConfig, WanTransformer, forward_flops
  from t2vu_jax.scaling import FORWARDS_PER_STEP, peak_tflops

  device = jax.devices()[0]
  if not args.tiny and device.platform != "gpu":
    print(f"gpu_check: JAX runs on {device.platform!r} ({device.device_kind}), not a GPU: install jax[cuda12] "
          "on a machine with an NVIDIA GPU (or pass --tiny for a CPU smoke test of this script)", file=sys.stderr)
    return 2
  if args.tiny:
    cfg = WanConfig(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=2, text_dim=64)
    latent, text_len, rank = (1, 16, 1, 8, 8), 16, 8
  else:
    make, stride = MODELS[args.model]
    cfg = getattr(WanConfig, make)()
    latent = (1, cfg.in_channels, (args.frames - 1) // 4 + 1, args.height // stride, args.width // stride)
    text_len, rank = 512, args.rank
  attention = args.attention or ("xla" if args.tiny else "cudnn")
  tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
  peak = args.peak_tflops or peak_tflops(device.device_kind)

  start = time.perf_counter()
  model = WanTransformer(cfg, dtype=args.dtype, rngs=nnx.Rngs(0), remat=args.remat, attention=attention)
  model = attach_erasers(model, EraserConfig(rank=rank))
  params = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
  build_s = time.perf_counter() - start

  keys = iter(jax.random.split(jax.random.key(1), 8))
  normal = lambda shape: jax.random.normal(next(keys), shape, jnp.float32)
  x, cond, uncond = normal(latent), normal((1, text_len, cfg.text_dim)), normal((1, text_len, cfg.text_dim))
  t = jnp.array([500.0])

  # Forward: the base model (erasers off), as sampling runs it.
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x, t, c: nnx.merge(graphdef, state)(x, t, c, erasers=False))
  fwd_first, fwd_times = timed(lambda: jax.block_until_ready(forward(state, x, t, cond)), args.repeats)

  # Erasure train step on given training points (no trajectory sampling inside the step).
  tx = make_optimizer(OptimConfig())
  graphdef, train_state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, ObjectiveConfig())
  concept = jnp.zeros((1, text_len)).at[:, 3:5].set(1.0)
  batch = ErasureBatch(x_t=x, t=t, sigma=jnp.array([0.5]), cond=cond, uncond=uncond, concept_mask=concept,
                       x_pre=normal(latent), t_pre=jnp.array([300.0]), cond_pre=normal((1, text_len, cfg.text_dim)))
  holder = {"state": train_state}

  def train_step():
    holder["state"], metrics = step(holder["state"], batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    holder["loss"] = float(metrics["loss"])
  step_first, step_times = timed(train_step, args.repeats)

  fwd_flops = forward_flops(cfg, tokens, text_len)
  rows = [("forward (erasers off)", fwd_first, fwd_times, fwd_flops),
          (f"erasure train step ({FORWARDS_PER_STEP} forward-equivalents)", step_first, step_times,
           FORWARDS_PER_STEP * fwd_flops)]
  stats = device.memory_stats() or {}
  name = {"1.3b": "Wan 1.3B", "14b": "Wan 14B", "5b": "Wan2.2 TI2V-5B"}[args.model] if not args.tiny \
      else "tiny Wan (--tiny smoke test)"
  print(f"\n{name}, random weights ({params:,} parameters, built in {build_s:.1f} s), latents "
        f"{'x'.join(map(str, latent[1:]))} ({tokens} video + {text_len} text tokens), batch 1, {args.dtype}, "
        f"attention {attention}, remat {args.remat}, eraser adapter rank {rank}")
  print(f"device: {device.device_kind} ({device.platform}), peak {peak or 'unknown'} TFLOP/s dense\n")
  print(f"| {'measurement':42s} | {'first call s':>12s} | {'median ms':>10s} | {'min ms':>9s} | {'TFLOP':>8s} | "
        f"{'TFLOP/s':>8s} | {'MFU':>6s} |")
  print(f"|{'-' * 44}|{'-' * 14}|{'-' * 12}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
  for label, first, times, flops in rows:
    median = statistics.median(times)
    rate = flops / median / 1e12
    mfu = f"{rate / peak:6.1%}" if peak else "   n/a"
    print(f"| {label:42s} | {first:12.1f} | {median * 1e3:10.1f} | {min(times) * 1e3:9.1f} | {flops / 1e12:8.3g} | "
          f"{rate:8.3g} | {mfu} |")
  if "peak_bytes_in_use" in stats:
    print(f"\npeak device memory: {stats['peak_bytes_in_use'] / 1e9:.1f} GB"
          + (f" of {stats['bytes_limit'] / 1e9:.1f} GB" if "bytes_limit" in stats else ""))
  print(f"train step loss {holder['loss']:.4g} (finite: {bool(np.isfinite(holder['loss']))}); "
        f"first call = compile + one run; {args.repeats} timed calls after it")
  return 0 if np.isfinite(holder["loss"]) else 1


if __name__ == "__main__":
  sys.exit(main())
