"""Shared fixtures: tiny Wan models from `builders` saved in the real on-disk layout, so every test goes
through our real loaders; parity runs at the highest matmul precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

from builders import TINY, build_diffusers_transformer, build_wan_pipeline

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def wan_pipeline_dir(tmp_path):
  """save(scheduler="unipc", shift=3.0) -> (diffusers WanPipeline, directory it was saved to)."""

  def save(scheduler="unipc", shift=3.0, seed=0, name="pipeline", boundary_ratio=None, ti2v=False):
    pipe = build_wan_pipeline(scheduler, shift, seed, boundary_ratio, ti2v)
    pipe.save_pretrained(tmp_path / name)
    return pipe, tmp_path / name
  return save


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
