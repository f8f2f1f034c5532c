"""`load_transformer`: one entry point for every Wan transformer format we read."""
from __future__ import annotations

import os

import jax.numpy as jnp

from convert.flax_checkpoint import read_flax_transformer
from convert.wan_loader import FLAX_MARKER, inspect_checkpoint, read_transformer
from t2vu_jax.models.wan import WanTransformer


def load_transformer(path: str, dtype="float32", allow_pickle: bool = False, progress: bool = True,
                     mesh=None, **model_kwargs) -> WanTransformer:
  """Load a Wan2.1 T2V transformer as an NNX module.

  `path` may be a diffusers `transformer/` or pipeline directory, original Wan-AI weights, a ComfyUI
  `.safetensors` file, or a directory written by `convert.torch_to_flax`. `dtype` is the compute and
  weight dtype; norms, modulation tables and the condition embedder always stay fp32.
  `dtype=None` keeps the dtype a Flax directory was saved in (float32 for PyTorch checkpoints).
  `model_kwargs` go to `WanTransformer` (scan_layers, remat, attention). With a `mesh`
  (`t2vu_jax.sharding.make_mesh`) each weight goes straight into its sharding as it is read; no
  device ever holds the whole model.
  """
  path = str(path)
  if os.path.isfile(os.path.join(path, FLAX_MARKER)):
    return read_flax_transformer(path, dtype and jnp.dtype(dtype), mesh=mesh, **model_kwargs)
  ckpt = inspect_checkpoint(path, allow_pickle=allow_pickle)
  place = None
  if mesh is not None:
    from t2vu_jax.sharding import placer
    place = placer(mesh)
  return read_transformer(ckpt, jnp.dtype(dtype or "float32"), place=place, progress=progress, **model_kwargs)
