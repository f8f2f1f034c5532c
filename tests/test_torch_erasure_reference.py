"""Checks of the PyTorch erasure-objective reference against facts that need no JAX."""
import numpy as np
import pytest
import torch

from builders import DEEP, TINY, build_diffusers_transformer
from torch_erasure import (TorchErasers, cross_attention_probs, erasure_objective, localization_mask,
                           record_concept_attention, velocity)

HYPER = dict(eta=2.0, lambda_loc=0.5, lambda_pre=0.7, threshold=0.1)


@pytest.fixture(scope="module")
def tiny():
  return build_diffusers_transformer(TINY, 0)


def make_batch(config, batch=2, frames=2, height=4, width=6, text_len=7, seed=0, dtype=torch.float32):
  g = torch.Generator().manual_seed(seed)
  c, d = config["in_channels"], config["text_dim"]

  def rand(*shape):
    return torch.randn(*shape, generator=g, dtype=dtype)
  mask = torch.zeros(batch, text_len, dtype=dtype)
  mask[0, 1:3] = 1
  mask[1:, 3] = 1
  return dict(x_t=rand(batch, c, frames, height, width), t=torch.tensor([500.0, 250.0][:batch], dtype=dtype),
              sigma=torch.tensor([0.5, 0.25][:batch], dtype=dtype), cond=rand(batch, text_len, d),
              uncond=rand(batch, text_len, d), concept_mask=mask, x_pre=rand(batch, c, frames, height, width),
              t_pre=torch.tensor([700.0, 100.0][:batch], dtype=dtype), cond_pre=rand(batch, text_len, d))


def random_params(erasers, seed=0, scale=0.3, zero=()):
  rng = np.random.default_rng(seed)
  return {k: (np.zeros(s) if k in zero else scale * rng.standard_normal(s)).astype(np.float32)
          for k, s in erasers.param_shapes().items()}


@pytest.fixture
def attach():
  made = []

  def make(model, **kw):
    e = TorchErasers(model, **kw)
    made.append(e)
    return e
  yield make
  for e in made:
    e.remove()


@pytest.mark.parametrize("kind,placement,zero", [("adapter", "cross_attn", ("up_w", "up_b")),
                                                 ("adapter", "self_attn", ("up_w", "up_b")),
                                                 ("lora", "cross_attn", ("lora_q_b", "lora_k_b", "lora_v_b",
                                                                         "lora_out_b"))])
def test_zero_erasers_are_identity(tiny, attach, kind, placement, zero):
  """With up = 0 (or every LoRA B = 0): v_on == v_cond bitwise, L_loc = 0, L_pre = 0, L_u = MSE(v_cond, target)."""
  e = attach(tiny, kind=kind, placement=placement, rank=3, alpha=6.0)
  e.set_params(random_params(e, zero=zero))
  before = {k: v.clone() for k, v in tiny.state_dict().items()}
  batch = make_batch(TINY)
  out = erasure_objective(tiny, e, batch, **HYPER)
  np.testing.assert_array_equal(out["v_on"], out["v_cond"])
  assert out["l_loc"] == 0.0 and out["l_pre"] == 0.0
  np.testing.assert_allclose(out["l_u"], np.mean((out["v_cond"] - out["target"]) ** 2), rtol=1e-6)
  assert all(not p.requires_grad and p.grad is None for p in tiny.parameters())
  assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
  with e.off():
    plain = velocity(tiny, batch["x_t"], batch["cond"], batch["t"])
  np.testing.assert_array_equal(plain.detach().numpy(), out["v_cond"])


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_eta_zero_and_loss_assembly(tiny, attach, kind):
  """eta = 0 gives target = v_anchor (here v_uncond); every loss term matches its formula evaluated on the
  returned arrays."""
  e = attach(tiny, kind=kind, rank=3, alpha=6.0)
  e.set_params(random_params(e, seed=1))
  batch = make_batch(TINY)
  for sigma_weighting in (False, True):
    out = erasure_objective(tiny, e, batch, **dict(HYPER, eta=0.0), sigma_weighting=sigma_weighting)
    np.testing.assert_array_equal(out["target"], out["v_anchor"])
    w = batch["sigma"].numpy()[:, None, None, None, None] ** 2 if sigma_weighting else 1.0
    np.testing.assert_allclose(out["l_u"], np.mean(w * (out["v_on"] - out["v_anchor"]) ** 2), rtol=1e-5)
    keep = 1.0 - out["masks"]
    per_layer = ((out["eraser_outputs"] ** 2).mean(-1) * keep).sum(-1) / (keep.sum(-1) + 1e-9)
    np.testing.assert_allclose(out["l_loc"], per_layer.mean(), rtol=1e-5)
    assert out["l_loc"] > 0 and out["l_pre"] > 0
    np.testing.assert_allclose(out["loss"], out["l_u"] + 0.5 * out["l_loc"] + 0.7 * out["l_pre"], rtol=1e-6)
  no_pre = {k: v for k, v in batch.items() if not k.endswith("_pre")}
  out = erasure_objective(tiny, e, no_pre, **HYPER)
  assert out["l_pre"] == 0.0 and all(np.isfinite(g).all() for g in out["grads"].values())


