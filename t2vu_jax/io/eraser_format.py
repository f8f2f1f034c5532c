"""The eraser directory format, shared by the JAX side (`t2vu_jax.models.erasers_params`) and the
PyTorch side (`convert.torch_erasers`); standard library and numpy only (the safetensors reader it uses,
`t2vu_jax.io.safetensors_io`, needs numpy and ml_dtypes), so neither side pulls in the other's framework.

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
import math
import os

import numpy as np

FORMAT = "t2vu_erasers"
FORMAT_VERSION = 1
CONFIG_NAME = "eraser_config.json"
WEIGHTS_NAME = "erasers.safetensors"
KINDS = ("adapter", "lora")
PLACEMENTS = ("cross_attn", "self_attn")
# LoRA targets: our parameter prefix -> the attention projection it adapts (diffusers' names)
LORA_TARGETS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out"}


def config_dict(kind: str, placement: str, rank: int, alpha: float | None, num_layers: int, dim: int) -> dict:
  """The `eraser_config.json` contents of an eraser set."""
  return dict(format=FORMAT, format_version=FORMAT_VERSION, kind=kind, placement=placement, rank=rank,
              alpha=alpha, num_layers=num_layers, dim=dim, dtype="float32")


def tensor_layout(kind: str, num_layers: int, dim: int, rank: int) -> dict[str, tuple[str, int, tuple[int, ...]]]:
  """File tensor name -> (our stacked eraser parameter, layer, torch shape). Each file tensor is its
  layer of our (in, out) parameter, transposed."""
  if kind == "adapter":
    per = {"down.weight": ("down_w", (rank, dim)), "down.bias": ("down_b", (rank,)),
           "up.weight": ("up_w", (dim, rank)), "up.bias": ("up_b", (dim,))}
  else:
    per = {}
    for ours, theirs in LORA_TARGETS.items():
      per[f"{theirs}.lora_A.weight"] = (f"{ours}_a", (rank, dim))
      per[f"{theirs}.lora_B.weight"] = (f"{ours}_b", (dim, rank))
  return {f"blocks.{i}.{k}": (p, i, s) for i in range(num_layers) for k, (p, s) in per.items()}


def tensor_shapes(kind: str, num_layers: int, dim: int, rank: int) -> dict[str, tuple[int, ...]]:
  """Every tensor name of the format with its shape."""
  return {k: s for k, (_, _, s) in tensor_layout(kind, num_layers, dim, rank).items()}


def check_config(cfg: dict, where: str) -> dict:
  """Validate an `eraser_config.json` dict; returns it."""
  if cfg.get("format") != FORMAT and "eraser_type" in cfg:
    raise ValueError(f"{where}: a T2VUnlearning/PROBE eraser config (eraser_weights.pt); convert the directory "
                     "with python -m convert.probe_erasers --from-probe DIR --out NEW_DIR")
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
  if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0
                            or not math.isfinite(alpha)):
    raise ValueError(f"{where}: field 'alpha' must be a finite positive number or null, got {alpha!r}")
  return cfg


def read_config(path: str) -> dict:
  """The validated `eraser_config.json` of eraser directory `path`."""
  file = os.path.join(path, CONFIG_NAME)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"eraser directory {path} does not exist")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not an eraser directory")
  try:
    with open(file, encoding="utf-8") as f:
      cfg = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{file}: expected a JSON object")
  return check_config(cfg, file)


def weights_file(path: str) -> str:
  """The `erasers.safetensors` of eraser directory `path`, which must exist."""
  file = os.path.join(path, WEIGHTS_NAME)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}")
  return file


def check_tensors(shapes: dict[str, tuple], cfg: dict, where: str) -> None:
  """The file's tensor names and shapes are those `cfg` implies, or a ValueError naming what differs.
  A config claiming more blocks than the file holds is refused before the expected names are listed."""
  blocks = {name.split(".")[1] for name in shapes if name.startswith("blocks.") and name.count(".") > 1}
  if cfg["num_layers"] > len(blocks):
    raise ValueError(f"{where}: {CONFIG_NAME} says num_layers={cfg['num_layers']}, but the file holds "
                     f"tensors of {len(blocks)} block(s)")
  expected = tensor_shapes(cfg["kind"], cfg["num_layers"], cfg["dim"], cfg["rank"])
  missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
  if missing or extra:
    raise ValueError(f"{where}: tensors do not match {CONFIG_NAME}: missing {missing[:6]}"
                     f"{' ...' if len(missing) > 6 else ''}, unexpected {extra[:6]}{' ...' if len(extra) > 6 else ''}")
  for k, s in expected.items():
    if tuple(shapes[k]) != tuple(s):
      raise ValueError(f"{where}: tensor {k!r} has shape {tuple(shapes[k])}, {CONFIG_NAME} implies {tuple(s)}")


def read_tensors(path: str, cfg: dict) -> dict[str, np.ndarray]:
  """Every tensor of eraser directory `path` as fp32 numpy in the file's (torch) layout, after checking
  names, shapes, dtypes and values against its config `cfg` (from `read_config`)."""
  from t2vu_jax.io.safetensors_io import SafetensorsError, SafetensorsFile
  file = weights_file(path)
  try:
    with SafetensorsFile(file) as st:
      check_tensors({k: t.shape for k, t in st.tensors.items()}, cfg, file)
      tensors = {}
      for k in st.keys():
        values = st.read(k)
        check_values(k, values, file)
        tensors[k] = np.array(values, dtype=np.float32)
  except SafetensorsError as e:
    raise ValueError(str(e)) from None
  return tensors


def check_values(name: str, values: np.ndarray, where: str) -> None:
  """Floating point and finite, or a ValueError naming the tensor."""
  if values.dtype.kind != "f" and values.dtype.name != "bfloat16":
    raise ValueError(f"{where}: tensor {name!r} has dtype {values.dtype}, expected floating point")
  if not np.isfinite(values.astype(np.float32)).all():
    raise ValueError(f"{where}: tensor {name!r} has NaN or Inf values")
