"""The Wan2.1 transformer weight table: our NNX path ↔ diffusers key ↔ original Wan-AI key.

Everything that converts Wan transformer weights in either direction reads this one table.
Block entries hold `{i}` for the layer index; their NNX parameter carries a leading layer axis.
"""
from __future__ import annotations

from typing import NamedTuple

from convert.streaming import CONV3D, IDENTITY, LINEAR, Param, Transform
from t2vu_jax.models.wan import WanConfig

COMFYUI_PREFIX = "model.diffusion_model."


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
