"""Wan2.1 text-to-video diffusion transformer in Flax NNX.

Computes exactly what diffusers' `WanTransformer3DModel` computes (see DESIGN §3). Attribute names
follow diffusers so that weight conversion is a declarative table (`t2vu_jax/models/wan_params.py`).
Blocks are stacked along a leading layer axis and run with `nnx.scan`; `scan_layers=False` runs the
same stacked parameters layer by layer for debugging. Under a mesh in context (`jax.set_mesh`) the
video tokens are pinned to their sharding (`t2vu_jax.sharding.constrain`) after the patch embedding
and at every block boundary; without one nothing changes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.attention import attention_with_concept, check_backend, dot_product_attention
from t2vu_jax.sharding import constrain

F32 = jnp.float32

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """Architecture of a Wan T2V transformer (Wan2.1, and Wan2.2's TI2V-5B and A14B experts; field names
  follow diffusers' config.json)."""
  patch_size: tuple[int, int, int] = (1, 2, 2)
  num_attention_heads: int = 12
  attention_head_dim: int = 128
  in_channels: int = 16
  out_channels: int = 16
  text_dim: int = 4096
  freq_dim: int = 256
  ffn_dim: int = 8960
  num_layers: int = 30
  cross_attn_norm: bool = True
  eps: float = 1e-6
  rope_max_seq_len: int = 1024

  @property
  def dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @classmethod
  def wan_1_3b(cls) -> "WanConfig":
    return cls()

  @classmethod
  def wan_14b(cls) -> "WanConfig":
    return cls(num_attention_heads=40, ffn_dim=13824, num_layers=40)

  @classmethod
  def wan22_5b(cls) -> "WanConfig":
    """Wan2.2 TI2V-5B: 24 heads x 128 = 3072 wide, on the 48 channels of the Wan2.2 VAE."""
    return cls(num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336)

  @classmethod
  def wan22_a14b(cls) -> "WanConfig":
    """Each of Wan2.2 A14B's two experts (high and low noise): the Wan2.1 14B architecture."""
    return cls.wan_14b()

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WanConfig":
    """From a diffusers `config.json` dict; refuses what this model does not implement."""
    if d.get("image_dim") is not None or d.get("added_kv_proj_dim") is not None:
      raise ValueError("image-to-video (I2V) Wan checkpoints are not supported: config has "
                       f"image_dim={d.get('image_dim')}, added_kv_proj_dim={d.get('added_kv_proj_dim')}; "
                       "use a text-to-video (T2V) checkpoint")
    qk_norm = d.get("qk_norm", "rms_norm_across_heads")
    if qk_norm != "rms_norm_across_heads":
      raise ValueError(f"config qk_norm={qk_norm!r} is not supported (Wan2.1 uses 'rms_norm_across_heads')")
    if d.get("pos_embed_seq_len") is not None:
      raise ValueError("config pos_embed_seq_len is set: that is an I2V/FLF2V model, which is not supported")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    if "patch_size" in kwargs:
      kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if kwargs.get("out_channels") is None:
      kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """The diffusers `config.json` fields of this architecture."""
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    d.update(qk_norm="rms_norm_across_heads", image_dim=None, added_kv_proj_dim=None, pos_embed_seq_len=None)
    return d


# ----------------------------------------------------------------------------------------------
# Small layers


def layer_norm(x, eps, scale=None, bias=None):
  """LayerNorm computed in fp32 (diffusers' FP32LayerNorm); returns fp32."""
  x = x.astype(F32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale + bias
  return y


class LayerNorm(nnx.Module):
  """Affine fp32 LayerNorm (the cross-attention norm, `norm2`)."""

  def __init__(self, dim: int, eps: float):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), F32))
    self.bias = nnx.Param(jnp.zeros((dim,), F32))

  def __call__(self, x):
    return layer_norm(x, self.eps, self.scale[...], self.bias[...])


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis, computed in fp32, cast back to the input dtype."""

  def __init__(self, dim: int, eps: float):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), F32))

  def __call__(self, x):
    y = x.astype(F32)
    y = y * jax.lax.rsqrt(jnp.square(y).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def linear(din: int, dout: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=dtype, rngs=rngs)


# ----------------------------------------------------------------------------------------------
# Positional and timestep embeddings


def rope_tables(cfg: WanConfig, f: int, h: int, w: int):
  """3D RoPE cos/sin of shape (f*h*w, head_dim/2), built in float64 then cast to fp32.

  head_dim d splits into t = d - 2*2*(d//6) and h = w = 2*(d//6) channels; each axis uses
  θ = 10000 over its own channel count, and tokens are in (f, h, w) order.
  """
  d = cfg.attention_head_dim
  dh = dw = 2 * (d // 6)
  dt = d - dh - dw

  def axis_angles(n, dim):
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim))
    return np.outer(np.arange(n, dtype=np.float64), inv_freq)  # (n, dim/2)

  at, ah, aw = axis_angles(f, dt), axis_angles(h, dh), axis_angles(w, dw)
  angles = np.concatenate([
      np.broadcast_to(at[:, None, None], (f, h, w, at.shape[-1])),
      np.broadcast_to(ah[None, :, None], (f, h, w, ah.shape[-1])),
      np.broadcast_to(aw[None, None, :], (f, h, w, aw.shape[-1])),
  ], axis=-1).reshape(f * h * w, d // 2)
  return jnp.asarray(np.cos(angles), F32), jnp.asarray(np.sin(angles), F32)


def apply_rope(x, cos, sin):
  """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, S, H, D) by the angles in cos/sin (S, D/2)."""
  xp = x.astype(F32).reshape(*x.shape[:-1], -1, 2)
  x1, x2 = xp[..., 0], xp[..., 1]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def timestep_embedding(t, dim: int):
  """Sinusoidal embedding [cos, sin] (flip_sin_to_cos=True, shift 0), fp32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=F32) / half)
  args = t.astype(F32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


# ----------------------------------------------------------------------------------------------
# Transformer


class Attention(nnx.Module):
  """Wan attention: q/k/v/out projections, RMSNorm across all heads on q and k, optional RoPE."""

  def __init__(self, cfg: WanConfig, dtype, rngs: nnx.Rngs):
    dim = cfg.dim
    self.heads = cfg.num_attention_heads
    self.to_q = linear(dim, dim, dtype, rngs)
    self.to_k = linear(dim, dim, dtype, rngs)
    self.to_v = linear(dim, dim, dtype, rngs)
    self.to_out = linear(dim, dim, dtype, rngs)
    self.norm_q = RMSNorm(dim, cfg.eps)
    self.norm_k = RMSNorm(dim, cfg.eps)

  def projections(self, x, context=None):
    """The q, k, v projections before their norms, (B, S, D) and (B, L, D)."""
    context = x if context is None else context
    return self.to_q(x), self.to_k(context), self.to_v(context)

  @staticmethod
  def with_lora(projections, lora, x, context=None):
    """`projections` of x (and context) plus the LoRA's low-rank deltas (unchanged without a LoRA)."""
    if lora is None:
      return projections
    inputs = (x, x if context is None else context, x if context is None else context)
    return tuple(p + lora.delta(name, t).astype(t.dtype) for p, name, t in zip(projections, "qkv", inputs))

  def split_heads(self, q, k, v, rope=None):
    """Projections -> normalised, heads-split (B, S, H, D) queries, keys, values (RoPE on q and k)."""
    split = lambda t: t.reshape(*t.shape[:2], self.heads, -1)  # noqa: E731
    q, k, v = split(self.norm_q(q)), split(self.norm_k(k)), split(v)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k, v

  def attend(self, q, k, v, backend="xla", lora=None, concept_mask=None, key_bias=None):
    """(output, concept attention (B, S) or None): `concept_mask` (B, L) asks for the attention mass on
    those keys; `key_bias` (L,) is added to the logits of each key (`WanTransformer`'s `text_padding`)."""
    if concept_mask is None:
      out, concept = dot_product_attention(q, k, v, backend, key_bias), None
    else:
      out, concept = attention_with_concept(q, k, v, concept_mask, backend, key_bias)
    out = out.reshape(*out.shape[:2], -1)
    return self.to_out(out) + (lora.delta("out", out).astype(out.dtype) if lora else 0), concept

  def __call__(self, x, context=None, rope=None, backend="xla", lora=None):
    projections = self.with_lora(self.projections(x, context), lora, x, context)
    return self.attend(*self.split_heads(*projections, rope), backend, lora)[0]


class FeedForward(nnx.Module):

  def __init__(self, cfg: WanConfig, dtype, rngs: nnx.Rngs):
    self.net_0_proj = linear(cfg.dim, cfg.ffn_dim, dtype, rngs)
    self.net_2 = linear(cfg.ffn_dim, cfg.dim, dtype, rngs)

  def __call__(self, x):
    return self.net_2(jax.nn.gelu(self.net_0_proj(x), approximate=True))


class WanBlock(nnx.Module):
  """x += attn1(mod(LN(x))) * gate; x += attn2(norm2(x), text); x += ffn(mod(LN(x))) * c_gate."""

  def __init__(self, cfg: WanConfig, dtype, rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.attn1 = Attention(cfg, dtype, rngs)
    self.attn2 = Attention(cfg, dtype, rngs)
    self.norm2 = LayerNorm(cfg.dim, cfg.eps) if cfg.cross_attn_norm else None
    self.ffn = FeedForward(cfg, dtype, rngs)
    self.scale_shift_table = nnx.Param(
        jax.random.normal(rngs.params(), (1, 6, cfg.dim), F32) / math.sqrt(cfg.dim))

  def __call__(self, x, context, timestep_proj, rope, backend="xla", eraser=None, concept_mask=None,
               loc_mask=None, key_bias=None):
    """Returns the new x and a `LayerAux`: the cross-attention mass on the concept tokens (when
    `concept_mask` (B, L) is given) and the eraser's localization term (when `loc_mask` (B, S) is).
    `key_bias` (L,) goes to the cross-attention's logits."""
    mod = self.scale_shift_table[...][:, None] + timestep_proj.astype(F32)  # (B, 1 or S, 6, D)
    shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, :, i] for i in range(6))  # (B, 1 or S, D)
    dtype = x.dtype
    adapter_at = eraser.placement if eraser is not None and eraser.kind == "adapter" else None
    lora = eraser if eraser is not None and eraser.kind == "lora" else None
    erased = None  # the eraser's output o: what it adds to the attention output it is attached to

    h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
    a = self.attn1(h, rope=rope, backend=backend)
    if adapter_at == "self_attn":
      erased = eraser(a)
      a = a + erased.astype(dtype)
    x = (x.astype(F32) + a * gate).astype(dtype)

    h = x if self.norm2 is None else self.norm2(x).astype(dtype)
    base = self.attn2.projections(h, context)
    projections = self.attn2.with_lora(base, lora, h, context)
    c, concept = self.attn2.attend(*self.attn2.split_heads(*projections), backend, lora, concept_mask, key_bias)
    if adapter_at == "cross_attn":
      erased = eraser(c)
      c = c + erased.astype(dtype)
    elif lora is not None and loc_mask is not None:  # o = LoRA output − base output, from shared projections
      c_base, _ = self.attn2.attend(*self.attn2.split_heads(*base), backend, key_bias=key_bias)
      erased = c.astype(F32) - c_base.astype(F32)
    x = x + c

    h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
    x = (x.astype(F32) + self.ffn(h).astype(F32) * c_gate).astype(dtype)
    loc = None if loc_mask is None or erased is None else localization_term(erased, loc_mask)
    return x, LayerAux(concept, loc)


