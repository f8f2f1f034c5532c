"""Export the erasers of an erased model on disk for PyTorch users.

  python -m convert.export_erasers --transformer PATH --erasers DIR --out PATH --as adapter|lora|lora_comfyui|merged

An erased model on disk is a transformer in any format `t2vu_jax.load_transformer` reads plus an
eraser directory. `adapter` writes an eraser directory for `convert.torch_erasers`; `lora` a diffusers
LoRA file (LoRA erasers); `merged` a diffusers transformer with LoRA erasers folded in. The writers are
`t2vu_jax.models.erasers_params`.
"""
from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp

from t2vu_jax.cli import error
from t2vu_jax.io.atomic import check_writable
from t2vu_jax.io.eraser_format import CONFIG_NAME, WEIGHTS_NAME
from t2vu_jax.models.erasers_params import EXPORT_FORMATS, export, load_erasers_into
from t2vu_jax.models.wan_params import abstract_transformer, transformer_config


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m convert.export_erasers", description=__doc__.split("\n")[0])
  p.add_argument("--transformer", required=True, help="the base transformer (any format load_transformer reads)")
  p.add_argument("--erasers", required=True, help=f"eraser directory ({CONFIG_NAME} + {WEIGHTS_NAME})")
  p.add_argument("--out", required=True, help="output directory (or a .safetensors file for a LoRA)")
  p.add_argument("--as", dest="kind", required=True, choices=EXPORT_FORMATS,
                 help="lora: diffusers keys; lora_comfyui: original Wan / ComfyUI keys with alphas")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="weight dtype of a merged transformer")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  try:
    check_writable(args.out, args.overwrite, sources=[args.transformer, args.erasers])  # before any weights load
    if args.kind == "merged":
      import t2vu_jax
      model = t2vu_jax.load_transformer(args.transformer, args.dtype)
    else:  # the architecture alone: adapter and LoRA files hold only eraser weights
      model = abstract_transformer(transformer_config(args.transformer), jnp.float32)
    export(load_erasers_into(model, args.erasers), args.kind, args.out, overwrite=args.overwrite)
  except (ValueError, OSError) as e:
    return error(e)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
