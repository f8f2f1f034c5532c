"""Adapter erasers in the layout of the T2VUnlearning / Receler code (which PROBE's Wan port loads), to
and from our eraser directories.

  python -m convert.probe_erasers --to-probe ERASER_DIR --out PROBE_DIR
  python -m convert.probe_erasers --from-probe PROBE_DIR --out ERASER_DIR

Their layout is a directory with `eraser_config.json` = {"eraser_type": "adapter", "eraser_rank": r}
and `eraser_weights.pt`, a torch-saved dict from `blocks.{i}.cross_attn.adapter` (the module path of
block i's `WanAttentionBlock.cross_attn` in the original Wan model) to that `AdapterEraser`'s state
dict: `down.weight` (r, D), `down.bias` (r,), `up.weight` (D, r), `up.bias` (D,). The adapter turns the
cross-attention output h into h + up(gelu(down(h))): our adapter erasers at placement "cross_attn",
the only kind and placement with a form there. Tensors are copied exactly (float32 on our side).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

from convert.torch_erasers import TorchWanErasers, load_erasers
from t2vu_jax.cli import error
from t2vu_jax.io.atomic import atomic_directory, check_writable

PROBE_CONFIG = "eraser_config.json"
PROBE_WEIGHTS = "eraser_weights.pt"
ADAPTER_KEYS = ("down.weight", "down.bias", "up.weight", "up.bias")
_BLOCK = re.compile(r"blocks\.(\d+)\.cross_attn\.adapter")


def probe_key(layer: int) -> str:
  return f"blocks.{layer}.cross_attn.adapter"


def read_probe(path: str) -> TorchWanErasers:
  """Their eraser directory `path` as our PyTorch erasers (adapter, cross_attn), validated."""
  path = os.fspath(path)
  config_path, weights_path = os.path.join(path, PROBE_CONFIG), os.path.join(path, PROBE_WEIGHTS)
  for f in (config_path, weights_path):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{path} is not a T2VUnlearning/PROBE eraser directory: no {os.path.basename(f)}")
  with open(config_path) as f:
    try:
      cfg = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path}: not JSON ({e})") from None
  if cfg.get("eraser_type") != "adapter":
    raise ValueError(f"{config_path}: eraser_type {cfg.get('eraser_type')!r} is not supported; only 'adapter' "
                     "erasers have this layout")
  rank = cfg.get("eraser_rank")
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"{config_path}: eraser_rank must be a positive integer, got {rank!r}")
  try:
    ckpt = torch.load(weights_path, map_location="cpu", weights_only=True)
  except Exception as e:  # a truncated or foreign file: torch raises several types
    raise ValueError(f"{weights_path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from None
  if not isinstance(ckpt, dict):
    raise ValueError(f"{weights_path}: holds a {type(ckpt).__name__}, not a dict of adapters")
  if unknown := sorted(k for k in ckpt if not _BLOCK.fullmatch(str(k))):
    raise ValueError(f"{weights_path}: unexpected entries {unknown[:3]}; expected blocks.N.cross_attn.adapter")
  layers = sorted(int(_BLOCK.fullmatch(k).group(1)) for k in ckpt)
  if layers != list(range(len(layers))) or not layers:
    raise ValueError(f"{weights_path}: adapters of blocks {layers} are not blocks 0..N-1")
  dim = None
  tensors = {}
  for i in layers:
    state = ckpt[probe_key(i)]
    if not isinstance(state, dict) or sorted(state) != sorted(ADAPTER_KEYS):
      got = sorted(state) if isinstance(state, dict) else type(state).__name__
      raise ValueError(f"{weights_path}: {probe_key(i)} holds {got}, expected {list(ADAPTER_KEYS)}")
    dim = dim or state["up.weight"].shape[0]
    expected = {"down.weight": (rank, dim), "down.bias": (rank,), "up.weight": (dim, rank), "up.bias": (dim,)}
    for name, shape in expected.items():
      if tuple(state[name].shape) != shape:
        raise ValueError(f"{weights_path}: {probe_key(i)}.{name} has shape {tuple(state[name].shape)}, expected "
                         f"{shape} (eraser_rank {rank}, width {dim})")
      tensors[f"blocks.{i}.{name}"] = state[name].to(torch.float32)
  erasers = TorchWanErasers("adapter", "cross_attn", rank, None, len(layers), dim, device="meta")
  erasers.load_state_dict(tensors, strict=True, assign=True)
  return erasers


def write_probe(erasers: TorchWanErasers, out: str, overwrite: bool = False) -> str:
  """Our PyTorch erasers as their eraser directory `out` (atomic)."""
  if erasers.kind != "adapter" or erasers.placement != "cross_attn":
    raise ValueError(f"{erasers.kind} erasers at placement {erasers.placement!r} have no T2VUnlearning/PROBE form: "
                     "it holds adapter erasers on the cross-attention output (eraser.kind='adapter', "
                     "eraser.placement='cross_attn')")
  ckpt = {probe_key(i): {k: v.detach().to("cpu").contiguous() for k, v in block.state_dict().items()}
          for i, block in enumerate(erasers.blocks)}
  with atomic_directory(os.fspath(out), overwrite) as tmp:
    torch.save(ckpt, os.path.join(tmp, PROBE_WEIGHTS))
    with open(os.path.join(tmp, PROBE_CONFIG), "w") as f:
      json.dump({"eraser_type": "adapter", "eraser_rank": erasers.rank}, f, indent=4)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m convert.probe_erasers", description=__doc__.split("\n")[0])
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--to-probe", metavar="ERASER_DIR", help="our eraser directory (adapter, cross_attn)")
  source.add_argument("--from-probe", metavar="PROBE_DIR", help=f"their directory ({PROBE_CONFIG} + {PROBE_WEIGHTS})")
  p.add_argument("--out", required=True, help="the directory to write")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  src = args.to_probe or args.from_probe
  try:
    check_writable(args.out, args.overwrite, sources=[src])
    if args.to_probe:
      write_probe(load_erasers(src), args.out, args.overwrite)
    else:
      read_probe(src).save(args.out, args.overwrite)
  except (ValueError, OSError) as e:
    return error(e)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
