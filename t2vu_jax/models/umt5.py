"""The UMT5 text encoder (Wan's prompt encoder, UMT5-XXL) in Flax NNX.

Computes what transformers' `UMT5EncoderModel` computes: token embedding, then per layer
  x += SelfAttention(RMS(x))   with a relative position bias of the layer's own and no 1/sqrt(d) scale,
  x += wo(act(wi_0(RMS(x))) * wi_1(RMS(x)))   (gated-GELU, tanh approximation),
and a final RMS norm. Padded keys are masked out of every attention. Layers are stacked along a
leading axis and run with `nnx.scan`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.models.wan import REMAT_POLICIES, RMSNorm  # T5's LayerNorm is an RMS norm in fp32

F32 = jnp.float32
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """Architecture of a UMT5 encoder (field names follow transformers' config.json)."""
  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    act = self.feed_forward_proj.split("-")[-1]
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # transformers' special case

  @classmethod
  def umt5_xxl(cls) -> "UMT5Config":
    return cls()

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "UMT5Config":
    """From a transformers `config.json` dict; refuses what this encoder does not implement."""
    model_type = d.get("model_type", "umt5")
    if model_type != "umt5":
      raise ValueError(f"text encoder config has model_type={model_type!r}; expected 'umt5'")
    names = {f.name for f in dataclasses.fields(cls)}
    cfg = cls(**{k: v for k, v in d.items() if k in names})
    parts = cfg.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or cfg.activation not in ACTIVATIONS:
      raise ValueError(f"text encoder config feed_forward_proj={cfg.feed_forward_proj!r} is not supported "
                       f"(expected 'gated-gelu' or [gated-]{{{', '.join(sorted(ACTIVATIONS))}}})")
    return cfg

  def to_dict(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), model_type="umt5")


def relative_position_buckets(cfg: UMT5Config, length: int) -> np.ndarray:
  """(length, length) bucket index of key position minus query position (bidirectional T5 bucketing)."""
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = cfg.relative_attention_num_buckets // 2
  exact = half // 2
  buckets = (rel > 0) * half
  dist = np.abs(rel)
  # Distances past `exact` share logarithmically wider buckets, saturating at max_distance. Computed in
  # float32 like transformers, so boundary cases land in the same bucket.
  log = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(exact)) / np.float32(
      math.log(cfg.relative_attention_max_distance / exact))
  large = exact + (log * np.float32(half - exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return buckets + np.where(dist < exact, dist, large)


class SelfAttention(nnx.Module):

  def __init__(self, cfg: UMT5Config, dtype, rngs: nnx.Rngs):
    inner = cfg.num_heads * cfg.d_kv
    self.num_heads = cfg.num_heads
    self.q, self.k, self.v = (nnx.Linear(cfg.d_model, inner, use_bias=False, dtype=dtype, param_dtype=dtype,
                                         rngs=rngs) for _ in range(3))
    self.o = nnx.Linear(inner, cfg.d_model, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.relative_attention_bias = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), F32))

  def __call__(self, x, buckets, key_mask):
    b, s, _ = x.shape
    q, k, v = (proj(x).reshape(b, s, self.num_heads, -1) for proj in (self.q, self.k, self.v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32)
    bias = jnp.transpose(self.relative_attention_bias[...][buckets], (2, 0, 1))  # (H, S, S)
    logits = logits + bias + jnp.where(key_mask, 0.0, jnp.finfo(F32).min)[:, None, None, :]
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, -1)
    return self.o(out)


class GatedFeedForward(nnx.Module):

  def __init__(self, cfg: UMT5Config, dtype, rngs: nnx.Rngs):
    dense = lambda din, dout: nnx.Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.act = ACTIVATIONS[cfg.activation]
    self.wi_0 = dense(cfg.d_model, cfg.d_ff)
    self.wi_1 = dense(cfg.d_model, cfg.d_ff) if cfg.is_gated else None
    self.wo = dense(cfg.d_ff, cfg.d_model)

  def __call__(self, x):
    h = self.act(self.wi_0(x))
    if self.wi_1 is not None:
      h = h * self.wi_1(x)
    return self.wo(h)


class UMT5Layer(nnx.Module):

  def __init__(self, cfg: UMT5Config, dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
    self.attn = SelfAttention(cfg, dtype, rngs)
    self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
    self.ffn = GatedFeedForward(cfg, dtype, rngs)

  def __call__(self, x, buckets, key_mask):
    x = x + self.attn(self.attn_norm(x).astype(self.dtype), buckets, key_mask)
    return x + self.ffn(self.ffn_norm(x).astype(self.dtype))


class UMT5Encoder(nnx.Module):
  """UMT5 encoder: (B, S) token ids and (B, S) attention mask -> (B, S, d_model) hidden states (fp32).

  The residual stream is kept in fp32; weights and matmuls use `dtype`.
  """

  def __init__(self, cfg: UMT5Config, *, dtype=jnp.bfloat16, rngs: nnx.Rngs, remat: str = "none"):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    self.config = cfg
    self.dtype = dtype = jnp.dtype(dtype)
    self.remat = remat
    self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=dtype, rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs):
      return UMT5Layer(cfg, dtype, rngs)

    self.layers = make_layers(rngs)
    self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

  def __call__(self, input_ids, attention_mask=None):
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, bool)
    key_mask = attention_mask.astype(bool)
    buckets = relative_position_buckets(self.config, input_ids.shape[1])
    x = self.shared(input_ids).astype(F32)

    def body(x, layer):
      return layer(x, buckets, key_mask), None

    if self.remat != "none":
      body = nnx.remat(body, policy=REMAT_POLICIES[self.remat])
    x, _ = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(x, self.layers)
    return self.final_layer_norm(x)


def forward_flops(cfg: UMT5Config, tokens: int, batch: int = 1) -> int:
  """Analytic FLOPs of one encoder forward (matmuls only, 2 per multiply-add)."""
  d, inner, s = cfg.d_model, cfg.num_heads * cfg.d_kv, tokens
  ffn = (3 if cfg.is_gated else 2) * s * d * cfg.d_ff
  per_layer = 4 * s * d * inner + 2 * s * s * inner + ffn  # q, k, v, o; scores and values; feed-forward
  return 2 * batch * cfg.num_layers * per_layer
