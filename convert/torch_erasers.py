"""Erasers for a stock diffusers `WanTransformer3DModel`, in plain PyTorch (no JAX needed).

    from convert.torch_erasers import load_erasers
    erasers = load_erasers("export/erasers")   # a directory written by convert.export_erasers
    erasers.attach(pipe.transformer)           # forward hooks; the transformer's weights are untouched
    ...
    erasers.detach()

The directory format (`eraser_config.json` + `erasers.safetensors`) is described in
`t2vu_jax/io/eraser_format.py` (standard library and numpy only: importing it needs no JAX).

What they compute, on block i (eraser math in fp32, the result cast back to the transformer dtype):
- adapter: the output h of `attn2` (placement "cross_attn") or of `attn1` ("self_attn", before
  its gate) becomes h + o(h), o(h) = up(gelu_exact(down(h))).
- lora: `attn2.to_q/to_k/to_v/to_out[0]` compute linear(x) + (alpha / r) lora_B(lora_A(x)).
"""
from __future__ import annotations

import json
import os

import safetensors.torch
import torch
import torch.nn.functional as F

from t2vu_jax.io import eraser_format as fmt
from t2vu_jax.io.atomic import atomic_directory
from t2vu_jax.io.eraser_format import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, tensor_shapes

LORA_TARGETS = tuple(fmt.LORA_TARGETS.values())  # the attn2 projections LoRA erasers adapt


class _Adapter(torch.nn.Module):

  def __init__(self, dim, rank, device=None):
    super().__init__()
    self.down = torch.nn.Linear(dim, rank, device=device)
    self.up = torch.nn.Linear(rank, dim, device=device)

  def forward(self, h):
    z = F.gelu(F.linear(h, self.down.weight.float(), self.down.bias.float()), approximate="none")
    return F.linear(z, self.up.weight.float(), self.up.bias.float())


class _LoRA(torch.nn.Module):

  def __init__(self, dim, rank, device=None):
    super().__init__()
    self.lora_A = torch.nn.Linear(dim, rank, bias=False, device=device)
    self.lora_B = torch.nn.Linear(rank, dim, bias=False, device=device)

  def forward(self, x):
    return F.linear(F.linear(x, self.lora_A.weight.float()), self.lora_B.weight.float())


class TorchWanErasers(torch.nn.Module):
  """One eraser per block of a diffusers `WanTransformer3DModel`; fp32 whatever the transformer's dtype."""

  def __init__(self, kind="adapter", placement="cross_attn", rank=128, alpha=None, num_layers=30, dim=1536,
               device=None):
    super().__init__()
    fmt.check_config(fmt.config_dict(kind, placement, rank, alpha, num_layers, dim), "eraser config")
    self.kind, self.placement, self.rank, self.alpha = kind, placement, rank, alpha
    self.num_layers, self.dim = num_layers, dim
    self.scale = (rank if alpha is None else alpha) / rank
    if kind == "adapter":
      self.blocks = torch.nn.ModuleList(_Adapter(dim, rank, device) for _ in range(num_layers))
    else:
      self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({p: _LoRA(dim, rank, device) for p in LORA_TARGETS})
                                        for _ in range(num_layers))
    self._handles = []

  def config(self) -> dict:
    """The `eraser_config.json` contents."""
    return fmt.config_dict(self.kind, self.placement, self.rank, self.alpha, self.num_layers, self.dim)

  @property
  def attached(self) -> bool:
    return bool(self._handles)

  def attach(self, transformer) -> "TorchWanErasers":
    """Hook the erasers into `transformer` and move them to its device (place it first); returns self."""
    if self._handles:
      raise RuntimeError("these erasers are already attached; detach() them first")
    cfg = transformer.config
    blocks = list(transformer.blocks)
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    if len(blocks) != self.num_layers or dim != self.dim:
      raise ValueError(f"erasers are for a transformer with num_layers={self.num_layers}, dim={self.dim}; "
                       f"this one has num_layers={len(blocks)}, dim={dim}")
    if any(getattr(b.attn1, "fused_projections", False) or getattr(b.attn2, "fused_projections", False)
           for b in blocks) and self.kind == "lora":
      raise ValueError("LoRA erasers need unfused q/k/v projections; call transformer.unfuse_qkv_projections()")
    self.to(device=next(transformer.parameters()).device, dtype=torch.float32)
    try:
      for block, eraser in zip(blocks, self.blocks):
        if self.kind == "adapter":
          attn = block.attn2 if self.placement == "cross_attn" else block.attn1
          self._handles.append(attn.register_forward_hook(_adapter_hook(eraser)))
        else:
          for p in LORA_TARGETS:
            linear = block.attn2.to_out[0] if p == "to_out" else getattr(block.attn2, p)
            self._handles.append(linear.register_forward_hook(_lora_hook(eraser[p], self.scale)))
    except BaseException:
      self.detach()
      raise
    return self

  def detach(self):
    """Remove every hook: the transformer computes what it did before `attach`."""
    for h in self._handles:
      h.remove()
    self._handles = []

  def save(self, path: str, overwrite: bool = False):
    """Write the eraser directory `path` (`eraser_config.json` + `erasers.safetensors`), atomically."""
    with atomic_directory(os.fspath(path), overwrite) as tmp:
      tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
      safetensors.torch.save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
      with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
        json.dump(self.config(), f, indent=2)


def _adapter_hook(eraser):
  def hook(module, args, out):
    return out + eraser(out.float()).to(out.dtype)
  return hook


def _lora_hook(lora, scale):
  def hook(module, args, out):
    return out + (scale * lora(args[0].float())).to(out.dtype)
  return hook


def load_erasers(path: str, device=None) -> TorchWanErasers:
  """Read an eraser directory (`eraser_config.json` + `erasers.safetensors`), validated."""
  path = os.fspath(path)
  cfg = fmt.read_config(path)
  tensors = {k: torch.from_numpy(v) for k, v in fmt.read_tensors(path, cfg).items()}  # checked, fp32
  erasers = TorchWanErasers(cfg["kind"], cfg["placement"], cfg["rank"], cfg["alpha"], cfg["num_layers"],
                            cfg["dim"], device="meta")
  erasers.load_state_dict(tensors, strict=True, assign=True)
  return erasers.to(device) if device is not None else erasers


__all__ = ["TorchWanErasers", "load_erasers", "tensor_shapes", "FORMAT", "FORMAT_VERSION", "CONFIG_NAME",
           "WEIGHTS_NAME"]
