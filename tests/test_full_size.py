"""Full-size Wan2.1 architectures: the key table against diffusers, and a real 1.3B conversion."""
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

import t2vu_jax
from t2vu_jax.models import wan_params
from t2vu_jax.models.wan_params import abstract_transformer
from flax import nnx
from t2vu_jax.models.wan import WanConfig


def diffusers_config(cfg: WanConfig) -> dict:
  d = cfg.to_dict()
  return {k: v for k, v in d.items() if k not in ("pos_embed_seq_len",)}


@pytest.mark.parametrize("cfg,count", [(WanConfig.wan_1_3b(), 825), (WanConfig.wan_14b(), 1095)])
def test_key_table_covers_the_full_size_diffusers_model(cfg, count):
  with torch.device("meta"):
    reference = WanTransformer3DModel(**diffusers_config(cfg)).state_dict()
  flat = dict(nnx.to_flat_state(nnx.state(abstract_transformer(cfg, "bfloat16"))))
  ours = {}
  for p in (e.param("diffusers") for e in wan_params.key_table(cfg)):
    ours.update({k: p.torch_shape(flat[p.path].shape) for k in p.torch_keys(cfg.num_layers)})
  assert len(ours) == len(reference) == wan_params.num_tensors(cfg) == count
  assert {k: tuple(v.shape) for k, v in reference.items()} == ours


@pytest.mark.slow
def test_wan_1_3b_random_checkpoint_converts_and_matches_diffusers(tmp_path):
  torch.manual_seed(0)
  torch_model = WanTransformer3DModel(**diffusers_config(WanConfig.wan_1_3b())).eval().to(torch.bfloat16)
  torch_model.save_pretrained(tmp_path / "transformer")
  del torch_model
  # The bf16 weights on disk, computed in fp32 (loading rebuilds the fp32 RoPE tables, which a
  # round trip of the module through bf16 would have rounded).
  torch_model = WanTransformer3DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.float32).eval()

  model = t2vu_jax.load_transformer(tmp_path / "transformer", dtype="float32")
  g = torch.Generator().manual_seed(1)
  x, ctx, t = torch.randn(1, 16, 1, 16, 16, generator=g), torch.randn(1, 512, 4096, generator=g), torch.tensor([700])
  with torch.no_grad():
    ref = torch_model(x, t, ctx, return_dict=False)[0].numpy()
  out = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()))
  err = np.abs(out - ref).max()
  assert err <= 2e-5, (err, np.abs(ref).max())