def test_mask_is_min_max_normalised_per_frame():
  """Each latent frame is normalised over its own (h, w) tokens; a constant frame masks nothing."""
  base = torch.tensor([0.0, 0.5, 0.9, 1.1, 5.0, 10.0], dtype=torch.float64)
  a = torch.cat([base, 100 + 1000 * base.flip(0), torch.full((6,), 3.0, dtype=torch.float64)])[None]
  m = localization_mask(a, (3, 2, 3), threshold=0.1)
  expected = [0, 0, 0, 1, 1, 1] + [1, 1, 1, 0, 0, 0] + [0] * 6
  np.testing.assert_array_equal(m.numpy(), [expected])
  np.testing.assert_array_equal(localization_mask(a, (3, 2, 3), threshold=0.6).numpy()[0, :6], [0] * 5 + [1])
  # One frame over all six tokens differs from the frame-wise result above (frame 1 dwarfs frame 0).
  assert localization_mask(a[:, :12], (1, 3, 4)).numpy()[0, :6].sum() == 0


def test_recorded_probabilities_reproduce_diffusers_cross_attention():
  """P @ V, heads merged, through to_out, equals diffusers' attn2 output; A_l = head-mean P summed over the span."""
  model = build_diffusers_transformer(DEEP, 3)
  batch = make_batch(DEEP, frames=4, height=4, width=4, text_len=5, seed=2)
  seen, handles = {}, []
  for layer, block in enumerate(model.blocks):
    def hook(module, args, out, layer=layer):
      seen[layer] = (args[0], args[1], out)
    handles.append(block.attn2.register_forward_hook(hook))
  try:
    with torch.no_grad(), record_concept_attention(model, batch["concept_mask"]) as maps:
      velocity(model, batch["x_t"], batch["cond"], batch["t"])
  finally:
    for h in handles:
      h.remove()
  assert sorted(maps) == sorted(seen) == list(range(DEEP["num_layers"]))
  for layer, block in enumerate(model.blocks):
    attn = block.attn2
    hidden, text, out = seen[layer]
    p = cross_attention_probs(attn, hidden, text)
    assert p.shape == (2, attn.heads, hidden.shape[1], text.shape[1])
    v = attn.to_v(text).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    rebuilt = attn.to_out[0]((p @ v).transpose(1, 2).flatten(2))
    np.testing.assert_allclose(rebuilt.detach().numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    expected = (p.mean(1) * batch["concept_mask"][:, None, :]).sum(-1)
    np.testing.assert_allclose(maps[layer].numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_lora_equals_merged_weights(tiny, attach):
  """LoRA hooks compute exactly what merging W + (alpha / r) (A B)^T into attn2's projections computes."""
  e = attach(tiny, kind="lora", rank=3, alpha=6.0)
  params = random_params(e, seed=4)
  e.set_params(params)
  batch = make_batch(TINY)
  with torch.no_grad():
    hooked = velocity(tiny, batch["x_t"], batch["cond"], batch["t"])
    merged = build_diffusers_transformer(TINY, 0)
    for layer, block in enumerate(merged.blocks):
      for target, lin in (("q", block.attn2.to_q), ("k", block.attn2.to_k), ("v", block.attn2.to_v),
                          ("out", block.attn2.to_out[0])):
        delta = params[f"lora_{target}_a"][layer] @ params[f"lora_{target}_b"][layer]
        lin.weight += 2.0 * torch.from_numpy(delta).T
    np.testing.assert_allclose(velocity(merged, batch["x_t"], batch["cond"], batch["t"]).numpy(),
                               hooked.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,placement", [("adapter", "cross_attn"), ("adapter", "self_attn"),
                                            ("lora", "cross_attn")])
def test_gradients_match_finite_differences(attach, kind, placement):
  """Directional derivative of the loss along a random direction in every eraser parameter, float64."""
  model = build_diffusers_transformer(TINY, 0).double()
  e = attach(model, kind=kind, placement=placement, rank=3, alpha=6.0).double()
  p0 = {k: v.astype(np.float64) for k, v in random_params(e, seed=5).items()}
  e.set_params(p0)
  batch = make_batch(TINY, dtype=torch.float64)
  hyper = dict(HYPER, sigma_weighting=True)
  grads = erasure_objective(model, e, batch, **hyper)["grads"]
  rng = np.random.default_rng(6)
  direction = {k: rng.standard_normal(v.shape) for k, v in p0.items()}
  analytic = sum((grads[k] * direction[k]).sum() for k in p0)

  def loss_at(step):
    e.set_params({k: p0[k] + step * direction[k] for k in p0})
    return erasure_objective(model, e, batch, **hyper)["loss"]
  # Five-point stencil: diffusers rounds norms and residual adds to float32, so the step is kept moderate.
  h = 3e-3
  numeric = (-loss_at(2 * h) + 8 * loss_at(h) - 8 * loss_at(-h) + loss_at(-2 * h)) / (12 * h)
  np.testing.assert_allclose(numeric, analytic, rtol=1e-4)
  assert all(np.abs(g).max() > 0 for g in grads.values())
