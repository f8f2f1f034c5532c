"""Wan2.1 and Wan2.2 video VAEs in Flax NNX: what diffusers' `AutoencoderKLWan` computes.

Layout: `decode` and `encode` take and return diffusers' (B, C, F, H, W); inside, tensors are
channels-last (B, F, H, W, C).

Every 3D convolution is causal in time: a kernel of 3 frames sees the current frame and the two
before it (zeros before the first frame). Video is processed chunk by chunk as diffusers does — one
latent frame at a time when decoding, 1 then 4 frames at a time when encoding — with each causal
conv carrying its last input frames to the next chunk, so memory does not grow with video length.
The first chunk is special: temporal upsampling skips it (1 latent frame -> 1 frame, each later one
-> 4), and temporal downsampling passes it through. Attribute names follow diffusers, so the weight
conversion (`t2vu_jax/models/vae_params.py`) follows from the module tree.

The Wan2.2 VAE (`is_residual`, TI2V-5B's: z_dim 48, 16x spatial compression) folds each 2x2 pixel patch
into channels first (`patch_size`), and its up/down blocks add a parameter-free shortcut around their
residual blocks and resampler: channels averaged into space-time (down) or duplicated out of it (up).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from t2vu_jax.attention import dot_product_attention

F32 = jnp.float32
ENCODER_CHUNK = 4  # frames per encoder chunk after the first (diffusers' `_encode`)

# diffusers' config fields that describe variants this model does not implement, with the value
# the Wan2.1 VAE has and what another value means.
UNSUPPORTED = {
    "attn_scales": ([], "encoder attention, which diffusers' chunked encoder cannot run"),
}

WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Architecture of a Wan VAE (field names and defaults follow diffusers' config.json: Wan2.1's).

  `scale_factor_*` are what diffusers' pipeline uses to size latents; the architecture's actual
  compression is `temporal_compression` / `spatial_compression`.
  """
  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  scale_factor_temporal: int | None = 4
  scale_factor_spatial: int | None = 8
  is_residual: bool = False     # Wan2.2: up/down blocks with shortcuts
  patch_size: int | None = None  # Wan2.2: 2x2 pixel patches folded into channels
  in_channels: int = 3          # RGB x patch_size²
  out_channels: int = 3

  def __post_init__(self):
    for name in ("dim_mult", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"config temperal_downsample has {len(self.temperal_downsample)} entries; it needs one "
                       f"per downsampling stage, len(dim_mult) - 1 = {len(self.dim_mult) - 1}")
    for name in ("latents_mean", "latents_std"):
      if len(getattr(self, name)) != self.z_dim:
        raise ValueError(f"config {name} has {len(getattr(self, name))} entries, expected z_dim = {self.z_dim}")
    if min(self.latents_std) <= 0:
      raise ValueError("config latents_std must be positive")
    if self.patch_size is not None and self.patch_size < 1:
      raise ValueError(f"config patch_size must be a positive integer or null, got {self.patch_size}")
    for name in ("in_channels", "out_channels"):
      if getattr(self, name) != 3 * self.patch ** 2:
        raise ValueError(f"config {name}={getattr(self, name)} does not fit RGB video in {self.patch}x{self.patch} "
                         f"patches: it must be {3 * self.patch ** 2}")

  @property
  def patch(self) -> int:
    return self.patch_size or 1

  @property
  def temporal_compression(self) -> int:
    return 2 ** sum(map(bool, self.temperal_downsample))

  @property
  def spatial_compression(self) -> int:
    return 2 ** (len(self.dim_mult) - 1) * self.patch

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WanVAEConfig":
    """From a diffusers `config.json` dict; refuses variants and fields this model does not implement."""
    for name, (value, meaning) in UNSUPPORTED.items():
      if name in d and d[name] != value:
        raise ValueError(f"config {name}={d[name]!r} is not supported: the Wan VAEs have {name}={value!r} "
                         f"({meaning})")
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(k for k in d if not k.startswith("_") and k not in names and k not in UNSUPPORTED):
      raise ValueError(f"config has field(s) this Wan VAE does not know: {', '.join(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    """The diffusers `config.json` fields of this architecture."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    d.update({name: list(value) if isinstance(value, list) else value for name, (value, _) in UNSUPPORTED.items()})
    return d


def denormalize_latents(latents, cfg: WanVAEConfig):
  """Latents as the transformer sees them -> as the VAE decodes them, as WanPipeline computes it.

  Per channel of (B, C, T, H, W): `latents / (1 / std) + mean`, with mean and std cast to the dtype
  of `latents` first (the pipeline casts latents to the VAE's dtype before this).
  """
  latents = jnp.asarray(latents)
  shape = (1, cfg.z_dim, 1, 1, 1)
  mean = jnp.asarray(cfg.latents_mean, F32).astype(latents.dtype).reshape(shape)
  inv_std = 1.0 / jnp.asarray(cfg.latents_std, F32).astype(latents.dtype).reshape(shape)
  return latents / inv_std + mean


# ----------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nnx.Module):
  """x / max(‖x‖₂, 1e-12) · √C · γ over the channels (diffusers' WanRMS_norm), computed in fp32."""

  def __init__(self, dim: int, dtype):
    self.scale = dim ** 0.5
    self.gamma = nnx.Param(jnp.ones((dim,), dtype))

  def __call__(self, x):
    y = x.astype(F32)
    norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=-1, keepdims=True))
    y = y / jnp.maximum(norm, 1e-12)
    return (y * self.scale * self.gamma[...].astype(F32)).astype(x.dtype)


