"""Read PyTorch Wan2.1 transformer checkpoints into NNX parameters, streaming and strict.

Formats (auto-detected): a diffusers `transformer/` directory (single file or sharded with an
index), a diffusers pipeline directory (its `transformer/` is used), the original Wan-AI layout, a
ComfyUI single file (`model.diffusion_model.` prefix), and, only when explicitly allowed, PyTorch
pickles (loaded with `weights_only=True`). Tensors are read one at a time from the mapped files and
written straight into preallocated, 64-byte aligned buffers of the target dtype; on CPU those
buffers become the model's arrays without a copy.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Callable

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from convert import wan_keys
from convert.safetensors_io import SafetensorsError
from convert.streaming import CheckpointError, SafetensorsSource, read_into_module
from t2vu_jax.models.wan import WanConfig, WanTransformer

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
FLAX_MARKER = "t2vu_model.json"  # written beside our Orbax parameters
_I2V_MARKERS = ("img_emb", "k_img", "v_img", "add_k_proj", "add_v_proj", "image_embedder", "norm_added_k")
_UNSUPPORTED_MARKERS = {"vace_": "VACE", "motion_encoder": "Wan-Animate", "face_adapter": "Wan-Animate"}


# ----------------------------------------------------------------------------------------------
# Tensor sources


class PickleSource:
  """A PyTorch pickle state dict, read with `torch.load(weights_only=True)`."""

  def __init__(self, files: list[str], prefix: str = ""):
    try:
      import torch
    except ImportError:
      raise CheckpointError("reading PyTorch pickle checkpoints needs torch installed "
                            "(pip install -r requirements-dev.txt)") from None
    self.tensors = {}
    for f in files:
      sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
      sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
      for k, v in sd.items():
        if k.startswith(prefix):
          self.tensors[k[len(prefix):]] = v

  def keys(self):
    return list(self.tensors)

  def shape(self, key):
    return tuple(self.tensors[key].shape)

  def read(self, key):
    import torch
    t = self.tensors[key].detach().contiguous()
    if t.dtype == torch.bfloat16:
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  def release(self, key):
    pass

  def order(self, keys):
    return list(keys)

  def close(self):
    self.tensors.clear()


# ----------------------------------------------------------------------------------------------
# Format detection


@dataclasses.dataclass
class TorchCheckpoint:
  """What `inspect_checkpoint` found: files, key layout, prefix and the architecture."""
  files: list[str]
  kind: str          # "safetensors" or "pickle"
  layout: str        # "diffusers" or "wan"
  prefix: str        # "" or the ComfyUI prefix
  config: WanConfig
  config_source: str

  @property
  def format(self) -> str:
    return "comfyui" if self.prefix else self.layout

  def open(self):
    source_cls = SafetensorsSource if self.kind == "safetensors" else PickleSource
    return source_cls(self.files, self.prefix)


def _weight_files(path: str, allow_pickle: bool) -> tuple[list[str], str, str | None]:
  """(files, kind, directory holding them) for a file or directory path."""
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint path does not exist: {path}")
  if os.path.isfile(path):
    if path.endswith(".safetensors"):
      return [path], "safetensors", None
    if path.endswith(PICKLE_SUFFIXES):
      return _pickle_files([path], allow_pickle), "pickle", None
    raise CheckpointError(f"unknown checkpoint format: {path} (expected .safetensors, a diffusers "
                          f"directory, or with allow_pickle one of {PICKLE_SUFFIXES})")
  if os.path.isdir(os.path.join(path, "transformer")):
    return _weight_files(os.path.join(path, "transformer"), allow_pickle)
  indexes = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
  if indexes:
    with open(indexes[0]) as f:
      weight_map = json.load(f).get("weight_map", {})
    files = sorted({os.path.join(path, v) for v in weight_map.values()})
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise CheckpointError(f"{indexes[0]} lists shard files that do not exist: {missing}")
    return files, "safetensors", path
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if files:
    return files, "safetensors", path
  pickles = sorted(f for s in PICKLE_SUFFIXES for f in glob.glob(os.path.join(path, "*" + s)))
  if pickles:
    return _pickle_files(pickles, allow_pickle), "pickle", path
  raise CheckpointError(f"no transformer weights found in {path} (expected *.safetensors, an index "
                        "json, or a pipeline directory with transformer/)")


def _pickle_files(files, allow_pickle):
  if not allow_pickle:
    raise CheckpointError(f"refusing to load PyTorch pickle file(s) {files}: pickles can run arbitrary "
                          "code. Convert them to safetensors, or pass allow_pickle=True (--allow-pickle) "
                          "to load them with torch.load(weights_only=True)")
  return files


def _config_from_json(d: dict, where: str) -> WanConfig | None:
  if "num_attention_heads" in d or d.get("_class_name") == "WanTransformer3DModel":
    return WanConfig.from_dict(d)
  if "dim" in d and "num_heads" in d:  # original Wan-AI config
    if d.get("model_type", "t2v") != "t2v":
      raise CheckpointError(f"{where}: model_type={d['model_type']!r}; only text-to-video (t2v) Wan "
                            "checkpoints are supported (I2V/FLF2V/VACE are not)")
    heads = d["num_heads"]
    return WanConfig(num_attention_heads=heads, attention_head_dim=d["dim"] // heads,
                     in_channels=d.get("in_dim", 16), out_channels=d.get("out_dim", 16),
                     text_dim=d.get("text_dim", 4096), freq_dim=d.get("freq_dim", 256),
                     ffn_dim=d["ffn_dim"], num_layers=d["num_layers"],
                     cross_attn_norm=d.get("cross_attn_norm", True), eps=d.get("eps", 1e-6),
                     patch_size=tuple(d.get("patch_size", (1, 2, 2))))
  return None


def _infer_config(shapes: dict[str, tuple], layout: str) -> WanConfig:
  """Architecture from tensor shapes (Wan2.1 heads are always 128 wide)."""
  entry = {e.flax: e for e in wan_keys.key_table(WanConfig())}
  name = lambda e: e.param(layout).torch_keys(num_layers=1)[0]
  pe = shapes[name(entry["patch_embedding.kernel"])]
  dim, in_channels, patch = pe[0], pe[1], tuple(pe[2:])
  if dim % 128:
    raise CheckpointError(f"cannot infer the head count of a model with dim {dim} (not a multiple of "
                          "128); put a config.json beside the weights")
  layers = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
  norm2 = name(entry["blocks.norm2.scale"])
  return WanConfig(
      patch_size=patch, num_attention_heads=dim // 128, attention_head_dim=128, in_channels=in_channels,
      out_channels=shapes[name(entry["proj_out.kernel"])][0] // int(np.prod(patch)),
      text_dim=shapes[name(entry["condition_embedder.text_embedder.linear_1.kernel"])][1],
      freq_dim=shapes[name(entry["condition_embedder.time_embedder.linear_1.kernel"])][1],
      ffn_dim=shapes[name(entry["blocks.ffn.net_0_proj.kernel"])][0], num_layers=len(layers),
      cross_attn_norm=norm2 in shapes)


def inspect_checkpoint(path: str, allow_pickle: bool = False) -> TorchCheckpoint:
  """Find the weight files at `path`, detect their layout and determine the architecture."""
  files, kind, directory = _weight_files(str(path), allow_pickle)
  if kind == "safetensors":
    try:
      source = SafetensorsSource(files)
    except SafetensorsError as e:
      raise CheckpointError(str(e)) from None
    shapes = {k: source.shape(k) for k in source.keys()}
    source.close()
  else:
    source = PickleSource(files)
    shapes = {k: source.shape(k) for k in source.keys()}
  prefix = wan_keys.COMFYUI_PREFIX if any(k.startswith(wan_keys.COMFYUI_PREFIX) for k in shapes) else ""
  shapes = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}

  if any(m in k for k in shapes for m in _I2V_MARKERS):
    raise CheckpointError(f"{path} is an image-to-video (I2V) Wan checkpoint (it has image-conditioning "
                          "tensors); only text-to-video (T2V) checkpoints are supported for now")
  for marker, what in _UNSUPPORTED_MARKERS.items():
    if any(k.startswith(marker) or f".{marker}" in k for k in shapes):
      raise CheckpointError(f"{path} is a {what} checkpoint; only Wan2.1 T2V checkpoints are supported")
  if "blocks.0.self_attn.q.weight" in shapes or "head.head.weight" in shapes:
    layout = "wan"
  elif "blocks.0.attn1.to_q.weight" in shapes or "proj_out.weight" in shapes:
    layout = "diffusers"
  else:
    raise CheckpointError(f"{path}: unknown checkpoint format, not a Wan transformer in diffusers, "
                          f"original or ComfyUI layout (first keys: {sorted(shapes)[:5]})")

  config, config_source = None, "inferred from tensor shapes"
  config_path = os.path.join(directory, "config.json") if directory else None
  if config_path and os.path.exists(config_path):
    with open(config_path) as f:
      try:
        config = _config_from_json(json.load(f), config_path)
      except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    config_source = config_path
  if config is None:
    try:
      config = _infer_config(shapes, layout)
    except KeyError as e:
      raise CheckpointError(f"{path}: cannot infer the architecture, tensor {e} is missing") from None
  if config.in_channels != 16 and config.in_channels in (36, 48):
    raise CheckpointError(f"{path}: in_channels={config.in_channels} is an image-to-video (I2V) model; "
                          "only text-to-video (T2V) checkpoints are supported")
  return TorchCheckpoint(files, kind, layout, prefix, config, config_source)


# ----------------------------------------------------------------------------------------------
# Streaming conversion


def abstract_transformer(config: WanConfig, dtype, **model_kwargs) -> WanTransformer:
  return nnx.eval_shape(lambda: WanTransformer(config, dtype=dtype, rngs=nnx.Rngs(0), **model_kwargs))


def read_transformer(ckpt: TorchCheckpoint, dtype=jnp.float32, place: Callable | None = None,
                     progress: bool = True, **model_kwargs) -> WanTransformer:
  """Stream `ckpt` into a `WanTransformer` of `dtype` (norms, modulation, embedders stay fp32).

  `place(path, host_array) -> jax.Array` puts each finished parameter on its device(s); the default
  is `jax.device_put` (zero-copy on CPU).
  """
  cfg = ckpt.config
  model = abstract_transformer(cfg, dtype, **model_kwargs)
  table = [entry.param(ckpt.layout) for entry in wan_keys.key_table(cfg)]
  files = ckpt.files[0] if len(ckpt.files) == 1 else os.path.dirname(ckpt.files[0])
  where = (f"{files} ({ckpt.format} layout, config {ckpt.config_source}: {_describe(cfg)}) does not "
           "match the Wan transformer")
  return read_into_module(model, table, ckpt.open(), cfg.num_layers, where, place, progress)


def _describe(cfg: WanConfig) -> str:
  return (f"dim {cfg.dim} = {cfg.num_attention_heads}x{cfg.attention_head_dim}, {cfg.num_layers} layers, "
          f"ffn {cfg.ffn_dim}, in/out {cfg.in_channels}/{cfg.out_channels}, text_dim {cfg.text_dim}")
