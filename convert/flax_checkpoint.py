"""Our own on-disk model format: Orbax parameters plus the architecture as JSON."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from convert.atomic import atomic_directory
from convert.wan_loader import FLAX_MARKER, abstract_transformer
from t2vu_jax.models.wan import WanConfig, WanTransformer


def save_flax_transformer(model: WanTransformer, out: str, overwrite: bool = False) -> None:
  """Write `out/t2vu_model.json` (architecture, dtype) and `out/params/` (Orbax)."""
  with atomic_directory(out, overwrite) as tmp:
    with open(os.path.join(tmp, FLAX_MARKER), "w") as f:
      json.dump({"model": "wan_transformer", "dtype": jnp.dtype(model.dtype).name,
                 "config": model.config.to_dict()}, f, indent=2)
    # Synchronous: an async save would first copy every array to host memory. Uncompressed:
    # zstd builds a whole compressed copy of each (stacked, up to ~1 GB) array before writing,
    # and weights barely compress.
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))
    checkpointer.save(os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(
        nnx.state(model, nnx.Param).to_pure_dict()))


def read_flax_transformer(path: str, dtype=None, mesh=None, **model_kwargs) -> WanTransformer:
  """Restore a model written by `save_flax_transformer`, cast to `dtype` (default: as saved); with a
  `mesh`, every array is restored straight into its sharding (`t2vu_jax.sharding`)."""
  with open(os.path.join(path, FLAX_MARKER)) as f:
    meta = json.load(f)
  config = WanConfig.from_dict(meta["config"])
  model = abstract_transformer(config, dtype or meta["dtype"], **model_kwargs)
  graphdef, abstract = nnx.split(model)
  target = abstract.to_pure_dict()
  if mesh is not None:
    from t2vu_jax.sharding import param_shardings
    shardings = param_shardings(abstract, mesh).to_pure_dict()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
  restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"), target)
  restored = jax.tree.map(lambda r, a: r.astype(a.dtype), restored, target)
  nnx.replace_by_pure_dict(abstract, restored)
  return nnx.merge(graphdef, abstract)
