"""Eraser weights on disk: our eraser directory (`t2vu_jax.io.eraser_format`), a diffusers LoRA file,
and a diffusers transformer with LoRA erasers merged in.

- `save_erasers` / `load_erasers_into`: the eraser directory (`eraser_config.json` +
  `erasers.safetensors`, fp32); `convert.torch_erasers.load_erasers` reads the same directory in
  plain PyTorch. `export_adapter` is `save_erasers` under its export name.
- `export_lora`: LoRA erasers as a diffusers LoRA file (`WanPipeline.load_lora_weights`), keys
  `transformer.blocks.{i}.attn2.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight`, A (r, D), B (D, r),
  with our scale alpha/r folded into B (diffusers loads files without alphas at scale 1); or, with
  `layout="comfyui"` (export format `lora_comfyui`), in the original Wan / ComfyUI key format
  `diffusion_model.blocks.{i}.cross_attn.{q,k,v,o}.lora_{A,B}.weight` with each pair's `alpha`, which
  ComfyUI's LoRA loader and diffusers' `load_lora_weights` both read (scale alpha/r).
- `export_merged`: LoRA erasers folded into the cross-attention weights, written as a stock diffusers
  `WanTransformer3DModel` directory. Adapter erasers are refused: their GELU MLP on an attention
  output has no place in the stock architecture, so no weights of it compute the erased model.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.io import eraser_format as fmt
from t2vu_jax.io.atomic import atomic_directory, atomic_file
from t2vu_jax.io.safetensors_io import TensorSpec, write_safetensors
from t2vu_jax.models.erasers import EraserConfig, attach_erasers, merge_lora
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.models.wan_params import save_diffusers

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
EXPORT_FORMATS = ("adapter", "lora", "lora_comfyui", "merged")
LORA_LAYOUTS = ("diffusers", "comfyui")
_ORIGINAL_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out": "o"}  # diffusers -> original Wan names
F32 = np.dtype(np.float32)


def _erasers(model: WanTransformer):
  if getattr(model, "erasers", None) is None:
    raise ValueError("the model has no erasers attached: nothing to export "
                     "(attach or load erasers first: attach_erasers / load_erasers_into)")
  return model.erasers, model.eraser_config


def _host(param) -> np.ndarray:
  return np.asarray(jax.device_get(param[...]), dtype=F32)


def eraser_config_dict(model: WanTransformer) -> dict:
  """The `eraser_config.json` of `model`'s erasers."""
  _, cfg = _erasers(model)
  return fmt.config_dict(cfg.kind, cfg.placement, cfg.rank, cfg.alpha, model.config.num_layers, model.config.dim)


def _lazy_layers(erasers, scale_of=lambda param: None):
  """produce(param, layer) -> a function giving that layer of the stacked eraser parameter, torch
  (out, in) layout, times `scale_of(param)` when that is not None; each parameter fetched to the
  host once."""
  host = {}

  def produce(param, layer):
    def f():
      if param not in host:
        host[param] = _host(getattr(erasers, param))
      a = host[param][layer].T
      scale = scale_of(param)
      return a if scale is None else a * np.float32(scale)
    return f
  return produce


def eraser_digest(model: WanTransformer) -> str:
  """sha256 of the eraser weights (fp32, parameter by parameter in name order) and their configuration:
  which erasers a report, evaluation or export was made from."""
  erasers, _ = _erasers(model)
  digest = hashlib.sha256(json.dumps(eraser_config_dict(model), sort_keys=True).encode())
  for path, value in sorted(nnx.to_flat_state(nnx.state(erasers)), key=lambda kv: kv[0]):
    digest.update(".".join(map(str, path)).encode())
    digest.update(np.ascontiguousarray(_host(value)).tobytes())
  return digest.hexdigest()


def save_erasers(model: WanTransformer, out: str, overwrite: bool = False) -> str:
  """Write `model`'s erasers as an eraser directory at `out` (atomic); returns `out`."""
  erasers, cfg = _erasers(model)
  config = eraser_config_dict(model)
  produce = _lazy_layers(erasers)
  specs = [TensorSpec(k, s, F32, produce(p, i))
           for k, (p, i, s) in fmt.tensor_layout(cfg.kind, model.config.num_layers, model.config.dim,
                                                 cfg.rank).items()]
  with atomic_directory(out, overwrite) as tmp:
    write_safetensors(os.path.join(tmp, fmt.WEIGHTS_NAME), specs, {"format": "pt"})
    with open(os.path.join(tmp, fmt.CONFIG_NAME), "w") as f:
      json.dump(config, f, indent=2)
  return out


export_adapter = save_erasers  # the erasers for `convert.torch_erasers` (adapter or LoRA kind)


