"""Export a model's erasers for PyTorch users, and our own eraser save/load.

- `save_erasers` / `load_erasers_into`: our eraser directory (`eraser_config.json` +
  `erasers.safetensors`, fp32, the format documented in `convert/torch_erasers.py`); the JAX side
  and `convert.torch_erasers.load_erasers` both read it. `export_adapter` writes the same.
- `export_lora`: LoRA erasers as a diffusers LoRA file (`WanPipeline.load_lora_weights`), keys
  `transformer.blocks.{i}.attn2.{to_q,to_k,to_v,to_out.0}.lora_{A,B}.weight`, A (r, D), B (D, r),
  with our scale alpha/r folded into B (diffusers loads files without alphas at scale 1).
- `export_merged`: LoRA erasers folded into the cross-attention weights, written as a stock diffusers
  `WanTransformer3DModel` directory. Adapter erasers are refused: their GELU MLP on an attention
  output has no place in the stock architecture, so no weights of it compute the erased model.

CLI (an erased model on disk is a transformer in any format `t2vu_jax.load_transformer` reads plus
an eraser directory):
  python -m convert.export_erasers --transformer PATH --erasers DIR --out PATH --as adapter|lora|merged
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.atomic import atomic_directory
from convert.eraser_format import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, read_config
from convert.safetensors_io import SafetensorsError, SafetensorsFile, TensorSpec, write_safetensors
from t2vu_jax.models.erasers import LORA_TARGETS, EraserConfig, attach_erasers, merge_lora
from t2vu_jax.models.wan import WanTransformer

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
F32 = np.dtype(np.float32)
# our LoRA param prefix -> the diffusers module name inside attn2
LORA_MODULES = {name: ("to_out.0" if torch_name == "to_out" else torch_name) for name, torch_name in LORA_TARGETS.items()}


def _erasers(model: WanTransformer):
  if getattr(model, "erasers", None) is None:
    raise ValueError("the model has no erasers attached: nothing to export "
                     "(attach or load erasers first: attach_erasers / load_erasers_into)")
  return model.erasers, model.eraser_config


def _host(param) -> np.ndarray:
  return np.asarray(jax.device_get(param[...]), dtype=F32)


def _layout(kind: str, num_layers: int, dim: int, rank: int) -> dict[str, tuple[str, int, tuple]]:
  """File tensor name -> (our stacked param, layer, torch shape); every tensor is our (in, out) transposed."""
  if kind == "adapter":
    per = {"down.weight": ("down_w", (rank, dim)), "down.bias": ("down_b", (rank,)),
           "up.weight": ("up_w", (dim, rank)), "up.bias": ("up_b", (dim,))}
  else:
    per = {}
    for name, torch_name in LORA_TARGETS.items():
      per[f"{torch_name}.lora_A.weight"] = (f"{name}_a", (rank, dim))
      per[f"{torch_name}.lora_B.weight"] = (f"{name}_b", (dim, rank))
  return {f"blocks.{i}.{k}": (p, i, s) for i in range(num_layers) for k, (p, s) in per.items()}


def eraser_config_dict(model: WanTransformer) -> dict:
  """The `eraser_config.json` of `model`'s erasers."""
  _, cfg = _erasers(model)
  return dict(format=FORMAT, format_version=FORMAT_VERSION, kind=cfg.kind, placement=cfg.placement,
              rank=cfg.rank, alpha=cfg.alpha, num_layers=model.config.num_layers, dim=model.config.dim,
              dtype="float32")


def _eraser_specs(model: WanTransformer) -> list[TensorSpec]:
  erasers, cfg = _erasers(model)
  stacked = {}

  def produce(param, layer):
    def f():
      if param not in stacked:
        stacked[param] = _host(getattr(erasers, param))
      return stacked[param][layer].T
    return f
  return [TensorSpec(k, s, F32, produce(p, i))
          for k, (p, i, s) in _layout(cfg.kind, model.config.num_layers, model.config.dim, cfg.rank).items()]