class LayerAux(NamedTuple):
  """Per-layer side outputs of a block (None when not requested)."""
  concept_attention: jax.Array | None  # (B, S) cross-attention mass on the concept tokens
  localization: jax.Array | None       # (B,) eraser output energy outside the concept mask


def localization_term(erased, loc_mask):
  """Σ_s mean_d(o²)·(1 − M) / (Σ_s (1 − M) + 1e-9) per sample: eraser activity outside the concept."""
  outside = 1.0 - loc_mask.astype(F32)
  energy = jnp.mean(jnp.square(erased.astype(F32)), axis=-1)
  return jnp.sum(energy * outside, axis=-1) / (jnp.sum(outside, axis=-1) + 1e-9)


class TimestepEmbedder(nnx.Module):

  def __init__(self, din: int, dim: int, rngs: nnx.Rngs):
    self.linear_1 = linear(din, dim, F32, rngs)
    self.linear_2 = linear(dim, dim, F32, rngs)

  def __call__(self, x):
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextEmbedder(nnx.Module):

  def __init__(self, din: int, dim: int, rngs: nnx.Rngs):
    self.linear_1 = linear(din, dim, F32, rngs)
    self.linear_2 = linear(dim, dim, F32, rngs)

  def __call__(self, x):
    return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=True))