def load_erasers_into(model: WanTransformer, path: str) -> WanTransformer:
  """Attach the erasers of eraser directory `path` to `model` (replacing any), bit-exact; returns it.
  A directory that fails any check leaves `model` as it was."""
  cfg = fmt.read_config(path)
  mc = model.config
  if (cfg["num_layers"], cfg["dim"]) != (mc.num_layers, mc.dim):
    raise ValueError(f"erasers in {path} are for a transformer with num_layers={cfg['num_layers']}, "
                     f"dim={cfg['dim']}; this one has num_layers={mc.num_layers}, dim={mc.dim}")
  tensors = fmt.read_tensors(path, cfg)
  stacked = {}
  for k, (param, layer, _) in fmt.tensor_layout(cfg["kind"], cfg["num_layers"], cfg["dim"], cfg["rank"]).items():
    stacked.setdefault(param, [None] * cfg["num_layers"])[layer] = tensors[k].T
  attach_erasers(model, EraserConfig(cfg["kind"], cfg["placement"], cfg["rank"], cfg.get("alpha")))
  for param, layers in stacked.items():
    getattr(model.erasers, param)[...] = jnp.asarray(np.stack(layers))
  return model


def lora_specs(model: WanTransformer, layout: str = "diffusers") -> list[TensorSpec]:
  """The LoRA tensors of `model`'s LoRA erasers: diffusers keys with the scale folded into lora_B, or
  (layout "comfyui") original Wan keys with the scale as each pair's alpha."""
  erasers, cfg = _erasers(model)
  if cfg.kind != "lora":
    raise ValueError(f"the model's erasers are {cfg.kind!r}, not LoRA: they have no LoRA form; export them "
                     "with --as adapter (convert/torch_erasers.py attaches them in PyTorch)")
  if layout not in LORA_LAYOUTS:
    raise ValueError(f"unknown LoRA layout {layout!r}; choose one of {LORA_LAYOUTS}")
  n, d, r, scale = model.config.num_layers, model.config.dim, cfg.rank, cfg.lora_scale
  fold = layout == "diffusers" and scale != 1
  produce = _lazy_layers(erasers, lambda param: scale if fold and param.endswith("_b") else None)
  specs = []
  for i in range(n):
    for ours, theirs in fmt.LORA_TARGETS.items():
      if layout == "diffusers":
        key = f"transformer.blocks.{i}.attn2.{'to_out.0' if theirs == 'to_out' else theirs}"
      else:
        key = f"diffusion_model.blocks.{i}.cross_attn.{_ORIGINAL_ATTENTION[theirs]}"
      specs.append(TensorSpec(f"{key}.lora_A.weight", (r, d), F32, produce(f"{ours}_a", i)))
      specs.append(TensorSpec(f"{key}.lora_B.weight", (d, r), F32, produce(f"{ours}_b", i)))
      if layout == "comfyui":
        specs.append(TensorSpec(f"{key}.alpha", (), F32, lambda: np.float32(scale * r)))
  return specs


def export_lora(model: WanTransformer, out: str, overwrite: bool = False, layout: str = "diffusers") -> str:
  """LoRA erasers as a LoRA file (`layout`: "diffusers" or "comfyui", see the module docstring): `out`
  ending in `.safetensors` is the file itself, otherwise a directory holding
  `pytorch_lora_weights.safetensors`; either loads with `pipe.load_lora_weights(out)`."""
  specs = lora_specs(model, layout)
  metadata = {"format": "pt", "t2vu_eraser_config": json.dumps(eraser_config_dict(model))}
  if str(out).endswith(".safetensors"):
    with atomic_file(out, overwrite) as tmp:
      write_safetensors(tmp, specs, metadata)
  else:
    with atomic_directory(out, overwrite) as tmp:
      write_safetensors(os.path.join(tmp, LORA_WEIGHT_NAME), specs, metadata)
  return out


def export_merged(model: WanTransformer, out: str, dtype=None, overwrite: bool = False,
                  max_shard_size="5GB", progress: bool = True) -> str:
  """LoRA erasers merged into attn2's weights, as a diffusers transformer directory (atomic);
  `model` keeps its erasers. `dtype` None writes the model's dtype."""
  _, cfg = _erasers(model)
  if cfg.kind != "lora":
    raise ValueError(f"{cfg.kind!r} erasers cannot be merged: the stock WanTransformer3DModel has no place for "
                     "their GELU MLP; export them with --as adapter and attach them with "
                     "convert/torch_erasers.py, or train LoRA erasers for a mergeable model")
  save_diffusers(merge_lora(nnx.clone(model)), out, max_shard_size, dtype, overwrite, progress)
  return out


def export(model: WanTransformer, kind: str, out: str, dtype=None, overwrite: bool = False,
           progress: bool = True) -> str:
  """Write `model`'s erasers in export format `kind` (one of `EXPORT_FORMATS`)."""
  if kind == "merged":
    return export_merged(model, out, dtype=dtype, overwrite=overwrite, progress=progress)
  if kind not in EXPORT_FORMATS:
    raise ValueError(f"unknown export format {kind!r}; choose one of {EXPORT_FORMATS}")
  if kind == "adapter":
    return export_adapter(model, out, overwrite)
  return export_lora(model, out, overwrite, "comfyui" if kind == "lora_comfyui" else "diffusers")