def save_erasers(model: WanTransformer, out: str, overwrite: bool = False) -> str:
  """Write `model`'s erasers as an eraser directory at `out` (atomic); returns `out`."""
  config = eraser_config_dict(model)
  specs = _eraser_specs(model)
  with atomic_directory(out, overwrite) as tmp:
    write_safetensors(os.path.join(tmp, WEIGHTS_NAME), specs, {"format": "pt"})
    with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
      json.dump(config, f, indent=2)
  return out


def export_adapter(model: WanTransformer, out: str, overwrite: bool = False) -> str:
  """The erasers as an eraser directory for `convert.torch_erasers` (adapter or LoRA kind)."""
  return save_erasers(model, out, overwrite)


def load_erasers_into(model: WanTransformer, path: str) -> WanTransformer:
  """Attach the erasers of eraser directory `path` to `model` (replacing any), bit-exact; returns it."""
  cfg = read_config(path)
  mc = model.config
  if (cfg["num_layers"], cfg["dim"]) != (mc.num_layers, mc.dim):
    raise ValueError(f"erasers in {path} are for a transformer with num_layers={cfg['num_layers']}, "
                     f"dim={cfg['dim']}; this one has num_layers={mc.num_layers}, dim={mc.dim}")
  file = os.path.join(path, WEIGHTS_NAME)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}")
  layout = _layout(cfg["kind"], cfg["num_layers"], cfg["dim"], cfg["rank"])
  stacked = {}
  try:
    with SafetensorsFile(file) as st:
      missing, extra = sorted(set(layout) - set(st.keys())), sorted(set(st.keys()) - set(layout))
      if missing or extra:
        raise ValueError(f"{file}: tensors do not match {CONFIG_NAME}: missing {missing[:6]}, unexpected {extra[:6]}")
      for k, (param, layer, shape) in layout.items():
        info = st.tensors[k]
        if info.shape != shape:
          raise ValueError(f"{file}: tensor {k!r} has shape {info.shape}, {CONFIG_NAME} implies {shape}")
        if info.dtype.kind != "f" and info.dtype.name != "bfloat16":
          raise ValueError(f"{file}: tensor {k!r} has dtype {info.dtype}, expected floating point")
        a = np.array(st.read(k), dtype=F32).T
        if not np.isfinite(a).all():
          raise ValueError(f"{file}: tensor {k!r} has NaN or Inf values")
        stacked.setdefault(param, [None] * cfg["num_layers"])[layer] = a
  except SafetensorsError as e:
    raise ValueError(str(e)) from None
  attach_erasers(model, EraserConfig(cfg["kind"], cfg["placement"], cfg["rank"], cfg.get("alpha")))
  for param, layers in stacked.items():
    getattr(model.erasers, param)[...] = jnp.asarray(np.stack(layers))
  return model


def _atomic_file(out: str, overwrite: bool, write):
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} already exists; choose another output path or allow overwriting")
  if os.path.isdir(out):
    raise IsADirectoryError(f"{out} is a directory; cannot replace it with a file")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, out)
  except BaseException:
    os.unlink(tmp)
    raise


def lora_specs(model: WanTransformer) -> list[TensorSpec]:
  """The diffusers LoRA tensors of `model`'s LoRA erasers (scale folded into lora_B)."""
  erasers, cfg = _erasers(model)
  if cfg.kind != "lora":
    raise ValueError(f"the model's erasers are {cfg.kind!r}, not LoRA: they have no LoRA form; export them "
                     "with --as adapter (convert/torch_erasers.py attaches them in PyTorch)")
  n, d, r, scale = model.config.num_layers, model.config.dim, cfg.rank, np.float32(cfg.lora_scale)
  host = {}

  def produce(param, layer, b):
    def f():
      if param not in host:
        host[param] = _host(getattr(erasers, param))
      a = host[param][layer].T
      return a * scale if b and scale != 1 else a
    return f
  specs = []
  for i in range(n):
    for name, module in LORA_MODULES.items():
      key = f"transformer.blocks.{i}.attn2.{module}"
      specs.append(TensorSpec(f"{key}.lora_A.weight", (r, d), F32, produce(f"{name}_a", i, False)))
      specs.append(TensorSpec(f"{key}.lora_B.weight", (d, r), F32, produce(f"{name}_b", i, True)))
  return specs


