"""The eraser directory format shared by the JAX side (`convert.export_erasers`) and the PyTorch side
(`convert.torch_erasers`); standard library only, so neither side pulls in the other's framework.

Version 1: `eraser_config.json` = {"format": "t2vu_erasers", "format_version": 1, "kind": "adapter" |
"lora", "placement": "cross_attn" | "self_attn", "rank": r, "alpha": float or null (LoRA scale is
alpha / r; null means alpha = r), "num_layers": L, "dim": D, "dtype": "float32"}, and
`erasers.safetensors` with, per block i, torch `nn.Linear` tensors (weight (out, in)): adapter
`blocks.{i}.down.weight` (r, D), `.down.bias` (r,), `.up.weight` (D, r), `.up.bias` (D,); lora
`blocks.{i}.{p}.lora_A.weight` (r, D) and `.lora_B.weight` (D, r) for p in to_q, to_k, to_v, to_out
(scale not folded in).
"""
from __future__ import annotations

import json
import os

FORMAT = "t2vu_erasers"
FORMAT_VERSION = 1
CONFIG_NAME = "eraser_config.json"
WEIGHTS_NAME = "erasers.safetensors"
KINDS = ("adapter", "lora")
PLACEMENTS = ("cross_attn", "self_attn")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out")


def tensor_shapes(kind: str, num_layers: int, dim: int, rank: int) -> dict[str, tuple[int, ...]]:
  """Every tensor name of the format with its shape."""
  if kind == "adapter":
    per = {"down.weight": (rank, dim), "down.bias": (rank,), "up.weight": (dim, rank), "up.bias": (dim,)}
  else:
    per = {f"{p}.lora_{ab}.weight": shape for p in LORA_TARGETS for ab, shape in (("A", (rank, dim)), ("B", (dim, rank)))}
  return {f"blocks.{i}.{k}": s for i in range(num_layers) for k, s in per.items()}


def check_config(cfg: dict, where: str) -> dict:
  """Validate an `eraser_config.json` dict; returns it."""
  if cfg.get("format") != FORMAT:
    raise ValueError(f"{where}: not an eraser config (format {cfg.get('format')!r}, expected {FORMAT!r})")
  if cfg.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{where}: eraser format version {cfg.get('format_version')!r} is not supported "
                     f"(this code reads version {FORMAT_VERSION})")
  if cfg.get("kind") not in KINDS:
    raise ValueError(f"{where}: eraser kind {cfg.get('kind')!r} is unknown; expected one of {KINDS}")
  if cfg.get("placement") not in PLACEMENTS or (cfg["kind"] == "lora" and cfg["placement"] != "cross_attn"):
    raise ValueError(f"{where}: placement {cfg.get('placement')!r} is invalid for {cfg['kind']} erasers")
  for field in ("rank", "num_layers", "dim"):
    v = cfg.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ValueError(f"{where}: field {field!r} must be a positive integer, got {v!r}")
  alpha = cfg.get("alpha")
  if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
    raise ValueError(f"{where}: field 'alpha' must be a positive number or null, got {alpha!r}")
  return cfg


def read_config(path: str) -> dict:
  file = os.path.join(path, CONFIG_NAME)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"eraser directory {path} does not exist")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not an eraser directory")
  try:
    with open(file) as f:
      cfg = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{file}: expected a JSON object")
  return check_config(cfg, file)
