"""Erasure of a two-expert model (Wan2.2 A14B): each expert trains at the points of its own range, on
trajectories sampled through both experts as the pipeline samples; a run resumes both."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import t2vu_jax
from builders import TINY
from t2vu_jax import schedulers
from t2vu_jax.erase.job import ErasureJob
from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
from t2vu_jax.erase.pool import TrajectoryPool, pool_noise_key
from t2vu_jax.erase.train import Expert, OptimConfig, init_train_state, make_optimizer, make_train_step
from t2vu_jax.erase.trajectory import TrajectoryConfig, expert_ranges, step_expert
from t2vu_jax.models.erasers import EraserConfig, EraserParam, attach_erasers
from t2vu_jax.pipeline import expert_switch, sample

LATENTS = (1, 4, 3, 4, 6)
TRAJECTORY = TrajectoryConfig(steps=6, shift=5.0, guidance=4.0, guidance_2=3.0)


@pytest.mark.parametrize("name,steps,shift,boundary", [("unipc", 40, 12.0, 875.0), ("unipc", 6, 5.0, 900.0),
                                                        ("euler", 9, 1.0, 500.0), ("unipc", 3, 3.0, 999.5)])
def test_expert_ranges_follow_the_pipelines_switch(name, steps, shift, boundary):
  scheduler = schedulers.make_scheduler(name, steps, shift)
  ranges = expert_ranges(scheduler, boundary)
  assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == steps - 1
  switch = expert_switch(scheduler, boundary)  # the first sampling step of the low-noise expert
  for expert, (lo, hi) in enumerate(ranges):
    for k in range(lo, hi):  # the point after step k is the input of sampling step k + 1
      assert (k + 1 >= switch) == (expert == 1)
      assert (scheduler.timesteps[k + 1] >= boundary) == (expert == 0)


def test_each_step_trains_an_expert_drawn_by_its_share_of_the_points():
  ranges = [(0, 25), (25, 39)]
  drawn = np.array([step_expert(ranges, 3, step) for step in range(4000)])
  assert abs(np.mean(drawn == 0) - 25 / 39) < 0.025
  assert list(drawn[:50]) == [step_expert(ranges, 3, step) for step in range(50)]  # a function of (seed, step)
  assert [step_expert([(0, 5)], 3, step) for step in range(20)] == [0] * 20


@pytest.fixture
def experts(save_diffusers_transformer):
  """Two tiny experts with different random weights, and the boundary between them."""
  _, high = save_diffusers_transformer(TINY, name="high", seed=0)
  _, low = save_diffusers_transformer(TINY, name="low", seed=5)
  make = lambda path: attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False),  # noqa: E731
                                     EraserConfig(rank=4))
  return make(high), make(low), 900.0


def prompts(seed=0, text_len=12):
  rng = np.random.default_rng(seed)
  cond, uncond, pre = (jnp.asarray(rng.standard_normal((1, text_len, TINY["text_dim"])), jnp.float32)
                       for _ in range(3))
  return ErasureBatch(cond=cond, uncond=uncond, concept_mask=jnp.zeros((1, text_len)).at[0, 3:5].set(1.0),
                      cond_pre=pre)


def erasers_of(state):
  return [np.asarray(v) for v in jax.tree.leaves(state.erasers)]


def test_a_step_trains_its_expert_on_trajectories_through_both(experts):
  high, low, boundary = experts
  ranges = expert_ranges(TRAJECTORY.make_scheduler(), boundary)
  assert all(lo < hi for lo, hi in ranges)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2))
  (g_high, s_high), (g_low, s_low) = init_train_state(high, tx), init_train_state(low, tx)
  steps = [make_train_step(g, tx, ObjectiveConfig(eta=1.0), TRAJECTORY, LATENTS,
                           Expert(i, (g_low, g_high)[i], boundary, ranges[i])) for i, g in enumerate((g_high, g_low))]
  batch, rng = prompts(), jax.random.key(0)

  def perturbed(state):  # the same expert with other base weights
    return state._replace(base=jax.tree.map(lambda a: a * 1.5, state.base))

  fresh = lambda model: init_train_state(model, tx)[1]  # noqa: E731  (a step donates its expert's state)
  before_high, before_low = erasers_of(s_high), erasers_of(s_low)
  trained, metrics = steps[1](s_low, batch, rng, s_high)
  assert all(np.array_equal(a, b) for a, b in zip(erasers_of(s_high), before_high))  # the other expert is read only
  assert not all(np.array_equal(a, b) for a, b in zip(erasers_of(trained), before_low))
  assert float(metrics["t"]) < boundary  # the low-noise expert's point
  # Its trajectory starts in the high-noise expert: other high-noise weights give another point.
  _, again = steps[1](fresh(low), batch, rng, s_high)
  _, moved = steps[1](fresh(low), batch, rng, perturbed(s_high))
  assert float(again["loss"]) == float(metrics["loss"]) and float(moved["loss"]) != float(metrics["loss"])
  # The high-noise expert's points lie before the switch: the low-noise weights play no part.
  _, first = steps[0](fresh(high), batch, rng, fresh(low))
  _, second = steps[0](fresh(high), batch, rng, perturbed(fresh(low)))
  assert float(first["t"]) >= boundary and float(first["loss"]) == float(second["loss"])
  with pytest.raises(ValueError, match="other expert"):
    steps[0](fresh(high), batch, rng)


def test_a_two_expert_pool_holds_the_pipelines_trajectories(experts):
  high, low, boundary = experts
  scheduler = TRAJECTORY.make_scheduler()
  batch = prompts()
  pool = TrajectoryPool.build(high, scheduler, np.asarray(batch.cond), np.asarray(batch.uncond[0]),
                              TRAJECTORY.guidance, LATENTS[1:], repeats=1, batch_size=1, progress=False,
                              model_2=low, boundary=boundary, guidance_2=TRAJECTORY.guidance_2)
  noise = jax.random.normal(pool_noise_key(0, 0, 0), LATENTS[1:], jnp.float32)[None]
  for k in range(scheduler.num_steps - 1):
    expected = sample(high, scheduler, noise, batch.cond, batch.uncond, TRAJECTORY.guidance, steps=k + 1,
                      model_2=low, boundary=boundary, guidance_2=TRAJECTORY.guidance_2, erasers=False)
    np.testing.assert_allclose(pool.latents[0, 0, k], np.asarray(expected[0]), atol=2e-5, rtol=0)
  one = TrajectoryPool.build(high, scheduler, np.asarray(batch.cond), np.asarray(batch.uncond[0]),
                             TRAJECTORY.guidance, LATENTS[1:], repeats=1, batch_size=1, progress=False)
  switch = expert_switch(scheduler, boundary)
  np.testing.assert_array_equal(one.latents[0, 0, :switch], pool.latents[0, 0, :switch])
  assert not np.allclose(one.latents[0, 0, switch:], pool.latents[0, 0, switch:])
  rng = np.random.default_rng(0)
  for expert, (lo, hi) in enumerate(expert_ranges(scheduler, boundary)):
    _, t, _ = pool.draw(rng, np.zeros(50, int), (lo, hi))
    assert np.all((t >= boundary) == (expert == 0))


def tiny_a14b(path, workdir, **changes):
  from test_run import tiny_config
  config = tiny_config(path, workdir, **{"trajectory.guidance_2": 3.0, "trajectory.shift": 12.0,
                                         "optim.total_steps": 12, **changes})
  return config


def trained(job):
  return [[np.asarray(v[...]) for _, v in nnx.to_flat_state(nnx.state(m, EraserParam))] for m in job.erased]


@pytest.mark.slow  # three runs of 12 steps, two compiled steps each
@pytest.mark.parametrize("pool", [False, True])
def test_an_interrupted_two_expert_run_resumes_both_experts(wan_pipeline_dir, tmp_path, pool):
  _, path = wan_pipeline_dir(boundary_ratio=0.9)
  extra = {"stages": "load,encode,erase"}
  if pool:
    extra.update({"trajectory.model": "frozen", "trajectory.pool_repeats": 1})
  whole = ErasureJob(tiny_a14b(path, tmp_path / "whole", **extra), progress=False)
  counts = whole.run()["erase"]["expert_steps"]
  assert sum(counts) == 12 and min(counts) > 0
  first = ErasureJob(tiny_a14b(path, tmp_path / "resumed", **extra, **{"optim.total_steps": 9}), progress=False)
  first.run()
  os.remove(tmp_path / "resumed" / "stages" / "erase")
  second = ErasureJob(tiny_a14b(path, tmp_path / "resumed", **extra), progress=False)
  assert second.run()["erase"]["resumed_from"] == 9
  for a, b in zip(trained(whole), trained(second)):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  restored = ErasureJob(tiny_a14b(path, tmp_path / "whole", **extra), progress=False).erased_models()
  for m, weights in zip(restored, trained(whole)):
    for (_, v), w in zip(nnx.to_flat_state(nnx.state(m, EraserParam)), weights):
      np.testing.assert_array_equal(np.asarray(v[...]), w)
