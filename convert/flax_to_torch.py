"""Export a Wan2.1 transformer to PyTorch: a diffusers directory or the original Wan-AI layout.

  python -m convert.flax_to_torch --src DIR --out PATH --format diffusers|wan
"""
from __future__ import annotations

import argparse
import sys
import time

from t2vu_jax.cli import error
from t2vu_jax.io.atomic import check_writable
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models.wan_params import load_transformer, save_diffusers, save_wan


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m convert.flax_to_torch", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="a directory written by convert.torch_to_flax (or any "
                 "checkpoint load_transformer reads)")
  p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
  p.add_argument("--format", default="diffusers", choices=["diffusers", "wan"])
  p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                 help="tensor dtype on disk (default: the model's dtype)")
  p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)

  start = time.time()
  try:
    check_writable(args.out, args.overwrite, sources=[args.src])  # before any weights load
    model = load_transformer(args.src, dtype=args.dtype)
    save = save_diffusers if args.format == "diffusers" else save_wan
    n, nbytes = save(model, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype,
                     overwrite=args.overwrite)
  except (CheckpointError, FileExistsError, ValueError) as e:
    return error(e)
  print(f"wrote {n} tensors, {nbytes / 1e6:.1f} MB ({args.format} layout) in {time.time() - start:.1f} s "
        f"-> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
