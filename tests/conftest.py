"""Shared fixtures: tiny Wan transformers built locally with diffusers (random weights), saved in
the real on-disk layout, so every test goes through our real loaders."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# diffusers' own tiny test configuration of WanTransformer3DModel.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# Wider heads, in != out channels, three layers.
WIDE = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32, in_channels=6,
            out_channels=3, text_dim=40, freq_dim=64, ffn_dim=112, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# Many narrow heads, a temporal patch, no cross-attention norm, four layers.
DEEP = dict(patch_size=(2, 2, 2), num_attention_heads=4, attention_head_dim=20, in_channels=5,
            out_channels=7, text_dim=24, freq_dim=32, ffn_dim=48, num_layers=4, cross_attn_norm=False,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# Real Wan heads are 128 wide, which lets a checkpoint without config.json be understood.
HEAD128 = dict(TINY, num_attention_heads=2, attention_head_dim=128, text_dim=32, freq_dim=32)
CONFIGS = {"tiny": TINY, "wide": WIDE, "deep": DEEP}


def build_diffusers_transformer(config: dict, seed: int = 0):
  """A random diffusers WanTransformer3DModel (eval mode) of `config`."""
  import torch
  from diffusers import WanTransformer3DModel
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**config).eval()
  with torch.no_grad():  # random biases and norm weights too, so no tensor is trivially 0 or 1
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


@pytest.fixture
def save_diffusers_transformer(tmp_path):
  """save(config, dtype=torch.float32, name="transformer", **save_kwargs) -> (torch model, directory)."""
  import torch

  def save(config=TINY, dtype=torch.float32, name="transformer", seed=0, **save_kwargs):
    model = build_diffusers_transformer(config, seed).to(dtype)
    path = tmp_path / name
    model.save_pretrained(path, **save_kwargs)
    return model, path
  return save
