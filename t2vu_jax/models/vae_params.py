"""Wan VAE weights: read a diffusers `AutoencoderKLWan` directory (`vae/`) into our `WanVAE`, streaming
and strict.

Our module tree carries diffusers' names, so the key table follows from it: every causal conv is a
Conv3d (`weight`, `bias`), every per-frame conv a Conv2d, every norm a `gamma` that diffusers stores
with trailing broadcast axes. Its resampling convs sit at index 1 of an `nn.Sequential` after the
(parameter-free) upsample or zero-pad.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.io.streaming import (CONV2D, CONV3D, IDENTITY, Param, Transform, component_config, parse_config,
                                   read_component)
from t2vu_jax.models.vae import AttentionBlock, CausalConv3d, RMSNorm, WanVAE, WanVAEConfig

SUBFOLDER = "vae"


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


def _config(path: str) -> tuple[str, WanVAEConfig]:
  directory, d = component_config(path, SUBFOLDER, "VAE")
  if d.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
    raise CheckpointError(f"{directory}/config.json describes a {d['_class_name']}, not an AutoencoderKLWan")
  return directory, parse_config(directory, WanVAEConfig.from_dict, d)


def read_vae_config(path: str) -> WanVAEConfig:
  return _config(path)[1]


def read_vae(path: str, dtype=jnp.float32, progress: bool = True, place=None) -> WanVAE:
  """Load a diffusers `AutoencoderKLWan` directory (or a pipeline's `vae/`) in `dtype`."""
  directory, cfg = _config(path)
  model = nnx.eval_shape(lambda: WanVAE(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
  where = (f"{directory} (Wan VAE: base_dim {cfg.base_dim}, z_dim {cfg.z_dim}, dim_mult {list(cfg.dim_mult)}, "
           f"{cfg.num_res_blocks} res blocks) does not match the Wan VAE")
  return read_component(directory, "VAE", model, lambda keys: (key_table(model), ()), where, place=place,
                        progress=progress)
