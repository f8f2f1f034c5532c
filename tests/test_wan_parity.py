"""Numerical parity of our NNX Wan transformer with diffusers' WanTransformer3DModel (fp32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import t2vu_jax
from builders import CONFIGS
from t2vu_jax.models.wan import rope_tables

# (batch, frames, height, width, text length, timestep dtype): non-square, odd frame counts,
# text shorter and longer than usual, int and float timesteps.
CASES = [(2, 3, 6, 10, 7, "int"), (1, 5, 8, 4, 20, "float"), (2, 1, 10, 6, 512, "float")]


def _inputs(config, batch, frames, height, width, text_len, t_kind, seed=1):
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(batch, config["in_channels"], frames, height, width, generator=g)
  ctx = torch.randn(batch, text_len, config["text_dim"], generator=g)
  t = torch.tensor([999, 17][:batch]) if t_kind == "int" else torch.tensor([731.25, 2.5][:batch])
  return x, t, ctx


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_model_matches_diffusers(name, save_diffusers_transformer):
  config = CONFIGS[name]
  torch_model, path = save_diffusers_transformer(config)
  model = t2vu_jax.load_transformer(path, dtype="float32", progress=False)
  # One latent frame cannot be patched by a temporal patch of 2.
  cases = CASES if config["patch_size"][0] == 1 else CASES[:2]
  for case in cases:
    x, t, ctx = _inputs(config, *case)
    with torch.no_grad():
      ref = torch_model(x, t, ctx, return_dict=False)[0].numpy()
    out = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 2e-5, (name, case, np.abs(out - ref).max())

    model.scan_layers = False
    unscanned = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()))
    model.scan_layers = True
    assert np.abs(unscanned - out).max() <= 1e-6


@pytest.mark.parametrize("name", ["tiny", "deep"])
def test_per_token_timesteps_match_diffusers(name, save_diffusers_transformer):
  """Wan2.2 TI2V passes a timestep per video token, (B, tokens): the modulation is then per token."""
  config = CONFIGS[name]
  torch_model, path = save_diffusers_transformer(config)
  model = t2vu_jax.load_transformer(path, dtype="float32", progress=False)
  x, _, ctx = _inputs(config, 2, 4, 6, 8, 9, "float")
  pt, ph, pw = config["patch_size"]
  tokens = (4 // pt) * (6 // ph) * (8 // pw)
  t = torch.linspace(0.0, 999.0, 2 * tokens).reshape(2, tokens)  # a different timestep at every token
  with torch.no_grad():
    ref = torch_model(x, t, ctx, return_dict=False)[0].numpy()
  out = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()))
  assert np.abs(out - ref).max() <= 2e-5, np.abs(out - ref).max()
  # The same timestep at every token is the (B,) model; one row broadcasts over the batch.
  same = np.asarray(model(x.numpy(), np.full((2, tokens), 731.25, np.float32), ctx.numpy()))
  np.testing.assert_allclose(same, np.asarray(model(x.numpy(), np.array([731.25, 731.25]), ctx.numpy())),
                             rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(model(x.numpy(), t.numpy()[:1], ctx.numpy()))[0], out[0])
  with pytest.raises(ValueError, match=r"per-token timesteps must be \(batch, tokens\)"):
    model(x.numpy(), t.numpy()[:, 1:], ctx.numpy())
  with pytest.raises(ValueError, match="timestep must be a scalar"):
    model(x.numpy(), t.numpy()[..., None], ctx.numpy())


def test_one_block_matches_diffusers(save_diffusers_transformer):
  config = CONFIGS["wide"]
  torch_model, path = save_diffusers_transformer(config)
  model = t2vu_jax.load_transformer(path, dtype="float32", progress=False)
  f, h, w = 3, 4, 5
  dim = config["num_attention_heads"] * config["attention_head_dim"]
  g = torch.Generator().manual_seed(3)
  hidden = torch.randn(2, f * h * w, dim, generator=g)
  context = torch.randn(2, 9, dim, generator=g)
  temb_proj = 0.1 * torch.randn(2, 6, dim, generator=g)  # modulation at the scale of a real model
  rope = torch_model.rope(torch.zeros(1, 1, f, h * 2, w * 2))

  graphdef, state = nnx.split(model.blocks)
  for layer in range(config["num_layers"]):
    with torch.no_grad():
      ref = torch_model.blocks[layer](hidden, context, temb_proj, rope).numpy()
    block = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], state))
    out, _ = block(jnp.asarray(hidden.numpy()), jnp.asarray(context.numpy()), jnp.asarray(temb_proj.numpy())[:, None],
                rope_tables(model.config, f, h, w))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-6, (np.abs(np.asarray(out) - ref).max(), np.abs(ref).max())


def test_rope_tables_match_diffusers():
  from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
  from t2vu_jax.models.wan import WanConfig
  cfg = WanConfig()  # head_dim 128 -> 44/42/42
  cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024)(torch.zeros(1, 16, 3, 8, 12))
  ours_cos, ours_sin = rope_tables(cfg, 3, 4, 6)
  np.testing.assert_array_equal(np.asarray(ours_cos), cos[0, :, 0, 0::2].numpy())
  np.testing.assert_array_equal(np.asarray(ours_sin), sin[0, :, 0, 1::2].numpy())


def test_remat_policies_give_the_same_output(save_diffusers_transformer):
  _, path = save_diffusers_transformer(CONFIGS["tiny"])
  x, t, ctx = (a.numpy() for a in _inputs(CONFIGS["tiny"], *CASES[0]))
  ref = t2vu_jax.load_transformer(path, progress=False)(x, t, ctx)
  for policy in ("full", "dots"):
    model = t2vu_jax.load_transformer(path, progress=False, remat=policy)
    np.testing.assert_allclose(np.asarray(model(x, t, ctx)), np.asarray(ref), atol=1e-6)
  with pytest.raises(ValueError, match="unknown remat policy 'fast'"):
    t2vu_jax.load_transformer(path, progress=False, remat="fast")


def test_bfloat16_policy_keeps_norms_and_modulation_fp32(save_diffusers_transformer):
  torch_model, path = save_diffusers_transformer(CONFIGS["tiny"])
  model = t2vu_jax.load_transformer(path, dtype="bfloat16", progress=False)
  dtypes = {".".join(map(str, p)): v[...].dtype for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for name, dtype in dtypes.items():
    keep_fp32 = "norm" in name or "scale_shift_table" in name or name.startswith("condition_embedder")
    assert dtype == (jnp.float32 if keep_fp32 else jnp.bfloat16), name
  x, t, ctx = _inputs(CONFIGS["tiny"], *CASES[0])
  with torch.no_grad():
    ref = torch_model(x, t, ctx, return_dict=False)[0].numpy()
  out = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()), np.float32)
  assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
