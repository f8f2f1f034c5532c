"""The erasure objective against an independent PyTorch reference, and its defining properties."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import t2vu_jax
from builders import TINY, WIDE
from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig, erasure_loss, localization_masks
from t2vu_jax.models.erasers import EraserConfig, EraserParam, attach_erasers
from torch_erasure import TorchErasers, erasure_objective

ERASERS = [("adapter", "cross_attn"), ("adapter", "self_attn"), ("lora", "cross_attn")]
OURS_NAME = {"lora_q_a": "q_a", "lora_q_b": "q_b", "lora_k_a": "k_a", "lora_k_b": "k_b", "lora_v_a": "v_a",
             "lora_v_b": "v_b", "lora_out_a": "out_a", "lora_out_b": "out_b"}


def make_batch(config, batch=2, text_len=12, seed=0, preserve=True):
  g = torch.Generator().manual_seed(seed)
  c, dim = config["in_channels"], config["text_dim"]
  x = lambda *shape: torch.randn(*shape, generator=g)
  concept = torch.zeros(batch, text_len)
  concept[0, 2:4] = 1
  concept[1 % batch, 5:6] = 1
  out = dict(x_t=x(batch, c, 3, 4, 6), t=torch.tensor([700.0, 130.0][:batch]), sigma=torch.tensor([0.7, 0.13][:batch]),
             cond=x(batch, text_len, dim), uncond=x(batch, text_len, dim), concept_mask=concept)
  if preserve:
    out.update(x_pre=x(batch, c, 3, 4, 6), t_pre=torch.tensor([400.0, 900.0][:batch]), cond_pre=x(batch, text_len, dim))
  return out


def eraser_values(erasers: TorchErasers, seed=1):
  """Non-trivial eraser weights (the zero-initialised halves too), shared by both implementations."""
  rng = np.random.default_rng(seed)
  return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in erasers.param_shapes().items()}


def ours_with(path, kind, placement, rank, values):
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  attach_erasers(model, EraserConfig(kind, placement, rank))
  for name, value in values.items():
    getattr(model.erasers, OURS_NAME.get(name, name))[...] = jnp.asarray(value)
  return model


# Every eraser kind, placement, model config and σ weighting in the default run; the other pairings with -m slow.
REFERENCE_CASES = [pytest.param(*case, marks=[pytest.mark.slow] if slow else [])
                   for *case, slow in [("adapter", "cross_attn", "tiny", False, False),
                                       ("lora", "cross_attn", "wide", True, False),
                                       ("adapter", "self_attn", "wide", True, False),
                                       ("lora", "cross_attn", "tiny", False, True),
                                       ("adapter", "self_attn", "tiny", False, True),
                                       ("adapter", "cross_attn", "wide", True, True)]]


@pytest.mark.parametrize("kind,placement,config_name,sigma_weighting", REFERENCE_CASES)
def test_losses_and_gradients_match_the_torch_reference(save_diffusers_transformer, kind, placement,
                                                        config_name, sigma_weighting):
  config = {"tiny": TINY, "wide": WIDE}[config_name]
  torch_model, path = save_diffusers_transformer(config)
  erasers = TorchErasers(torch_model, kind, placement, rank=4)
  values = eraser_values(erasers)
  erasers.set_params({k: v.copy() for k, v in values.items()})
  hyper = dict(eta=1.5, lambda_loc=0.7, lambda_pre=0.3, threshold=0.1, sigma_weighting=sigma_weighting)
  batch = make_batch(config)
  ref = erasure_objective(torch_model, erasers, batch, **hyper)

  model = ours_with(path, kind, placement, 4, values)
  ours_batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in batch.items()})
  cfg = ObjectiveConfig(**hyper)

  def loss_fn(model):
    return erasure_loss(model, ours_batch, cfg)
  (loss, metrics), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, EraserParam), has_aux=True)(model)

  np.testing.assert_array_equal(np.asarray(localization_masks(
      jnp.asarray(ref["attn_concept"]), (3, 2, 3), 0.1)), ref["masks"])
  for name in ("loss", "l_u", "l_loc", "l_pre"):
    np.testing.assert_allclose(float(metrics[name]), ref[name], rtol=1e-4, err_msg=name)
  assert ref["l_loc"] > 0 and ref["l_pre"] > 0 and 0 < ref["masks"].mean() < 1  # every term is exercised
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(grads)}
  for name, expected in ref["grads"].items():
    got = np.asarray(flat[f"erasers/{OURS_NAME.get(name, name)}"][...])
    scale = np.abs(expected).max()
    assert scale > 0, name
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_eta_zero_targets_the_unconditional_velocity(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY)
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  attach_erasers(model, EraserConfig(rank=4))
  batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in make_batch(TINY, preserve=False).items()})
  _, metrics = erasure_loss(model, batch, ObjectiveConfig(eta=0.0, lambda_loc=0.0))
  v_on = model(batch.x_t, batch.t, batch.cond)
  v_uncond = model(batch.x_t, batch.t, batch.uncond, erasers=False)
  np.testing.assert_allclose(float(metrics["l_u"]), float(jnp.mean((v_on - v_uncond) ** 2)), rtol=1e-6)


@pytest.mark.parametrize("kind,placement", ERASERS)
def test_fresh_erasers_change_nothing(save_diffusers_transformer, kind, placement):
  _, path = save_diffusers_transformer(TINY)
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  base = model(*[jnp.asarray(v.numpy()) for v in (make_batch(TINY)["x_t"],)], jnp.array([500, 20]),
               jnp.asarray(make_batch(TINY)["cond"].numpy()))
  attach_erasers(model, EraserConfig(kind, placement, rank=4))
  batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in make_batch(TINY).items()})
  on = model(batch.x_t, jnp.array([500, 20]), batch.cond)
  np.testing.assert_array_equal(np.asarray(on), np.asarray(base))
  _, metrics = erasure_loss(model, batch, ObjectiveConfig())
  # The kept velocity comes from the erasers-off batch, the erased one from the erasers-on batch: their
  # batches differ in size, so the two agree to float rounding (a changed velocity gives l_pre >> 1e-12).
  assert float(metrics["l_pre"]) <= 1e-12 and float(metrics["l_loc"]) == 0.0


def test_all_ones_mask_gives_zero_localization_loss(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY)
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  attach_erasers(model, EraserConfig(rank=4))
  model.erasers.up_w[...] = jnp.ones_like(model.erasers.up_w[...])
  batch = make_batch(TINY)
  x, t, cond = (jnp.asarray(batch[k].numpy()) for k in ("x_t", "t", "cond"))
  _, aux = model(x, t, cond, loc_masks=jnp.ones((2, 2, 18)), return_aux=True)
  np.testing.assert_array_equal(np.asarray(aux.localization), 0.0)
  _, aux = model(x, t, cond, loc_masks=jnp.zeros((2, 2, 18)), return_aux=True)
  assert (np.asarray(aux.localization) > 0).all()


def test_masks_are_per_layer_per_frame_min_max_normalised():
  rng = np.random.default_rng(0)
  attention = rng.random((3, 2, 2 * 3 * 4)).astype(np.float32)  # (layers, batch, frames*h*w)
  attention[1, 0, :12] = 0.5                                     # a constant frame
  masks = np.asarray(localization_masks(jnp.asarray(attention), (2, 3, 4), 0.3))
  frames = attention.reshape(3, 2, 2, 12)
  norm = (frames - frames.min(-1, keepdims=True)) / (np.ptp(frames, -1, keepdims=True) + 1e-8)
  np.testing.assert_array_equal(masks, (norm > 0.3).reshape(3, 2, 24).astype(np.float32))
  assert masks[1, 0, :12].sum() == 0
  # Each frame keeps its own maximum, even a frame of uniformly small attention.
  attention[0, 0, 12:] *= 1e-3
  masks = np.asarray(localization_masks(jnp.asarray(attention), (2, 3, 4), 0.3))
  assert masks[0, 0, 12:].sum() > 0


def test_prompt_anchor_matches_the_torch_reference(save_diffusers_transformer):
  """With anchor embeddings the target is v_a − η(v_c − v_a): loss and gradients match the reference,
  and differ from the empty-prompt target (the anchor is really used)."""
  torch_model, path = save_diffusers_transformer(TINY)
  erasers = TorchErasers(torch_model, "adapter", "cross_attn", rank=4)
  values = eraser_values(erasers)
  erasers.set_params({k: v.copy() for k, v in values.items()})
  hyper = dict(eta=1.5, lambda_loc=0.7, lambda_pre=0.3, threshold=0.1)
  batch = make_batch(TINY)
  batch["anchor"] = torch.randn(*batch["cond"].shape, generator=torch.Generator().manual_seed(7))
  ref = erasure_objective(torch_model, erasers, batch, **hyper)

  model = ours_with(path, "adapter", "cross_attn", 4, values)
  ours_batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in batch.items()})
  (loss, metrics), grads = nnx.value_and_grad(
      lambda m: erasure_loss(m, ours_batch, ObjectiveConfig(**hyper, anchor="prompt")),
      argnums=nnx.DiffState(0, EraserParam), has_aux=True)(model)
  for name in ("loss", "l_u", "l_loc", "l_pre"):
    np.testing.assert_allclose(float(metrics[name]), ref[name], rtol=1e-4, err_msg=name)
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(grads)}
  for name, expected in ref["grads"].items():
    np.testing.assert_allclose(np.asarray(flat[f"erasers/{name}"][...]), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max(), err_msg=name)
  _, empty = erasure_loss(model, ours_batch._replace(anchor=None), ObjectiveConfig(**hyper))
  assert abs(float(empty["l_u"]) - ref["l_u"]) > 1e-3 * ref["l_u"]


def test_guidance_below_sigma_min_lands_on_the_anchor(save_diffusers_transformer):
  """With guidance_sigma_min between the batch's two sigmas (0.7, 0.13) the low-noise point's target is
  v_a and the high-noise one keeps its negative guidance: loss and gradients match the reference."""
  torch_model, path = save_diffusers_transformer(TINY)
  erasers = TorchErasers(torch_model, "adapter", "cross_attn", rank=4)
  values = eraser_values(erasers)
  erasers.set_params({k: v.copy() for k, v in values.items()})
  hyper = dict(eta=1.5, lambda_loc=0.0, lambda_pre=0.0, threshold=0.1)
  batch = make_batch(TINY, preserve=False)
  ref = erasure_objective(torch_model, erasers, batch, **hyper, guidance_sigma_min=0.5)
  model = ours_with(path, "adapter", "cross_attn", 4, values)
  ours_batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in batch.items()})
  cfg = ObjectiveConfig(**hyper, guidance_sigma_min=0.5)
  (_, metrics), grads = nnx.value_and_grad(lambda m: erasure_loss(m, ours_batch, cfg),
                                           argnums=nnx.DiffState(0, EraserParam), has_aux=True)(model)
  np.testing.assert_allclose(float(metrics["l_u"]), ref["l_u"], rtol=1e-4)
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(grads)}
  for name, expected in ref["grads"].items():
    np.testing.assert_allclose(np.asarray(flat[f"erasers/{name}"][...]), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max(), err_msg=name)
  # Per point: the low-noise one matches v_a alone, the high-noise one the guided target.
  v_on = model(ours_batch.x_t, ours_batch.t, ours_batch.cond)
  v_a = model(ours_batch.x_t, ours_batch.t, ours_batch.uncond, erasers=False)
  v_c = model(ours_batch.x_t, ours_batch.t, ours_batch.cond, erasers=False)
  per_point = [jnp.mean((v_on[0] - (v_a[0] - 1.5 * (v_c[0] - v_a[0]))) ** 2), jnp.mean((v_on[1] - v_a[1]) ** 2)]
  np.testing.assert_allclose(float(metrics["l_u"]), float(np.mean(per_point)), rtol=1e-5)
  with pytest.raises(ValueError, match="guidance_sigma_min must be in"):
    ObjectiveConfig(guidance_sigma_min=1.5)
  with pytest.raises(ValueError, match="needs the training points' sigma"):
    erasure_loss(model, ours_batch._replace(sigma=None), cfg)


def test_anchor_setting_and_batch_must_agree(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY)
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  attach_erasers(model, EraserConfig(rank=4))
  batch = ErasureBatch(**{k: jnp.asarray(v.numpy()) for k, v in make_batch(TINY).items()})
  with pytest.raises(ValueError, match="needs a batch with anchor embeddings"):
    erasure_loss(model, batch, ObjectiveConfig(anchor="prompt"))
  with pytest.raises(ValueError, match="needs a batch without anchor embeddings"):
    erasure_loss(model, batch._replace(anchor=batch.cond), ObjectiveConfig())
  with pytest.raises(ValueError, match="anchor 'concept' is unknown"):
    ObjectiveConfig(anchor="concept")
