"""Wan2.1 1.3B at full size: conversion time and peak memory, and our forward against diffusers'.

  python benchmarks/convert_wan_1_3b.py [--workdir DIR] [--tokens 64] [--repeats 3]

Builds a random-weight 1.3B checkpoint (bf16, diffusers layout) with diffusers, then runs each
measurement in a fresh process so peak RSS belongs to that step alone:
  1. `convert.torch_to_flax` (bf16): wall time and peak RSS against the checkpoint's bytes on disk
     (target: peak RSS <= 1.3x), and `load_transformer` alone.
  2. forward on the same weights and input, fp32, ours (jitted, compile excluded) vs diffusers,
     with analytic GFLOP/s beside the matmul rate measured in the same run.
Not a pass/fail test: it prints side-by-side numbers.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
def peak_rss():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def report(**kw):
  print("RESULT " + json.dumps(kw), flush=True)
"""

BUILD = """
import torch
from diffusers import WanTransformer3DModel
from t2vu_jax.models.wan import WanConfig
cfg = WanConfig.wan_1_3b().to_dict()
cfg.pop("pos_embed_seq_len")
torch.manual_seed(0)
WanTransformer3DModel(**cfg).to(torch.bfloat16).save_pretrained({ckpt!r})
report()
"""

CONVERT = """
base = peak_rss()
import jax
from convert import torch_to_flax
start = time.time()
rc = torch_to_flax.main(["--src", {ckpt!r}, "--out", {out!r}, "--dtype", "bfloat16", "--overwrite"])
report(rc=rc, seconds=time.time() - start, peak_rss=peak_rss(), python_rss=base)
"""

LOAD = """
import jax, t2vu_jax
from flax import nnx
base = peak_rss()
start = time.time()
model = t2vu_jax.load_transformer({ckpt!r}, dtype="bfloat16", progress=False)
jax.block_until_ready(nnx.state(model))
report(seconds=time.time() - start, peak_rss=peak_rss(), imports_rss=base)
"""

FORWARD = """
import numpy as np, torch, jax
jax.config.update("jax_default_matmul_precision", "highest")
from diffusers import WanTransformer3DModel
import t2vu_jax
from t2vu_jax.models.wan import forward_flops
torch.set_grad_enabled(False)

def best_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
  return min(times)

a = torch.randn(2048, 2048)
matmul = 2 * 2048**3 / best_time(lambda: a @ a, 5) / 1e9

theirs = WanTransformer3DModel.from_pretrained({ckpt!r}, torch_dtype=torch.float32).eval()
ours = t2vu_jax.load_transformer({ckpt!r}, dtype="float32", progress=False)
side = int(round(({tokens} ** 0.5))) * 2
g = torch.Generator().manual_seed(0)
x, ctx, t = torch.randn(1, 16, 1, side, side, generator=g), torch.randn(1, 512, 4096, generator=g), torch.tensor([700])
tokens = (side // 2) ** 2
flops = forward_flops(ours.config, tokens, 512)

forward = jax.jit(lambda m, x, t, c: m(x, t, c))
xj, tj, cj = jax.numpy.asarray(x.numpy()), jax.numpy.asarray(t.numpy()), jax.numpy.asarray(ctx.numpy())
out = np.asarray(forward(ours, xj, tj, cj))  # compile
ref = theirs(x, t, ctx, return_dict=False)[0].numpy()
t_ours = best_time(lambda: forward(ours, xj, tj, cj).block_until_ready(), {repeats})
t_theirs = best_time(lambda: theirs(x, t, ctx, return_dict=False), {repeats})
report(tokens=tokens, max_abs_err=float(np.abs(out - ref).max()), ref_max=float(np.abs(ref).max()),
       ours_s=t_ours, diffusers_s=t_theirs, gflop=flops / 1e9,
       ours_gflops=flops / t_ours / 1e9, diffusers_gflops=flops / t_theirs / 1e9, matmul_gflops=matmul)
"""


def run(code, **fmt):
  src = textwrap.dedent(PRELUDE.format(root=ROOT)) + textwrap.dedent(code.format(**fmt))
  proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, cwd=ROOT)
  results = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not results:
    sys.exit(f"benchmark step failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(results[-1][len("RESULT "):])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None, help="keeps the built checkpoint between runs")
  p.add_argument("--tokens", type=int, default=64, help="video tokens of the forward benchmark")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="wan13b-bench-")
  ckpt, out = os.path.join(workdir, "transformer"), os.path.join(workdir, "flax")
  if not os.path.exists(ckpt):
    print("building a random-weight Wan2.1 1.3B checkpoint (bf16) with diffusers ...", flush=True)
    run(BUILD, ckpt=ckpt)
  ckpt_bytes = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt) if f.endswith(".safetensors"))
  gb = lambda b: f"{b / 1e9:.2f} GB"

  conv = run(CONVERT, ckpt=ckpt, out=out)
  load = run(LOAD, ckpt=ckpt)
  print(f"\ncheckpoint on disk: {gb(ckpt_bytes)} (825 tensors, bf16)")
  print(f"{'step':34s} {'wall s':>8s} {'peak RSS':>10s} {'x ckpt':>7s}")
  print(f"{'torch_to_flax CLI (+Orbax save)':34s} {conv['seconds']:8.1f} {gb(conv['peak_rss']):>10s} "
        f"{conv['peak_rss'] / ckpt_bytes:7.2f}")
  print(f"{'load_transformer (bf16, in memory)':34s} {load['seconds']:8.1f} {gb(load['peak_rss']):>10s} "
        f"{load['peak_rss'] / ckpt_bytes:7.2f}")
  print(f"  (process RSS after imports, before converting: {gb(load['imports_rss'])})")

  fwd = run(FORWARD, ckpt=ckpt, tokens=args.tokens, repeats=args.repeats)
  print(f"\nforward, fp32, 1x16x1 latent, {fwd['tokens']} video tokens + 512 text tokens, "
        f"{fwd['gflop']:.0f} GFLOP (analytic)")
  print(f"{'':12s} {'seconds':>8s} {'GFLOP/s':>8s}")
  print(f"{'diffusers':12s} {fwd['diffusers_s']:8.2f} {fwd['diffusers_gflops']:8.1f}")
  print(f"{'t2vu-jax':12s} {fwd['ours_s']:8.2f} {fwd['ours_gflops']:8.1f}")
  print(f"{'matmul 2048³':12s} {'':8s} {fwd['matmul_gflops']:8.1f}")
  print(f"speed ratio diffusers/ours: {fwd['diffusers_s'] / fwd['ours_s']:.2f}x; "
        f"max |ours - diffusers| = {fwd['max_abs_err']:.2e} (output max {fwd['ref_max']:.2f})")


if __name__ == "__main__":
  main()