class CausalConv3d(nnx.Module):
  """Conv3d over (B, F, H, W, C), causal in time: a temporal padding p becomes 2p past frames.

  `cache` holds the last 2p input frames of the previous chunks (None at the start of a video,
  meaning zeros); the call returns the output and the cache for the next chunk.
  """

  def __init__(self, din: int, dout: int, kernel: int | tuple[int, int, int],
               stride: tuple[int, int, int] = (1, 1, 1), padding: int | tuple[int, int, int] = 0, *,
               dtype, rngs: nnx.Rngs):
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    padding = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), kernel + (din, dout), dtype))
    self.bias = nnx.Param(jnp.zeros((dout,), dtype))
    self.stride = tuple(stride)
    self.past = 2 * padding[0]
    self.spatial_padding = ((padding[1], padding[1]), (padding[2], padding[2]))

  def __call__(self, x, cache=None):
    if self.past:
      if cache is None:
        cache = jnp.zeros((x.shape[0], self.past, *x.shape[2:]), x.dtype)
      x = jnp.concatenate([cache, x], axis=1)
      cache = x[:, -self.past:]
    y = jax.lax.conv_general_dilated(x, self.kernel[...], self.stride, ((0, 0),) + self.spatial_padding,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y + self.bias[...], cache


def conv2d(din: int, dout: int, kernel: int, dtype, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
  """A per-frame 2D convolution (leading (B, F) axes are batch axes)."""
  return nnx.Conv(din, dout, (kernel, kernel), dtype=dtype, param_dtype=dtype, rngs=rngs, **kwargs)


class ResidualBlock(nnx.Module):
  """x -> shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))); shortcut is a 1x1x1 conv or identity."""

  def __init__(self, din: int, dout: int, dtype, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(din, dtype)
    self.conv1 = CausalConv3d(din, dout, 3, padding=1, dtype=dtype, rngs=rngs)
    self.norm2 = RMSNorm(dout, dtype)
    self.conv2 = CausalConv3d(dout, dout, 3, padding=1, dtype=dtype, rngs=rngs)
    self.conv_shortcut = CausalConv3d(din, dout, 1, dtype=dtype, rngs=rngs) if din != dout else None

  def __call__(self, x, cache=None):
    cache1, cache2 = cache or (None, None)
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
    y, cache1 = self.conv1(jax.nn.silu(self.norm1(x)), cache1)
    y, cache2 = self.conv2(jax.nn.silu(self.norm2(y)), cache2)
    return y + shortcut, (cache1, cache2)


class AttentionBlock(nnx.Module):
  """x + proj(attention(norm(x))): one head of width C over the H·W positions of each frame."""

  def __init__(self, dim: int, dtype, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim, dtype)
    self.to_qkv = conv2d(dim, 3 * dim, 1, dtype, rngs)
    self.proj = conv2d(dim, dim, 1, dtype, rngs)

  def __call__(self, x):
    b, f, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * f, h * w, 1, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    y = dot_product_attention(q, k, v).reshape(b, f, h, w, c)
    return x + self.proj(y)


class MidBlock(nnx.Module):
  """Residual block, attention, residual block, at the lowest resolution."""

  def __init__(self, dim: int, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, dtype, rngs) for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(dim, dtype, rngs)])

  def __call__(self, x, cache=None):
    cache0, cache1 = cache or (None, None)
    x, cache0 = self.resnets[0](x, cache0)
    x, cache1 = self.resnets[1](self.attentions[0](x), cache1)
    return x, (cache0, cache1)


class Resample(nnx.Module):
  """Spatial x2 up/down-sampling of every frame; the `*3d` modes also resample time x2, causally.

  upsample: nearest x2 then a 3x3 conv to dim/2 channels; in time a (3,1,1) causal conv to 2·dim
  channels whose halves become two consecutive frames — except for the first chunk of a video,
  which keeps its single frame (the conv's history then starts from zeros at the second chunk).
  downsample: pad right/bottom by one, 3x3 conv with stride 2; in time a (3,1,1) conv with stride 2
  over the previous chunk's last frame and this chunk — the first chunk passes through.
  """

  def __init__(self, dim: int, mode: str, dtype, rngs: nnx.Rngs, up_dim: int | None = None):
    self.mode = mode
    self.up = mode.startswith("upsample")
    if self.up:  # Wan2.1 halves the channels here; Wan2.2 keeps them (`up_dim`)
      self.resample = conv2d(dim, up_dim or dim // 2, 3, dtype, rngs, padding=((1, 1), (1, 1)))
      time_conv = dict(dout=2 * dim, padding=(1, 0, 0))
    else:
      self.resample = conv2d(dim, dim, 3, dtype, rngs, strides=(2, 2), padding=((0, 1), (0, 1)))
      time_conv = dict(dout=dim, stride=(2, 1, 1))
    self.time_conv = (CausalConv3d(dim, kernel=(3, 1, 1), dtype=dtype, rngs=rngs, **time_conv)
                      if mode.endswith("3d") else None)

  def __call__(self, x, cache=None):
    if self.mode == "upsample3d":
      if cache is None:
        cache = jnp.zeros((x.shape[0], self.time_conv.past, *x.shape[2:]), x.dtype)
      else:
        x, cache = self.time_conv(x, cache)
        b, f, h, w, c2 = x.shape
        x = x.reshape(b, f, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * f, h, w, c2 // 2)
    if self.up:
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    x = self.resample(x)
    if self.mode == "downsample3d":
      last = x[:, -1:]
      if cache is not None:
        x = self.time_conv(jnp.concatenate([cache, x], axis=1))[0]
      cache = last
    return x, cache


def run_stage(resnets, resampler, x, cache=None):
  """Residual blocks then an optional resampler, each with its causal cache: (y, caches)."""
  cache = list(cache or [None] * (len(resnets) + 1))
  for i, resnet in enumerate(resnets):
    x, cache[i] = resnet(x, cache[i])
  if resampler is not None:
    x, cache[-1] = resampler(x, cache[-1])
  return x, tuple(cache)


class UpBlock(nnx.Module):

  def __init__(self, din: int, dout: int, num_res_blocks: int, upsample: str | None, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(din if i == 0 else dout, dout, dtype, rngs)
                             for i in range(num_res_blocks + 1)])
    self.upsamplers = nnx.List([Resample(dout, upsample, dtype, rngs)]) if upsample else None

  def __call__(self, x, cache=None):
    return run_stage(self.resnets, self.upsamplers[0] if self.upsamplers is not None else None, x, cache)


def space_time_to_channels(x, factor_t: int, factor_s: int):
  """(B, F, H, W, C) -> (B, F/ft, H/fs, W/fs, C·ft·fs²), each channel's ft x fs x fs cell in its group
  (diffusers' AvgDown3D order); the frames are first padded in front to a multiple of ft."""
  pad = -x.shape[1] % factor_t
  x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
  b, f, h, w, c = x.shape
  x = x.reshape(b, f // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
  return x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, f // factor_t, h // factor_s, w // factor_s, -1)


class AverageDown(nnx.Module):
  """The Wan2.2 down block's shortcut: each space-time cell folded into channels, then groups of
  channels averaged down to `dout`."""

  def __init__(self, din: int, dout: int, factor_t: int, factor_s: int):
    self.dout, self.factor_t, self.factor_s = dout, factor_t, factor_s
    if din * factor_t * factor_s ** 2 % dout:
      raise ValueError(f"{din} channels x {factor_t * factor_s ** 2} cells do not average into {dout}")

  def __call__(self, x):
    x = space_time_to_channels(x, self.factor_t, self.factor_s)
    return x.reshape(*x.shape[:-1], self.dout, -1).mean(-1)


class DuplicateUp(nnx.Module):
  """The Wan2.2 up block's shortcut: channels repeated, then spread over an ft x fs x fs cell of
  space-time each; a video's first chunk keeps only the last frame of its cells."""

  def __init__(self, din: int, dout: int, factor_t: int, factor_s: int):
    self.dout, self.factor_t, self.factor_s = dout, factor_t, factor_s
    self.repeats = dout * factor_t * factor_s ** 2 // din

  def __call__(self, x, first_chunk: bool):
    b, f, h, w, _ = x.shape
    ft, fs = self.factor_t, self.factor_s
    x = jnp.repeat(x, self.repeats, axis=-1).reshape(b, f, h, w, self.dout, ft, fs, fs)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, f * ft, h * fs, w * fs, self.dout)
    return x[:, ft - 1:] if first_chunk else x


class ResidualDownBlock(nnx.Module):
  """Wan2.2 encoder stage: residual blocks and the downsampler, plus the averaging shortcut."""

  def __init__(self, din: int, dout: int, num_res_blocks: int, temporal: bool, down: bool, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(din if j == 0 else dout, dout, dtype, rngs) for j in range(num_res_blocks)])
    self.downsampler = Resample(dout, "downsample3d" if temporal else "downsample2d", dtype, rngs) if down else None
    self.avg_shortcut = AverageDown(din, dout, 2 if temporal else 1, 2 if down else 1)

  def __call__(self, x, cache=None):
    y, cache = run_stage(self.resnets, self.downsampler, x, cache)
    return y + self.avg_shortcut(x), cache


class ResidualUpBlock(nnx.Module):
  """Wan2.2 decoder stage: residual blocks and the upsampler, plus the duplicating shortcut."""

  def __init__(self, din: int, dout: int, num_res_blocks: int, temporal: bool, up: bool, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(din if j == 0 else dout, dout, dtype, rngs)
                             for j in range(num_res_blocks + 1)])
    mode = "upsample3d" if temporal else "upsample2d"
    self.upsampler = Resample(dout, mode, dtype, rngs, up_dim=dout) if up else None
    self.avg_shortcut = DuplicateUp(din, dout, 2 if temporal else 1, 2) if up else None

  def __call__(self, x, cache=None):
    y, new_cache = run_stage(self.resnets, self.upsampler, x, cache)
    if self.avg_shortcut is not None:  # a video's first chunk comes without caches
      y = y + self.avg_shortcut(x, first_chunk=cache is None)
    return y, new_cache


