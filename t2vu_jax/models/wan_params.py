"""Wan2.1 transformer weights: the key table (our NNX path <-> diffusers key <-> original Wan-AI key) and
the original-Wan config table, format detection, a strict streaming reader, writers back to the
diffusers and original layouts, and our own Orbax format.

Formats read (auto-detected): a diffusers `transformer/` directory (single file or sharded with an
index), a diffusers pipeline directory (its `transformer/` is used), the original Wan-AI layout, a
ComfyUI single file (`model.diffusion_model.` prefix), our Orbax directory (`t2vu_model.json` +
`params/`), and, only when explicitly allowed, PyTorch pickles (loaded with `weights_only=True`).
Tensors are read one at a time from the mapped files and written straight into preallocated, 64-byte
aligned buffers of the target dtype; on CPU those buffers become the model's arrays without a copy.
Block entries of the key table hold `{i}` for the layer index; their NNX parameter carries a leading
layer axis.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax.io.atomic import atomic_directory
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.io.safetensors_io import SafetensorsError, TensorSpec, write_safetensors
from t2vu_jax.io.streaming import (CONV3D, IDENTITY, LINEAR, Param, PickleSource, SafetensorsSource, Transform,
                                   module_tensors, read_into_module, safetensors_files)
from t2vu_jax.models.wan import WanConfig, WanTransformer
from t2vu_jax.sharding import param_shardings, placer

COMFYUI_PREFIX = "model.diffusion_model."
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ORIGINAL_EXPERTS = ("high_noise_model", "low_noise_model")  # Wan-AI's Wan2.2 A14B folders
FLAX_MARKER = "t2vu_model.json"  # written beside our Orbax parameters
WEIGHTS_NAME = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.35.0"
_I2V_MARKERS = ("img_emb", "k_img", "v_img", "add_k_proj", "add_v_proj", "image_embedder", "norm_added_k")
_UNSUPPORTED_MARKERS = {"vace_": "VACE", "motion_encoder": "Wan-Animate", "face_adapter": "Wan-Animate"}


# ----------------------------------------------------------------------------------------------
# Key table


class Entry(NamedTuple):
  flax: str       # dotted NNX path, e.g. "blocks.attn1.to_q.kernel"
  diffusers: str  # e.g. "blocks.{i}.attn1.to_q.weight"
  wan: str        # e.g. "blocks.{i}.self_attn.q.weight"
  transform: Transform

  @property
  def path(self) -> tuple[str, ...]:
    """The NNX state path, as `nnx.to_flat_state` names it."""
    return tuple(self.flax.split("."))

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.diffusers

  def param(self, layout: str) -> Param:
    """This entry as a `Param` of checkpoint layout "diffusers" or "wan"."""
    return Param(self.path, self.diffusers if layout == "diffusers" else self.wan, self.transform)


def _linear(flax, diffusers, wan):
  return [Entry(f"{flax}.kernel", f"{diffusers}.weight", f"{wan}.weight", LINEAR),
          Entry(f"{flax}.bias", f"{diffusers}.bias", f"{wan}.bias", IDENTITY)]


def _attention(flax, diffusers, wan):
  entries = []
  for ours, theirs in (("to_q", "q"), ("to_k", "k"), ("to_v", "v")):
    entries += _linear(f"{flax}.{ours}", f"{diffusers}.{ours}", f"{wan}.{theirs}")
  entries += _linear(f"{flax}.to_out", f"{diffusers}.to_out.0", f"{wan}.o")
  for norm in ("norm_q", "norm_k"):
    entries.append(Entry(f"{flax}.{norm}.scale", f"{diffusers}.{norm}.weight", f"{wan}.{norm}.weight", IDENTITY))
  return entries


def key_table(cfg: WanConfig) -> list[Entry]:
  ce = "condition_embedder"
  table = [
      Entry("patch_embedding.kernel", "patch_embedding.weight", "patch_embedding.weight", CONV3D),
      Entry("patch_embedding.bias", "patch_embedding.bias", "patch_embedding.bias", IDENTITY),
      *_linear(f"{ce}.time_embedder.linear_1", f"{ce}.time_embedder.linear_1", "time_embedding.0"),
      *_linear(f"{ce}.time_embedder.linear_2", f"{ce}.time_embedder.linear_2", "time_embedding.2"),
      *_linear(f"{ce}.time_proj", f"{ce}.time_proj", "time_projection.1"),
      *_linear(f"{ce}.text_embedder.linear_1", f"{ce}.text_embedder.linear_1", "text_embedding.0"),
      *_linear(f"{ce}.text_embedder.linear_2", f"{ce}.text_embedder.linear_2", "text_embedding.2"),
      *_attention("blocks.attn1", "blocks.{i}.attn1", "blocks.{i}.self_attn"),
      *_attention("blocks.attn2", "blocks.{i}.attn2", "blocks.{i}.cross_attn"),
      *_linear("blocks.ffn.net_0_proj", "blocks.{i}.ffn.net.0.proj", "blocks.{i}.ffn.0"),
      *_linear("blocks.ffn.net_2", "blocks.{i}.ffn.net.2", "blocks.{i}.ffn.2"),
      Entry("blocks.scale_shift_table", "blocks.{i}.scale_shift_table", "blocks.{i}.modulation", IDENTITY),
      *_linear("proj_out", "proj_out", "head.head"),
      Entry("scale_shift_table", "scale_shift_table", "head.modulation", IDENTITY),
  ]
  if cfg.cross_attn_norm:  # the original layout calls the cross-attention norm `norm3`
    table += [Entry("blocks.norm2.scale", "blocks.{i}.norm2.weight", "blocks.{i}.norm3.weight", IDENTITY),
              Entry("blocks.norm2.bias", "blocks.{i}.norm2.bias", "blocks.{i}.norm3.bias", IDENTITY)]
  return table


def num_tensors(cfg: WanConfig) -> int:
  """Tensor count of a checkpoint of this architecture (825 for 1.3B, 1095 for 14B)."""
  return sum(cfg.num_layers if e.per_layer else 1 for e in key_table(cfg))


# ----------------------------------------------------------------------------------------------
# Original Wan-AI config.json <-> WanConfig


class ConfigField(NamedTuple):
  wan: str          # original config.json field
  ours: str         # WanConfig field
  default: Any      # when the original file omits it (None: required)


ORIGINAL_CONFIG = (
    ConfigField("num_heads", "num_attention_heads", None), ConfigField("in_dim", "in_channels", 16),
    ConfigField("out_dim", "out_channels", 16), ConfigField("text_dim", "text_dim", 4096),
    ConfigField("freq_dim", "freq_dim", 256), ConfigField("ffn_dim", "ffn_dim", None),
    ConfigField("num_layers", "num_layers", None), ConfigField("cross_attn_norm", "cross_attn_norm", True),
    ConfigField("eps", "eps", 1e-6), ConfigField("patch_size", "patch_size", (1, 2, 2)),
)
# Fields of an original config.json that every Wan2.1 T2V model has; `dim` is heads x head_dim.
ORIGINAL_FIXED = {"_class_name": "WanModel", "_diffusers_version": DIFFUSERS_VERSION, "model_type": "t2v",
                  "text_len": 512, "window_size": [-1, -1], "qk_norm": True}


def config_from_original(d: dict) -> WanConfig:
  """The architecture of an original Wan-AI `config.json` (KeyError for a missing required field)."""
  kwargs = {f.ours: d[f.wan] if f.default is None else d.get(f.wan, f.default) for f in ORIGINAL_CONFIG}
  kwargs["patch_size"] = tuple(kwargs["patch_size"])
  return WanConfig(attention_head_dim=d["dim"] // kwargs["num_attention_heads"], **kwargs)


def config_to_original(cfg: WanConfig) -> dict:
  """An original Wan-AI `config.json` of this architecture."""
  fields = {f.wan: getattr(cfg, f.ours) for f in ORIGINAL_CONFIG}
  fields["patch_size"] = list(cfg.patch_size)
  return {**ORIGINAL_FIXED, **fields, "dim": cfg.dim}


# ----------------------------------------------------------------------------------------------
# Format detection


@dataclasses.dataclass
class TorchCheckpoint:
  """What `inspect_checkpoint` found: files, key layout, prefix, quantization and the architecture."""
  files: list[str]
  kind: str          # "safetensors" or "pickle"
  layout: str        # "diffusers" or "wan"
  prefix: str        # "" or the ComfyUI prefix
  config: WanConfig
  config_source: str
  quantization: str | None = None  # None, or "fp8_scaled" (ComfyUI: fp8 weights times `scale_weight`)

  @property
  def format(self) -> str:
    name = "comfyui" if self.prefix else self.layout
    return f"{name} {self.quantization}" if self.quantization else name

  def open(self):
    source_cls = SafetensorsSource if self.kind == "safetensors" else PickleSource
    source = source_cls(self.files, self.prefix)
    return ScaledFp8Source(source) if self.quantization == "fp8_scaled" else source


FP8_SCALED_MARKER = "scaled_fp8"  # ComfyUI's marker tensor of an fp8_scaled checkpoint
_FP8_SCALES = (".scale_weight", ".scale_input")
_COMFY_QUANT = (".comfy_quant", ".weight_scale", ".input_scale")  # ComfyUI's newer per-layer quantization


class ScaledFp8Source:
  """A ComfyUI fp8_scaled checkpoint read as plain weights: `w.weight` (fp8) times its per-tensor
  `w.scale_weight`, in float32; the marker and the activation scales (`scale_input`, which only an
  fp8 matmul uses) are not part of the model."""

  def __init__(self, source):
    self.source = source
    keys = set(source.keys())
    self.scales = {k[:-len(".scale_weight")] + ".weight": k for k in keys if k.endswith(".scale_weight")}
    self._keys = [k for k in source.keys() if k != FP8_SCALED_MARKER and not k.endswith(_FP8_SCALES)]

  def keys(self):
    return list(self._keys)

  def shape(self, key):
    return self.source.shape(key)

  def read(self, key):
    value = self.source.read(key)
    if key not in self.scales:
      return value
    scale = np.asarray(self.source.read(self.scales[key]), np.float32)
    if scale.size != 1:
      raise CheckpointError(f"fp8_scaled tensor {self.scales[key]!r} has shape {scale.shape}; only per-tensor "
                            "scales (one value) are supported")
    return value.astype(np.float32) * scale.reshape(())

  def release(self, key):
    self.source.release(key)
    if key in self.scales:
      self.source.release(self.scales[key])

  def order(self, keys):
    return self.source.order(keys)

  def close(self):
    self.source.close()


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
  files = safetensors_files(path, "transformer", required=False)
  if files:
    return files, "safetensors", path
  pickles = sorted(f for s in PICKLE_SUFFIXES for f in glob.glob(os.path.join(path, "*" + s)))
  if pickles:
    return _pickle_files(pickles, allow_pickle), "pickle", path
  if all(os.path.isdir(os.path.join(path, e)) for e in ORIGINAL_EXPERTS):
    raise CheckpointError(f"{path} is an original Wan2.2 A14B directory of two experts; give one of them: "
                          f"{os.path.join(path, ORIGINAL_EXPERTS[0])} (high noise, diffusers' transformer) or "
                          f"{os.path.join(path, ORIGINAL_EXPERTS[1])} (low noise, transformer_2)")
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
    if d.get("model_type", "t2v") not in ("t2v", "ti2v"):  # ti2v: Wan2.2 TI2V-5B, whose T2V path we run
      raise CheckpointError(f"{where}: model_type={d['model_type']!r}; only text-to-video (t2v, ti2v) Wan "
                            "checkpoints are supported (I2V/FLF2V/VACE are not)")
    try:
      return config_from_original(d)
    except KeyError as e:
      raise CheckpointError(f"{where}: original Wan config has no field {e}") from None
  return None


def _infer_config(shapes: dict[str, tuple], layout: str) -> WanConfig:
  """Architecture from tensor shapes (Wan2.1 heads are always 128 wide)."""
  entry = {e.flax: e for e in key_table(WanConfig())}
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
  prefix = COMFYUI_PREFIX if any(k.startswith(COMFYUI_PREFIX) for k in shapes) else ""
  quantization = "fp8_scaled" if {FP8_SCALED_MARKER, prefix + FP8_SCALED_MARKER} & set(shapes) else None
  shapes = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
  if quantized := sorted(k for k in shapes if k.endswith(_COMFY_QUANT)):
    raise CheckpointError(f"{path} is a ComfyUI quantized checkpoint in the per-layer `comfy_quant` / "
                          f"`weight_scale` format ({len(quantized)} tensors such as {quantized[0]!r}), which is "
                          "not supported; use a bf16, fp16 or fp8_scaled (`scale_weight`) file")
  if quantization is None and (scaled := sorted(k for k in shapes if k.endswith(".scale_weight"))):
    raise CheckpointError(f"{path} has fp8 scales ({len(scaled)} `scale_weight` tensors such as {scaled[0]!r}) "
                          f"but no `{FP8_SCALED_MARKER}` marker: not a ComfyUI fp8_scaled file this loader knows")
  shapes = {k: s for k, s in shapes.items() if k != FP8_SCALED_MARKER and not k.endswith(_FP8_SCALES)}

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
  if config.in_channels == 36:  # Wan2.1/2.2 I2V: 16 noise + 20 image-condition channels (TI2V-5B has 48)
    raise CheckpointError(f"{path}: in_channels={config.in_channels} is an image-to-video (I2V) model; "
                          "only text-to-video (T2V) checkpoints are supported")
  return TorchCheckpoint(files, kind, layout, prefix, config, config_source, quantization)


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
  table = [entry.param(ckpt.layout) for entry in key_table(cfg)]
  files = ckpt.files[0] if len(ckpt.files) == 1 else os.path.dirname(ckpt.files[0])
  where = (f"{files} ({ckpt.format} layout, config {ckpt.config_source}: {_describe(cfg)}) does not "
           "match the Wan transformer")
  return read_into_module(model, table, ckpt.open(), cfg.num_layers, where, place, progress)


def _describe(cfg: WanConfig) -> str:
  return (f"dim {cfg.dim} = {cfg.num_attention_heads}x{cfg.attention_head_dim}, {cfg.num_layers} layers, "
          f"ffn {cfg.ffn_dim}, in/out {cfg.in_channels}/{cfg.out_channels}, text_dim {cfg.text_dim}")


# ----------------------------------------------------------------------------------------------
# Writers: diffusers and original layouts


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
  table = [entry.param(layout) for entry in key_table(model.config)]
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
  config = {"_class_name": "WanTransformer3DModel", "_diffusers_version": DIFFUSERS_VERSION,
            **model.config.to_dict()}
  return _save(model, "diffusers", config, out, max_shard_size, dtype, overwrite, progress)


def save_wan(model: WanTransformer, out: str, max_shard_size="10GB", dtype=None,
             overwrite: bool = False, progress: bool = True) -> tuple[int, int]:
  """The original Wan-AI layout (`config.json` + safetensors); returns (tensor count, bytes)."""
  return _save(model, "wan", config_to_original(model.config), out, max_shard_size, dtype, overwrite, progress)


def _save(model, layout, config, out, max_shard_size, dtype, overwrite, progress) -> tuple[int, int]:
  with atomic_directory(out, overwrite) as tmp:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    return _write_shards(transformer_tensors(model, layout, dtype), tmp, max_shard_size, progress)


# ----------------------------------------------------------------------------------------------
# Our Orbax format: parameters plus the architecture as JSON


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


def _flax_meta(path: str) -> dict:
  with open(os.path.join(path, FLAX_MARKER)) as f:
    return json.load(f)


def read_flax_transformer(path: str, dtype=None, mesh=None, **model_kwargs) -> WanTransformer:
  """Restore a model written by `save_flax_transformer`, cast to `dtype` (default: as saved); with a
  `mesh`, every array is restored straight into its sharding (`t2vu_jax.sharding`)."""
  meta = _flax_meta(path)
  model = abstract_transformer(WanConfig.from_dict(meta["config"]), dtype or meta["dtype"], **model_kwargs)
  graphdef, abstract = nnx.split(model)
  target = abstract.to_pure_dict()
  if mesh is not None:
    shardings = param_shardings(abstract, mesh).to_pure_dict()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
  restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"), target)
  restored = jax.tree.map(lambda r, a: r.astype(a.dtype), restored, target)
  nnx.replace_by_pure_dict(abstract, restored)
  return nnx.merge(graphdef, abstract)


# ----------------------------------------------------------------------------------------------
# One entry point for every format


def is_flax_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(str(path), FLAX_MARKER))


def transformer_config(path: str, allow_pickle: bool = False) -> WanConfig:
  """The architecture of the transformer at `path` (any format `load_transformer` reads), without its weights."""
  if is_flax_dir(path):
    return WanConfig.from_dict(_flax_meta(path)["config"])
  return inspect_checkpoint(path, allow_pickle=allow_pickle).config


def load_transformer(path: str, dtype="float32", allow_pickle: bool = False, progress: bool = True,
                     mesh=None, **model_kwargs) -> WanTransformer:
  """Load a Wan2.1 T2V transformer as an NNX module.

  `path` may be a diffusers `transformer/` or pipeline directory, original Wan-AI weights, a ComfyUI
  `.safetensors` file, or a directory written by `save_flax_transformer` (`convert.torch_to_flax`).
  `dtype` is the compute and weight dtype; norms, modulation tables and the condition embedder always
  stay fp32. `dtype=None` keeps the dtype a Flax directory was saved in (float32 for PyTorch
  checkpoints). `model_kwargs` go to `WanTransformer` (scan_layers, remat, attention). With a `mesh`
  (`t2vu_jax.sharding.make_mesh`) each weight goes straight into its sharding as it is read; no
  device ever holds the whole model.
  """
  path = str(path)
  if is_flax_dir(path):
    return read_flax_transformer(path, dtype and jnp.dtype(dtype), mesh=mesh, **model_kwargs)
  ckpt = inspect_checkpoint(path, allow_pickle=allow_pickle)
  place = placer(mesh) if mesh is not None else None
  return read_transformer(ckpt, jnp.dtype(dtype or "float32"), place=place, progress=progress, **model_kwargs)
