"""Convert a PyTorch Wan2.1 transformer checkpoint to our Flax format (Orbax + config JSON).

  python -m convert.torch_to_flax --src PATH --out DIR [--dtype bfloat16|float32]
"""
from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp
from flax import nnx

from t2vu_jax.cli import error
from t2vu_jax.io.atomic import check_writable
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models import wan_params
from t2vu_jax.models.wan_params import inspect_checkpoint, read_transformer, save_flax_transformer


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m convert.torch_to_flax", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="diffusers dir, pipeline dir, original Wan dir, or ComfyUI file")
  p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--allow-pickle", action="store_true", help="also read .pt/.pth/.bin (weights_only=True)")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)

  start = time.time()
  try:
    check_writable(args.out, args.overwrite, sources=[args.src])  # before any weights load
    ckpt = inspect_checkpoint(args.src, allow_pickle=args.allow_pickle)
    print(f"{args.src}: {ckpt.format} layout, {len(ckpt.files)} file(s), config {ckpt.config_source}")
    model = read_transformer(ckpt, jnp.dtype(args.dtype))
    save_flax_transformer(model, args.out, overwrite=args.overwrite)
  except (CheckpointError, FileExistsError, ValueError) as e:
    return error(e)
  n_bytes = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  print(f"converted {wan_params.num_tensors(ckpt.config)} tensors, {n_bytes / 1e6:.1f} MB as {args.dtype}, "
        f"in {time.time() - start:.1f} s -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