def export_lora(model: WanTransformer, out: str, overwrite: bool = False) -> str:
  """LoRA erasers as a diffusers LoRA: `out` ending in `.safetensors` is the file itself, otherwise a
  directory holding `pytorch_lora_weights.safetensors`; either loads with `pipe.load_lora_weights(out)`."""
  specs = lora_specs(model)
  metadata = {"format": "pt", "t2vu_eraser_config": json.dumps(eraser_config_dict(model))}
  if str(out).endswith(".safetensors"):
    _atomic_file(out, overwrite, lambda tmp: write_safetensors(tmp, specs, metadata))
  else:
    with atomic_directory(out, overwrite) as tmp:
      write_safetensors(os.path.join(tmp, LORA_WEIGHT_NAME), specs, metadata)
  return out


def export_merged(model: WanTransformer, out: str, dtype=None, overwrite: bool = False,
                  max_shard_size="5GB", progress: bool = True) -> str:
  """LoRA erasers merged into attn2's weights, as a diffusers transformer directory (atomic);
  `model` keeps its erasers. `dtype` None writes the model's dtype."""
  from convert.wan_writer import save_diffusers
  _, cfg = _erasers(model)
  if cfg.kind != "lora":
    raise ValueError(f"{cfg.kind!r} erasers cannot be merged: the stock WanTransformer3DModel has no place for "
                     "their GELU MLP; export them with --as adapter and attach them with "
                     "convert/torch_erasers.py, or train LoRA erasers for a mergeable model")
  save_diffusers(merge_lora(nnx.clone(model)), out, max_shard_size, dtype, overwrite, progress)
  return out


EXPORTS = {"adapter": export_adapter, "lora": export_lora}


def _abstract_transformer(path: str) -> WanTransformer:
  """A weightless model of the transformer at `path` (its architecture only)."""
  from convert.wan_loader import FLAX_MARKER, abstract_transformer, inspect_checkpoint
  from t2vu_jax.models.wan import WanConfig
  marker = os.path.join(path, FLAX_MARKER)
  if os.path.isfile(marker):
    with open(marker) as f:
      config = WanConfig.from_dict(json.load(f)["config"])
  else:
    config = inspect_checkpoint(path).config
  return abstract_transformer(config, jnp.float32)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m convert.export_erasers", description=__doc__.split("\n")[0])
  p.add_argument("--transformer", required=True, help="the base transformer (any format load_transformer reads)")
  p.add_argument("--erasers", required=True, help=f"eraser directory ({CONFIG_NAME} + {WEIGHTS_NAME})")
  p.add_argument("--out", required=True, help="output directory (or a .safetensors file for --as lora)")
  p.add_argument("--as", dest="kind", required=True, choices=("adapter", "lora", "merged"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                 help="weight dtype of a merged transformer")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  if os.path.exists(args.out) and not args.overwrite:
    print(f"error: {args.out} already exists; choose another --out or pass --overwrite", file=sys.stderr)
    return 1
  try:
    if args.kind == "merged":
      import t2vu_jax
      model = t2vu_jax.load_transformer(args.transformer, args.dtype)
      export_merged(load_erasers_into(model, args.erasers), args.out, overwrite=args.overwrite)
    else:
      model = load_erasers_into(_abstract_transformer(args.transformer), args.erasers)
      EXPORTS[args.kind](model, args.out, args.overwrite)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
