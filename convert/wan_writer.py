"""Write a `WanTransformer` back out as PyTorch checkpoints: diffusers directory or original Wan layout."""
from __future__ import annotations

import json
import os

import numpy as np
from tqdm.auto import tqdm

from convert import wan_keys
from convert.atomic import atomic_directory
from convert.safetensors_io import TensorSpec, write_safetensors
from convert.streaming import module_tensors
from t2vu_jax.models.wan import WanTransformer

WEIGHTS_NAME = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.35.0"


def parse_size(size) -> int:
  """'5GB' / '500MB' / 1024 → bytes."""
  if isinstance(size, int):
    return size
  units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
  s = str(size).strip().upper()
  for unit, factor in units.items():
    if s.endswith(unit):
      return int(float(s[:-len(unit)]) * factor)
  return int(s)


def transformer_tensors(model: WanTransformer, layout: str, dtype=None) -> list[TensorSpec]:
  """Every checkpoint tensor of `model` in `layout` order, produced lazily one at a time.

  `dtype` None writes every tensor in the model's dtype (a bf16 model gives a bf16 checkpoint,
  including the fp32-kept norms, exactly as they were read).
  """
  table = [entry.param(layout) for entry in wan_keys.key_table(model.config)]
  return module_tensors(model, table, model.config.num_layers, dtype or model.dtype)


def _write_shards(specs, directory, max_shard_size, progress) -> tuple[int, int]:
  limit = parse_size(max_shard_size)
  shards, current, size = [], [], 0
  for s in specs:
    nbytes = s.dtype.itemsize * int(np.prod(s.shape, dtype=np.int64))
    if current and size + nbytes > limit:
      shards.append(current)
      current, size = [], 0
    current.append(s)
    size += nbytes
  shards.append(current)
  total, weight_map = 0, {}
  bar = tqdm(total=len(specs), desc="writing", unit="tensor", disable=not progress)
  for n, shard in enumerate(shards, 1):
    name = f"{WEIGHTS_NAME}.safetensors" if len(shards) == 1 else \
        f"{WEIGHTS_NAME}-{n:05d}-of-{len(shards):05d}.safetensors"
    total += write_safetensors(os.path.join(directory, name), _counting(shard, bar), {"format": "pt"})
    weight_map.update({s.name: name for s in shard})
  bar.close()
  if len(shards) > 1:
    with open(os.path.join(directory, f"{WEIGHTS_NAME}.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return len(specs), total


def _counting(specs, bar):
  def wrap(s):
    def produce():
      a = s.produce()
      bar.update(1)
      return a
    return s._replace(produce=produce)
  return [wrap(s) for s in specs]


def save_diffusers(model: WanTransformer, out: str, max_shard_size="5GB", dtype=None,
                   overwrite: bool = False, progress: bool = True) -> tuple[int, int]:
  """A diffusers `WanTransformer3DModel` directory; returns (tensor count, bytes)."""
  with atomic_directory(out, overwrite) as tmp:
    config = {"_class_name": "WanTransformer3DModel", "_diffusers_version": DIFFUSERS_VERSION,
              **model.config.to_dict()}
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    return _write_shards(transformer_tensors(model, "diffusers", dtype), tmp, max_shard_size, progress)


def save_wan(model: WanTransformer, out: str, max_shard_size="10GB", dtype=None,
             overwrite: bool = False, progress: bool = True) -> tuple[int, int]:
  """The original Wan-AI layout (`config.json` + safetensors); returns (tensor count, bytes)."""
  cfg = model.config
  with atomic_directory(out, overwrite) as tmp:
    config = {"_class_name": "WanModel", "_diffusers_version": DIFFUSERS_VERSION, "model_type": "t2v",
              "patch_size": list(cfg.patch_size), "text_len": 512, "in_dim": cfg.in_channels, "dim": cfg.dim,
              "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim,
              "out_dim": cfg.out_channels, "num_heads": cfg.num_attention_heads, "num_layers": cfg.num_layers,
              "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": cfg.cross_attn_norm, "eps": cfg.eps}
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    return _write_shards(transformer_tensors(model, "wan", dtype), tmp, max_shard_size, progress)