class ConditionEmbedder(nnx.Module):
  """Timesteps (B, T) → (temb (B, T, D), per-block modulation (B, T, 6, D)), T = 1 or one per video token
  (Wan2.2 TI2V's expanded timesteps); text (B, L, text_dim) → (B, L, D). All fp32."""

  def __init__(self, cfg: WanConfig, rngs: nnx.Rngs):
    self.freq_dim = cfg.freq_dim
    self.time_embedder = TimestepEmbedder(cfg.freq_dim, cfg.dim, rngs)
    self.time_proj = linear(cfg.dim, 6 * cfg.dim, F32, rngs)
    self.text_embedder = TextEmbedder(cfg.text_dim, cfg.dim, rngs)

  def __call__(self, timestep, text):
    b, n = timestep.shape
    temb = self.time_embedder(timestep_embedding(timestep.reshape(-1), self.freq_dim)).reshape(b, n, -1)
    timestep_proj = self.time_proj(jax.nn.silu(temb)).reshape(b, n, 6, -1)
    return temb, timestep_proj, self.text_embedder(text.astype(F32))


class WanTransformer(nnx.Module):
  """Wan2.1 T2V DiT. Call with diffusers' layouts: (B, C, F, H, W), (B,), (B, L, text_dim)."""

  def __init__(self, cfg: WanConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs,
               scan_layers: bool = True, remat: str = "none", attention: str = "xla"):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    self.config = cfg
    self.dtype = dtype = jnp.dtype(dtype)
    self.scan_layers = scan_layers
    self.remat = remat
    self.attention = check_backend(attention)
    pt, ph, pw = cfg.patch_size
    # Conv3d with kernel = stride = patch, stored (t, h, w, in, out).
    self.patch_embedding = nnx.Conv(cfg.in_channels, cfg.dim, kernel_size=(pt, ph, pw), strides=(pt, ph, pw),
                                    padding="VALID", dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.condition_embedder = ConditionEmbedder(cfg, rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return WanBlock(cfg, dtype, rngs)

    self.blocks = make_blocks(rngs)
    self.proj_out = linear(cfg.dim, cfg.out_channels * pt * ph * pw, dtype, rngs)
    self.scale_shift_table = nnx.Param(
        jax.random.normal(rngs.params(), (1, 2, cfg.dim), F32) / math.sqrt(cfg.dim))
    self.erasers = nnx.data(None)  # stacked per-layer erasers: `t2vu_jax.models.erasers.attach_erasers`
    self.eraser_config = None

  def __call__(self, hidden_states, timestep, encoder_hidden_states, *, erasers: bool = True,
               concept_mask=None, loc_masks=None, return_aux: bool = False, text_padding=None):
    """The velocity (B, C, F, H, W); with `return_aux`, also a `LayerAux` stacked over layers.

    `timestep` is a scalar, (B,), or (B, S) with one timestep per video token (S = F'·H'·W' patch tokens,
    as Wan2.2 TI2V's `expand_timesteps` pipelines pass it): the modulation is then per token.

    `erasers=False` runs the base model even when erasers are attached. `concept_mask` (B, L) asks
    for each layer's cross-attention mass on those text tokens, (num_layers, B, S); `loc_masks`
    (num_layers, B, S) asks for each layer's localization term, (num_layers, B).

    `text_padding` n says that the context's last row is zero padding standing for n + 1 such rows
    (`text.collapse_padding`): attention over identical keys is attention over one of them with its
    logit raised by log(n + 1), so the result is that of the uncut context (XLA attention only).
    """
    cfg = self.config
    b, _, f, h, w = hidden_states.shape
    pt, ph, pw = cfg.patch_size
    gf, gh, gw = f // pt, h // ph, w // pw
    if not (gf and gh and gw):
      raise ValueError(f"latents of shape (F, H, W) = {(f, h, w)} are smaller than one patch {cfg.patch_size}")

    x = jnp.transpose(hidden_states, (0, 2, 3, 4, 1)).astype(self.dtype)  # channels-last
    x = self.patch_embedding(x[:, :gf * pt, :gh * ph, :gw * pw]).reshape(b, gf * gh * gw, cfg.dim)
    x = constrain(x, "batch", "tokens", None)

    timestep = jnp.asarray(timestep)
    if timestep.ndim == 2:
      if timestep.shape not in ((b, gf * gh * gw), (1, gf * gh * gw)):
        raise ValueError(f"per-token timesteps must be (batch, tokens) = {(b, gf * gh * gw)}, got {timestep.shape}")
      timestep = jnp.broadcast_to(timestep, (b, gf * gh * gw))
    elif timestep.ndim <= 1:
      timestep = jnp.broadcast_to(timestep, (b,))[:, None]
    else:
      raise ValueError(f"timestep must be a scalar, (batch,) or (batch, tokens), got shape {timestep.shape}")
    temb, timestep_proj, context = self.condition_embedder(timestep, encoder_hidden_states)
    context = constrain(context.astype(self.dtype), "batch", None, None)
    rope = rope_tables(cfg, gf, gh, gw)
    key_bias = None
    if text_padding is not None:
      length = encoder_hidden_states.shape[1]
      key_bias = jnp.zeros((length,), F32).at[length - 1].set(jnp.log1p(jnp.asarray(text_padding, F32)))

    eraser_stack = self.erasers if erasers else None
    if loc_masks is not None and eraser_stack is None:
      raise ValueError("loc_masks need erasers attached and enabled")
    x, aux = self._run_blocks(x, context, timestep_proj, rope, eraser_stack, concept_mask, loc_masks, key_bias)

    mod = self.scale_shift_table[...][:, None] + temb[:, :, None]  # (B, 1 or S, 2, D)
    shift, scale = mod[:, :, 0], mod[:, :, 1]
    x = (layer_norm(x, cfg.eps) * (1 + scale) + shift).astype(self.dtype)
    x = self.proj_out(x)
    x = x.reshape(b, gf, gh, gw, pt, ph, pw, -1)
    x = jnp.transpose(x, (0, 7, 1, 4, 2, 5, 3, 6))
    x = x.reshape(b, -1, gf * pt, gh * ph, gw * pw)
    return (x, aux) if return_aux else x

  def _run_blocks(self, x, context, timestep_proj, rope, erasers, concept_mask, loc_masks, key_bias=None):
    """Run the stacked blocks (with their erasers and per-layer masks) over the layer axis."""
    backend = self.attention
    layers = {"block": self.blocks}
    if erasers is not None:
      layers["eraser"] = erasers
    if loc_masks is not None:
      layers["loc_mask"] = loc_masks

    def body(x, layer):
      x, aux = layer["block"](constrain(x, "batch", "tokens", None), context, timestep_proj, rope, backend,
                              layer.get("eraser"), concept_mask, layer.get("loc_mask"), key_bias)
      return constrain(x, "batch", "tokens", None), aux

    policy = REMAT_POLICIES[self.remat]
    if self.remat != "none":
      body = nnx.remat(body, policy=policy)
    if self.scan_layers:
      return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(x, layers)
    graphdef, state = nnx.split(layers)
    outs = []
    for i in range(self.config.num_layers):
      x, aux = body(x, nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)))
      outs.append(aux)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)


def forward_flops(cfg: WanConfig, video_tokens: int, text_len: int = 512, batch: int = 1) -> int:
  """Analytic FLOPs of one forward (matmuls only, 2 per multiply-add)."""
  d, s, l = cfg.dim, video_tokens, text_len
  per_layer = (4 * s * d * d + 2 * s * s * d      # self-attention: q, k, v, out; scores and values
               + 2 * s * d * d + 2 * l * d * d    # cross-attention: q, out on video; k, v on text
               + 2 * s * l * d                    # cross-attention scores and values
               + 2 * s * d * cfg.ffn_dim)         # feed-forward
  embed = s * cfg.in_channels * math.prod(cfg.patch_size) * d + l * (cfg.text_dim * d + d * d)
  head = s * d * cfg.out_channels * math.prod(cfg.patch_size)
  return 2 * batch * (cfg.num_layers * per_layer + embed + head)