class Decoder(nnx.Module):
  """One chunk of latent frames (B, F, h, w, z_dim) -> video frames (B, F', H, W, out_channels)."""

  def __init__(self, cfg: WanVAEConfig, dtype, rngs: nnx.Rngs):
    base = cfg.decoder_base_dim or cfg.base_dim
    dims = [base * m for m in (cfg.dim_mult[-1],) + cfg.dim_mult[::-1]]
    temporal = cfg.temperal_downsample[::-1]
    last = len(cfg.dim_mult) - 1
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, dtype=dtype, rngs=rngs)
    self.mid_block = MidBlock(dims[0], dtype, rngs)
    blocks = []
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
      if cfg.is_residual:
        blocks.append(ResidualUpBlock(din, dout, cfg.num_res_blocks, i != last and temporal[i], i != last, dtype, rngs))
        continue
      upsample = None if i == last else ("upsample3d" if temporal[i] else "upsample2d")
      # Every Wan2.1 upsampler halves the channels, so each block after the first gets half its nominal width.
      blocks.append(UpBlock(din // 2 if i else din, dout, cfg.num_res_blocks, upsample, dtype, rngs))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], dtype)
    self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

  def __call__(self, x, cache=None):
    n = len(self.up_blocks)
    cache = list(cache or [None] * (n + 3))
    x, cache[0] = self.conv_in(x, cache[0])
    x, cache[1] = self.mid_block(x, cache[1])
    for i, block in enumerate(self.up_blocks):
      x, cache[2 + i] = block(x, cache[2 + i])
    x, cache[-1] = self.conv_out(jax.nn.silu(self.norm_out(x)), cache[-1])
    return x, tuple(cache)


class Encoder(nnx.Module):
  """One chunk of video frames (B, F, H, W, in_channels) -> posterior parameters (B, F', h, w, 2·z_dim)."""

  def __init__(self, cfg: WanVAEConfig, dtype, rngs: nnx.Rngs):
    dims = [cfg.base_dim * m for m in (1,) + cfg.dim_mult]
    last = len(cfg.dim_mult) - 1
    self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, dtype=dtype, rngs=rngs)
    layers = []
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
      if cfg.is_residual:
        layers.append(ResidualDownBlock(din, dout, cfg.num_res_blocks, i != last and cfg.temperal_downsample[i],
                                        i != last, dtype, rngs))
        continue
      for j in range(cfg.num_res_blocks):
        layers.append(ResidualBlock(din if j == 0 else dout, dout, dtype, rngs))
      if i != last:
        layers.append(Resample(dout, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d", dtype, rngs))
    self.down_blocks = nnx.List(layers)
    self.mid_block = MidBlock(dims[-1], dtype, rngs)
    self.norm_out = RMSNorm(dims[-1], dtype)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, dtype=dtype, rngs=rngs)

  def __call__(self, x, cache=None):
    n = len(self.down_blocks)
    cache = list(cache or [None] * (n + 3))
    x, cache[0] = self.conv_in(x, cache[0])
    for i, layer in enumerate(self.down_blocks):
      x, cache[1 + i] = layer(x, cache[1 + i])
    x, cache[-2] = self.mid_block(x, cache[-2])
    x, cache[-1] = self.conv_out(jax.nn.silu(self.norm_out(x)), cache[-1])
    return x, tuple(cache)


def run_chunks(step, first, rest, chunk: int):
  """Apply `step(x, cache) -> (y, cache)` to `first` (cache None), then to the frames of `rest`
  (B, F, ...) `chunk` at a time in order — a `lax.scan` over the whole chunks, then the shorter last
  one — and concatenate the outputs along frames. Only one chunk's activations are live at a time."""
  y, cache = step(first, None)
  outputs = [y]
  b, f = rest.shape[:2]
  whole = f // chunk
  if whole:
    chunks = jnp.moveaxis(rest[:, :whole * chunk].reshape(b, whole, chunk, *rest.shape[2:]), 1, 0)
    cache, ys = jax.lax.scan(lambda c, x: step(x, c)[::-1], cache, chunks)
    outputs.append(jnp.moveaxis(ys, 0, 1).reshape(b, -1, *ys.shape[3:]))
  if f % chunk:
    outputs.append(step(rest[:, whole * chunk:], cache)[0])
  return jnp.concatenate(outputs, axis=1)


# ----------------------------------------------------------------------------------------------
# Autoencoder


def patchify(x, p: int):
  """(B, F, H, W, C) -> (B, F, H/p, W/p, C·p²), channel c·p² + pw·p + ph (diffusers' order)."""
  if p == 1:
    return x
  b, f, h, w, c = x.shape
  x = x.reshape(b, f, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
  return x.reshape(b, f, h // p, w // p, c * p * p)


def unpatchify(x, p: int):
  """The inverse of `patchify`."""
  if p == 1:
    return x
  b, f, h, w, cp = x.shape
  x = x.reshape(b, f, h, w, cp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
  return x.reshape(b, f, h * p, w * p, cp // (p * p))


class WanVAE(nnx.Module):
  """Causal video VAE: 1 + 4k frames <-> 1 + k latent frames, `spatial_compression` x smaller in H
  and W (Wan2.1: 8, Wan2.2: 16)."""

  def __init__(self, cfg: WanVAEConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = cfg
    self.dtype = dtype = jnp.dtype(dtype)
    z = cfg.z_dim
    self.encoder = Encoder(cfg, dtype, rngs)
    self.quant_conv = CausalConv3d(2 * z, 2 * z, 1, dtype=dtype, rngs=rngs)
    self.post_quant_conv = CausalConv3d(z, z, 1, dtype=dtype, rngs=rngs)
    self.decoder = Decoder(cfg, dtype, rngs)

  def decode(self, z, chunk: int = 1):
    """Raw (de-normalised) latents (B, z_dim, T, h, w) -> video (B, 3, 1 + 4(T-1), s·h, s·w) in [-1, 1].

    The first latent frame, then `chunk` latent frames at a time (1: diffusers'
    `AutoencoderKLWan.decode` without tiling), with the causal caches carried from chunk to chunk:
    every chunk size gives the same video, and memory grows with the chunk, not the video.
    """
    if chunk < 1:
      raise ValueError(f"decode chunk must be >= 1 latent frame, got {chunk}")
    x = jnp.moveaxis(jnp.asarray(z), 1, -1).astype(self.dtype)
    x = self.post_quant_conv(x)[0]
    video = unpatchify(run_chunks(self.decoder, x[:, :1], x[:, 1:], chunk), self.config.patch)
    return jnp.clip(jnp.moveaxis(video, -1, 1), -1.0, 1.0)

  def encode(self, video):
    """Video (B, 3, 1 + 4k, H, W) in [-1, 1] -> posterior (mean, logvar), each (B, z_dim, 1 + k, H/s, W/s).

    The first frame, then 4 frames at a time, as diffusers' `AutoencoderKLWan.encode` (without
    tiling); logvar is clipped to [-30, 20] as its DiagonalGaussianDistribution does.
    """
    x = jnp.moveaxis(jnp.asarray(video), 1, -1).astype(self.dtype)
    b, f, h, w, c = x.shape
    if (f - 1) % ENCODER_CHUNK:
      raise ValueError(f"video has {f} frames; the Wan VAE encodes 1 + {ENCODER_CHUNK}k frames")
    if h % self.config.patch or w % self.config.patch:
      raise ValueError(f"video of {h}x{w} does not split into {self.config.patch}x{self.config.patch} patches")
    x = patchify(x, self.config.patch)
    moments = self.quant_conv(run_chunks(self.encoder, x[:, :1], x[:, 1:], ENCODER_CHUNK))[0]
    mean, logvar = jnp.split(jnp.moveaxis(moments, -1, 1), 2, axis=1)
    return mean, jnp.clip(logvar, -30.0, 20.0)
