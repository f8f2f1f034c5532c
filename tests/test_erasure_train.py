"""Erasure training: only erasers learn, the unlearning loss falls, runs are deterministic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import t2vu_jax
from builders import TINY
from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig, erasure_loss
from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step, merge_model
from t2vu_jax.erase.pool import TrajectoryPool, pool_noise_key
from t2vu_jax.erase.trajectory import TrajectoryConfig
from t2vu_jax.models.erasers import EraserConfig, EraserParam, attach_erasers

LATENTS = (1, 4, 3, 4, 6)


@pytest.fixture
def tiny_model(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY)
  return lambda: attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False), EraserConfig(rank=8))


def prompts(seed=0, text_len=12):
  rng = np.random.default_rng(seed)
  cond, uncond, pre = (jnp.asarray(rng.standard_normal((1, text_len, TINY["text_dim"])), jnp.float32)
                       for _ in range(3))
  concept = jnp.zeros((1, text_len)).at[0, 3:5].set(1.0)
  return ErasureBatch(cond=cond, uncond=uncond, concept_mask=concept, cond_pre=pre)


def run(model, steps, seed=0, lr=1e-3, trajectory=TrajectoryConfig(steps=4, guidance=4.0)):
  tx = make_optimizer(OptimConfig(learning_rate=lr, total_steps=steps))
  graphdef, state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, ObjectiveConfig(eta=1.0), trajectory, LATENTS)
  batch, history = prompts(), []
  for i in range(steps):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(seed), i))
    history.append(jax.tree.map(float, metrics))
  return graphdef, state, history


def eval_loss(model, batch):
  return float(erasure_loss(model, batch, ObjectiveConfig(eta=1.0))[1]["l_u"])


def test_thirty_steps_lower_the_unlearning_loss_and_are_deterministic(tiny_model):
  model = tiny_model()
  base_before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  rng = np.random.default_rng(5)
  fixed = prompts()._replace(x_t=jnp.asarray(rng.standard_normal(LATENTS), jnp.float32), t=jnp.array([600]),
                             sigma=jnp.array([0.6]), cond_pre=None)
  before = eval_loss(model, fixed)

  graphdef, state, history = run(model, 30)
  trained = merge_model(graphdef, state)
  after = eval_loss(trained, fixed)
  assert after < 0.7 * before, (before, after)
  assert all(np.isfinite(h["loss"]) and h["grad_norm"] > 0 for h in history)
  assert 0 < history[0]["mask_coverage"] < 1

  # The base model is bit-identical; every eraser tensor moved.
  base_after = jax.tree.map(np.asarray, nnx.state(trained, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, base_after, base_before)
  fresh = nnx.state(tiny_model(), EraserParam)
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), nnx.state(trained, EraserParam),
                       fresh)
  assert all(jax.tree.leaves(moved))

  _, again, _ = run(tiny_model(), 30)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, again.erasers),
               jax.tree.map(np.asarray, state.erasers))


def test_pooled_frozen_trajectories(tiny_model):
  model = tiny_model()
  trajectory = TrajectoryConfig(steps=4, guidance=4.0, model="frozen")
  batch = prompts()
  pool = TrajectoryPool.build(model, trajectory.make_scheduler(), batch.cond, batch.uncond[0], trajectory.guidance,
                              LATENTS[1:], repeats=2, progress=False)
  assert pool.latents.shape == (1, 2, 3, *LATENTS[1:])
  x_t, t, sigma = pool.draw(np.random.default_rng(0), np.array([0]))
  tx = make_optimizer(OptimConfig(learning_rate=1e-3))
  graphdef, state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, ObjectiveConfig())
  state, metrics = step(state, batch._replace(x_t=jnp.asarray(x_t), t=jnp.asarray(t), sigma=jnp.asarray(sigma),
                                              x_pre=jnp.asarray(x_t), t_pre=jnp.asarray(t)), jax.random.key(0))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
  # Pool trajectories are the frozen model's: step k of the pool equals sampling k + 1 steps directly.
  from t2vu_jax.pipeline import sample
  direct = sample(model, trajectory.make_scheduler(), jax.random.normal(pool_noise_key(0, 0, 0), LATENTS[1:])[None],
                  batch.cond, batch.uncond, trajectory.guidance, steps=2, erasers=False)
  np.testing.assert_allclose(pool.latents[0, 0, 1], np.asarray(direct[0]), atol=1e-5)


def test_bad_erasure_settings():
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    EraserConfig(rank=0)
  with pytest.raises(ValueError, match="placement 'ffn' is unknown"):
    EraserConfig(placement="ffn")
  with pytest.raises(ValueError, match="kind 'prefix' is unknown"):
    EraserConfig(kind="prefix")
  with pytest.raises(ValueError, match="trajectory model 'mixed'"):
    TrajectoryConfig(model="mixed")
  with pytest.raises(ValueError, match="threshold"):
    ObjectiveConfig(threshold=1.5)


def test_merged_lora_equals_lora_erasers(save_diffusers_transformer):
  from t2vu_jax.models.erasers import merge_lora
  _, path = save_diffusers_transformer(TINY)
  model = attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False),
                         EraserConfig("lora", rank=4, alpha=8))
  rng = np.random.default_rng(0)
  for name in ("q_b", "k_b", "v_b", "out_b"):
    param = getattr(model.erasers, name)
    param[...] = jnp.asarray(0.2 * rng.standard_normal(param.shape), jnp.float32)
  x, t, text = jnp.asarray(rng.standard_normal(LATENTS), jnp.float32), jnp.array([300]), prompts().cond
  with_lora = model(x, t, text)
  assert np.abs(np.asarray(with_lora - model(x, t, text, erasers=False))).max() > 1e-3
  merged = merge_lora(model)
  assert merged.erasers is None and not jax.tree.leaves(nnx.state(merged, EraserParam))
  np.testing.assert_allclose(np.asarray(merged(x, t, text)), np.asarray(with_lora), atol=2e-5)


def test_the_adversarial_option_trains_against_a_soft_prompt_that_brings_the_concept_back(tiny_model):
  from t2vu_jax.text import insert_tokens
  objective = ObjectiveConfig(eta=1.0, adversarial=True, adversarial_tokens=2, adversarial_steps=2)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2, total_steps=8))
  graphdef, state = init_train_state(tiny_model(), tx, objective)
  assert state.adversary.shape == (2, TINY["text_dim"]) and not np.any(np.asarray(state.adversary))
  step = make_train_step(graphdef, tx, objective, TrajectoryConfig(steps=4, guidance=4.0), LATENTS)
  batch = prompts()
  for i in range(8):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(0), i))
  assert np.all(np.isfinite(np.asarray(state.adversary))) and np.any(np.asarray(state.adversary))
  # The soft tokens bring the erased model's concept velocity closer to the base model's than the plain prompt.
  model = merge_model(graphdef, state)
  x = jax.random.normal(jax.random.key(1), LATENTS)
  t = jnp.array([600.0])
  v_c = model(x, t, batch.cond, erasers=False)
  plain = float(jnp.mean((model(x, t, batch.cond) - v_c) ** 2))
  attacked = float(jnp.mean((model(x, t, insert_tokens(batch.cond, state.adversary)) - v_c) ** 2))
  assert attacked < plain
  with pytest.raises(ValueError, match="adversarial_every must be a positive integer"):
    ObjectiveConfig(adversarial=True, adversarial_every=0)


@pytest.mark.parametrize("kind, adversarial", [("adapter", True), ("lora", False)])
def test_collapsed_text_padding_trains_as_the_full_context(save_diffusers_transformer, kind, adversarial):
  """Contexts that end in zero rows (as Wan's do), cut to the rows they use plus one padding row that
  stands for the rest (`text.collapse_padding`, `text_padding`): on-policy steps give the erasers, the
  inner attack's tokens and the metrics of the full 24-row contexts."""
  from t2vu_jax.text import collapse_padding
  _, path = save_diffusers_transformer(TINY)
  model = attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False),
                         EraserConfig(kind=kind, rank=4, placement="cross_attn"))
  rng = np.random.default_rng(3)
  full = {}
  for name, used in (("cond", 6), ("uncond", 1), ("cond_pre", 9)):
    e = np.zeros((1, 24, TINY["text_dim"]), np.float32)
    e[:, :used] = rng.standard_normal((1, used, TINY["text_dim"]))
    full[name] = e
  concept = np.zeros((1, 24), np.float32)
  concept[0, 2:4] = 1
  cut, masks, padding = collapse_padding(full, {"concept_mask": concept}, room=2)
  assert padding == 24 - (9 + 2 + 1) and cut["cond"].shape[1] == masks["concept_mask"].shape[1] == 12
  objective = ObjectiveConfig(eta=1.0, adversarial=adversarial, adversarial_tokens=2, adversarial_steps=1)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2, total_steps=3))
  out = []
  for arrays, mask, pad in ((full, concept, None), (cut, masks["concept_mask"], jnp.asarray(padding))):
    graphdef, state = init_train_state(nnx.clone(model), tx, objective)
    step = make_train_step(graphdef, tx, objective, TrajectoryConfig(steps=4, guidance=4.0), LATENTS)
    batch = ErasureBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}, concept_mask=jnp.asarray(mask),
                         text_padding=pad)
    for i in range(3):
      state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(0), i))
    out.append((state, metrics))
  (full_state, full_metrics), (cut_state, cut_metrics) = out
  for a, b in zip(jax.tree.leaves(full_state.erasers), jax.tree.leaves(cut_state.erasers)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  if adversarial:
    np.testing.assert_allclose(np.asarray(full_state.adversary), np.asarray(cut_state.adversary), atol=1e-5)
  for name in ("l_u", "l_loc", "l_pre", "mask_coverage"):
    np.testing.assert_allclose(float(full_metrics[name]), float(cut_metrics[name]), rtol=1e-4, atol=1e-9)


def test_collapse_padding_keeps_every_used_row_and_refuses_a_mask_past_them():
  from t2vu_jax.text import collapse_padding
  e = np.zeros((2, 10, 3), np.float32)
  e[0, :2], e[1, :4] = 1.0, 2.0
  empty = np.zeros((10, 3), np.float32)
  empty[0] = 5.0
  cut, _, padding = collapse_padding({"a": e, "empty": empty})
  assert padding == 10 - 5 and cut["a"].shape == (2, 5, 3) and cut["empty"].shape == (5, 3)
  np.testing.assert_array_equal(cut["a"][:, :4], e[:, :4])
  assert not cut["a"][:, 4:].any()  # the padding row
  same, _, none = collapse_padding({"a": e}, room=5)  # nothing left to cut
  assert none is None and same["a"].shape == e.shape
  with pytest.raises(ValueError, match="past the ones the contexts use"):
    collapse_padding({"a": e}, {"m": np.eye(10)[None, 7]})


def test_replacement_anchor_trains_on_the_anchor_s_trajectory(tiny_model):
  """With anchor "replace" a fresh training point lies on the anchor prompt's trajectory (where its
  velocity is the target): the step equals one given those points, and not one on the concept's."""
  from t2vu_jax.erase.trajectory import training_point
  model = tiny_model()
  trajectory = TrajectoryConfig(steps=4, guidance=4.0, model="frozen")
  objective = ObjectiveConfig(eta=0.0, anchor="replace", replacements="unused here")
  batch = prompts()
  batch = batch._replace(anchor=batch.cond + 0.5 * prompts(seed=1).cond)
  tx = make_optimizer(OptimConfig(learning_rate=1e-3))
  graphdef, state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, objective, trajectory, LATENTS)
  key = jax.random.key(3)
  _, fresh = step(state, batch, key)

  def given(cond):
    point_key, pre_key = jax.random.split(key)
    kw = dict(scheduler=trajectory.make_scheduler(), uncond=batch.uncond, guidance=trajectory.guidance,
              latent_shape=LATENTS, erasers=False)
    x_t, t, sigma = training_point(merge_model(graphdef, state), rng=point_key, cond=cond, **kw)
    x_pre, t_pre, _ = training_point(merge_model(graphdef, state), rng=pre_key, cond=batch.cond_pre, **kw)
    _, state_again = init_train_state(model, tx)
    plain = make_train_step(graphdef, tx, objective)
    return plain(state_again, batch._replace(x_t=x_t, t=t, sigma=sigma, x_pre=x_pre, t_pre=t_pre), key)[1]

  on_anchor, on_concept = given(batch.anchor), given(batch.cond)
  np.testing.assert_allclose(float(fresh["loss"]), float(on_anchor["loss"]), rtol=1e-5)
  assert abs(float(fresh["loss"]) - float(on_concept["loss"])) > 1e-3 * float(fresh["loss"])
  with pytest.raises(ValueError, match="anchor 'replace' needs its replacement phrases"):
    ObjectiveConfig(anchor="replace")
