"""Erasers: the small trainable modules that remove a concept from a frozen Wan transformer.

- adapter (default): on an attention output h of every block, `h -> h + up(GELU(down(h)))`,
  down D->r and up r->D with biases, up zero-initialised (so a fresh eraser changes nothing),
  on the cross-attention output (default) or the self-attention output (before its gate).
- lora: low-rank deltas `x -> x W + (alpha/r) (x A) B` on the cross-attention's q, k, v and out
  projections, B zero-initialised; mergeable into the base weights for stock diffusers.

Eraser weights are `EraserParam`s, not `nnx.Param`s, so `nnx.state(model, nnx.Param)` is exactly the
frozen base model and `nnx.state(model, EraserParam)` exactly what training updates. They are fp32
whatever the model's dtype, and stacked over layers like the blocks they attach to.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from t2vu_jax.io.eraser_format import KINDS, LORA_TARGETS, PLACEMENTS
from t2vu_jax.models.wan import WanConfig, WanTransformer

F32 = jnp.float32


class EraserParam(nnx.Variable):
  """A trainable eraser weight (the base model's `nnx.Param`s stay frozen)."""


@dataclasses.dataclass(frozen=True)
class EraserConfig:
  kind: str = "adapter"
  placement: str = "cross_attn"  # adapter only; LoRA always sits on the cross-attention
  rank: int = 128
  alpha: float | None = None     # LoRA scale is alpha / rank; default alpha = rank (scale 1)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"eraser kind {self.kind!r} is unknown; choose one of {KINDS}")
    if self.placement not in PLACEMENTS:
      raise ValueError(f"eraser placement {self.placement!r} is unknown; choose one of {PLACEMENTS}")
    if self.kind == "lora" and self.placement != "cross_attn":
      raise ValueError("LoRA erasers sit on the cross-attention (placement 'cross_attn')")
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
      raise ValueError(f"eraser rank must be a positive integer, got {self.rank!r}")
    if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
      raise ValueError(f"LoRA alpha must be a finite positive number, got {self.alpha!r}")

  @property
  def lora_scale(self) -> float:
    return (self.alpha if self.alpha is not None else self.rank) / self.rank


class Adapter(nnx.Module):
  """o(h) = up(GELU_exact(down(h))), computed in fp32; the block adds o to h."""
  kind = "adapter"

  def __init__(self, dim: int, cfg: EraserConfig, rngs: nnx.Rngs):
    self.placement = cfg.placement
    self.down_w = EraserParam(jax.random.normal(rngs.params(), (dim, cfg.rank), F32) / math.sqrt(dim))
    self.down_b = EraserParam(jnp.zeros((cfg.rank,), F32))
    self.up_w = EraserParam(jnp.zeros((cfg.rank, dim), F32))
    self.up_b = EraserParam(jnp.zeros((dim,), F32))

  def __call__(self, h):
    z = jax.nn.gelu(h.astype(F32) @ self.down_w[...] + self.down_b[...], approximate=False)
    return z @ self.up_w[...] + self.up_b[...]


class LoRA(nnx.Module):
  """Low-rank deltas (alpha/r)·(x A) B for the cross-attention's q, k, v and out projections."""
  kind = "lora"
  placement = "cross_attn"

  def __init__(self, dim: int, cfg: EraserConfig, rngs: nnx.Rngs):
    self.scale = cfg.lora_scale
    for name in LORA_TARGETS:
      setattr(self, f"{name}_a", EraserParam(jax.random.normal(rngs.params(), (dim, cfg.rank), F32) / math.sqrt(dim)))
      setattr(self, f"{name}_b", EraserParam(jnp.zeros((cfg.rank, dim), F32)))

  def delta(self, name: str, x):
    a, b = getattr(self, f"{name}_a")[...], getattr(self, f"{name}_b")[...]
    return self.scale * ((x.astype(F32) @ a) @ b)


def make_erasers(model_cfg: WanConfig, cfg: EraserConfig, rngs: nnx.Rngs) -> nnx.Module:
  """One eraser per block, stacked along a leading layer axis (scanned with the blocks)."""
  cls = Adapter if cfg.kind == "adapter" else LoRA

  @nnx.split_rngs(splits=model_cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return cls(model_cfg.dim, cfg, rngs)

  return make(rngs)


def attach_erasers(model: WanTransformer, cfg: EraserConfig = EraserConfig(), seed: int = 0) -> WanTransformer:
  """Attach fresh erasers to `model` in place (replacing any) and return it."""
  model.erasers = make_erasers(model.config, cfg, nnx.Rngs(seed))
  model.eraser_config = cfg
  return model


def merge_lora(model: WanTransformer) -> WanTransformer:
  """Fold LoRA erasers into the cross-attention weights (kernel += scale·A·B) and drop them."""
  if model.erasers is None or model.erasers.kind != "lora":
    raise ValueError("merge_lora needs LoRA erasers attached")
  lora = model.erasers
  for name, attr in LORA_TARGETS.items():
    layer = getattr(model.blocks.attn2, attr)
    delta = lora.scale * jnp.einsum("lir,lro->lio", getattr(lora, f"{name}_a")[...], getattr(lora, f"{name}_b")[...])
    layer.kernel[...] = (layer.kernel[...].astype(F32) + delta).astype(layer.kernel.dtype)
  model.erasers = None
  return model
