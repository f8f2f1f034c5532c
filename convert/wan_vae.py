"""Read a diffusers `AutoencoderKLWan` directory (`vae/`) into our `WanVAE`, streaming and strict.

Our module tree carries diffusers' names, so the key table follows from it: every causal conv is a
Conv3d (`weight`, `bias`), every per-frame conv a Conv2d, every norm a `gamma` that diffusers stores
with trailing broadcast axes. Its resampling convs sit at index 1 of an `nn.Sequential` after the
(parameter-free) upsample or zero-pad.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
from flax import nnx

from convert.safetensors_io import SafetensorsError
from convert.streaming import (CONV2D, CONV3D, IDENTITY, CheckpointError, Param, SafetensorsSource,
                               Transform, component_dir, read_into_module, safetensors_files)
from t2vu_jax.models.vae import AttentionBlock, CausalConv3d, RMSNorm, WanVAE, WanVAEConfig


def gamma(trailing: int) -> Transform:
  """A per-channel vector stored by diffusers as (C, 1, ..., 1) with `trailing` ones."""
  return Transform(f"gamma{trailing}", lambda a: a.reshape(a.shape[0]),
                   lambda a: a.reshape(a.shape + (1,) * trailing))


def torch_name(path) -> str:
  names = [str(p) for p in path]
  if names[-1] == "resample":
    names.append("1")
  return ".".join(names)


def key_table(model: WanVAE) -> list[Param]:
  """The (NNX path, diffusers key, transform) of every parameter of `model` (abstract or not)."""
  nodes = dict(nnx.iter_graph(model))
  table = []
  for path, node in nodes.items():
    if isinstance(node, (CausalConv3d, nnx.Conv)):
      transform = CONV3D if isinstance(node, CausalConv3d) else CONV2D
      table += [Param(path + ("kernel",), f"{torch_name(path)}.weight", transform),
                Param(path + ("bias",), f"{torch_name(path)}.bias", IDENTITY)]
    elif isinstance(node, RMSNorm):
      in_attention = isinstance(nodes[path[:-1]], AttentionBlock)  # image norm (C,1,1), else video (C,1,1,1)
      table.append(Param(path + ("gamma",), f"{torch_name(path)}.gamma", gamma(2 if in_attention else 3)))
  return table


def read_vae_config(path: str) -> WanVAEConfig:
  directory = component_dir(path, "vae")
  if not os.path.isdir(directory):
    raise CheckpointError(f"VAE directory does not exist: {directory}")
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"VAE: no config.json in {directory}")
  with open(config_path) as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
  if d.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
    raise CheckpointError(f"{config_path} describes a {d['_class_name']}, not an AutoencoderKLWan")
  try:
    return WanVAEConfig.from_dict(d)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{config_path}: {e}") from None


def read_vae(path: str, dtype=jnp.float32, progress: bool = True, place=None) -> WanVAE:
  """Load a diffusers `AutoencoderKLWan` directory (or a pipeline's `vae/`) in `dtype`."""
  directory = component_dir(path, "vae")
  cfg = read_vae_config(directory)
  model = nnx.eval_shape(lambda: WanVAE(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
  try:
    source = SafetensorsSource(safetensors_files(directory, "VAE"))
  except SafetensorsError as e:
    raise CheckpointError(f"VAE: {e}") from None
  where = (f"{directory} (Wan VAE: base_dim {cfg.base_dim}, z_dim {cfg.z_dim}, dim_mult {list(cfg.dim_mult)}, "
           f"{cfg.num_res_blocks} res blocks) does not match the Wan VAE")
  return read_into_module(model, key_table(model), source, where=where, place=place, progress=progress,
                          desc="VAE")
