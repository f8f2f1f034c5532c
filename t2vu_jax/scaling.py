"""Scaling study: compile the erasure train step ahead of time for several meshes and report what
each device would hold and compute.

  python -m t2vu_jax.scaling --model 1.3b --meshes 8x1x1x1,1x8x1x1,1x4x1x2 --simulate 8 --out docs/scaling

Nothing is allocated: the model, erasers, optimizer state and batch are abstract arrays with their
shardings, the step is lowered and compiled for the mesh, and XLA's `memory_analysis` (per device)
and `cost_analysis` are read from the compiled program next to an analytic FLOP count (XLA counts
the body of a scanned layer stack once, so its figure is far below the analytic one). With
`--simulate N` the meshes are laid out on N simulated CPU devices. The step is compiled with the
mesh in context, so the model's activation sharding constraints apply (`--unconstrained` leaves
them out). With `--time N` the step also runs N times on real (zero-valued) arrays on the mesh's
devices and the median step time and MFU (analytic FLOPs / time / (devices x peak)) join the row:
meant for real accelerators, where the peak is looked up from the device name (`--peak-tflops`
overrides it). `benchmarks/gpu_check.sh` is the one-GPU version with forward times.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time

# Dense bf16 peak TFLOP/s per device, by a substring of `device_kind` (first match wins).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("B200", 2250.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
               ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v6", 918.0))
# Transformer config (a WanConfig constructor) and latent spatial stride of each --model.
MODELS = {"1.3b": ("wan_1_3b", 8), "14b": ("wan_14b", 8), "5b": ("wan22_5b", 16), "a14b": ("wan22_a14b", 8)}
FORWARDS_PER_STEP = 7  # erasers-off cond+uncond (2), erasers-on forward+input-gradient (2), preservation (1 + 2)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--plan" in argv:  # the expected cost of one run config, stage by stage
    from t2vu_jax import plan
    return plan.main([a for a in argv if a != "--plan"])
  p = argparse.ArgumentParser(prog="python -m t2vu_jax.scaling", description=__doc__.splitlines()[0])
  p.add_argument("--model", default="1.3b", choices=list(MODELS),
                 help="Wan2.1 1.3b / 14b, Wan2.2 5b (TI2V, 16x latents) or a14b (14B experts, both resident)")
  p.add_argument("--meshes", default="8x1x1x1,1x8x1x1,1x4x1x2,2x2x1x2")
  p.add_argument("--simulate", type=int, default=0, help="lay the meshes out on this many simulated CPU devices")
  p.add_argument("--batch", type=int, default=8, help="global batch (sharded over data x fsdp when it divides)")
  p.add_argument("--frames", type=int, default=17)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--rank", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--remat", default="full", help="remat policy of the blocks (see t2vu_jax.models.wan)")
  p.add_argument("--unconstrained", action="store_true",
                 help="compile without the mesh in context: no activation sharding constraints (for comparison)")
  p.add_argument("--time", type=int, default=0, help="also run the step this many times on real arrays")
  p.add_argument("--peak-tflops", type=float, help="per-device dense peak for MFU (default: by device name)")
  p.add_argument("--out", default="scaling")
  args = p.parse_args(argv)
  if args.simulate:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.simulate}"

  import jax

  from t2vu_jax.models.erasers import EraserConfig
  from t2vu_jax.models.wan import WanConfig, WanTransformer, forward_flops
  from t2vu_jax.plan import abstract_module, abstract_train_step
  from t2vu_jax.sharding import MeshConfig, make_mesh

  make_config, stride = MODELS[args.model]
  cfg = getattr(WanConfig, make_config)()
  latent = (args.batch, cfg.in_channels, (args.frames - 1) // 4 + 1, args.height // stride, args.width // stride)
  tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
  analytic = FORWARDS_PER_STEP * forward_flops(cfg, tokens, 512, batch=args.batch)
  rows = []
  for spec in args.meshes.split(","):
    mesh = make_mesh(MeshConfig.parse(spec), num_heads=cfg.num_attention_heads)
    jitted, abstract_args = abstract_train_step(cfg, EraserConfig(rank=args.rank), args.dtype, mesh, latent,
                                                remat=args.remat)
    if args.model == "a14b":  # one expert trains a step; the other's weights stay on the devices
      _, other = abstract_module(lambda rngs: WanTransformer(cfg, dtype=args.dtype, rngs=rngs), mesh)
      step = jitted
      jitted = jax.jit(lambda trainable, base, batch, resident, key: step(trainable, base, batch, key),
                       donate_argnums=(0,), keep_unused=True)
      abstract_args = (*abstract_args, other)
    start = time.time()
    with contextlib.nullcontext() if args.unconstrained else jax.set_mesh(mesh):
      compiled = jitted.lower(*abstract_args, jax.random.key(0)).compile()
    compile_s = time.time() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row = dict(model=args.model, mesh=spec, devices=mesh.size, batch=args.batch, tokens=tokens,
               argument_gb=mem.argument_size_in_bytes / 1e9, temp_gb=mem.temp_size_in_bytes / 1e9,
               output_gb=mem.output_size_in_bytes / 1e9,
               xla_tflops=(cost or {}).get("flops", float("nan")) / 1e12,
               ideal_tflops_per_device=analytic / mesh.size / 1e12, compile_s=compile_s)
    if args.time:
      row.update(time_step(compiled, abstract_args, args.time, analytic, mesh, args.peak_tflops))
    rows.append(row)
    print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

  os.makedirs(args.out, exist_ok=True)
  name = os.path.join(args.out, f"scaling_{args.model}")
  with open(name + ".csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  labels = [r["mesh"] for r in rows]
  ax.bar(labels, [r["argument_gb"] for r in rows], label="arguments (weights, erasers, optimizer, batch)")
  ax.bar(labels, [r["temp_gb"] for r in rows], bottom=[r["argument_gb"] for r in rows], label="temporaries")
  ax.set_ylabel("GB per device")
  ax.set_xlabel("mesh data x fsdp x context x tensor")
  ax.set_title(f"Wan {args.model} erasure step, {args.frames}x{args.height}x{args.width}, {args.dtype}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(name + ".png", dpi=120)
  print(f"wrote {name}.csv and {name}.png")
  return 0


def peak_tflops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_TFLOPS if k.lower() in device_kind.lower()), None)


def time_step(compiled, abstract_args, repeats: int, flops: float, mesh, peak: float | None = None) -> dict:
  """Median seconds of `repeats` runs of a compiled step on zero-valued arrays laid out as its abstract
  arguments (matmul time does not depend on the values), and the MFU that gives."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  zeros = lambda a: jax.jit(lambda: jnp.zeros(a.shape, a.dtype), out_shardings=a.sharding)()  # noqa: E731
  args = jax.tree.map(zeros, abstract_args)
  key = jax.random.key(0)
  times = []
  for _ in range(repeats + 1):  # the first run warms up
    start = time.perf_counter()
    out = compiled(*args, key)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
    args = (out[0], *args[1:])  # the step donates its trainable state; feed it back
  step_s = float(np.median(times[1:]))
  peak = peak or peak_tflops(mesh.devices.flat[0].device_kind)
  return {"step_s": step_s, "mfu": flops / step_s / (mesh.size * peak * 1e12) if peak else float("nan")}


if __name__ == "__main__":
  sys.exit(main())
