"""Trajectory pools on disk: the same points and the same training as in memory, resumable builds,
bfloat16 storage, and host memory bounded by the cache, not the pool."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import t2vu_jax
from builders import TINY
from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
from t2vu_jax.erase.pool import TrajectoryPool
from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step
from t2vu_jax.erase.trajectory import TrajectoryConfig
from t2vu_jax.models.erasers import EraserConfig, attach_erasers

SAMPLE = (4, 3, 4, 6)
TRAJECTORY = TrajectoryConfig(steps=5, guidance=4.0, model="frozen")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def model_and_prompts(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY)
  rng = np.random.default_rng(0)
  cond = rng.standard_normal((3, 12, TINY["text_dim"])).astype(np.float32)
  uncond = rng.standard_normal((12, TINY["text_dim"])).astype(np.float32)
  return (lambda: attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False), EraserConfig(rank=4))), \
      cond, uncond


def build(model, cond, uncond, **kwargs):
  return TrajectoryPool.build(model, TRAJECTORY.make_scheduler(), cond, uncond, TRAJECTORY.guidance, SAMPLE,
                              repeats=2, batch_size=2, progress=False, **kwargs)


def every_point(pool):
  p, r, k = pool.latents.shape[:3]
  points = [(a, b, c) for a in range(p) for b in range(r) for c in range(k)]
  if isinstance(pool.latents, np.ndarray):
    return np.stack([pool.latents[q] for q in points]).astype(np.float32)
  return pool.latents.read(points)


def test_a_disk_pool_holds_the_in_memory_points_and_trains_identically(model_and_prompts, tmp_path):
  make_model, cond, uncond = model_and_prompts
  model = make_model()
  memory = build(model, cond, uncond)
  disk = build(model, cond, uncond, directory=str(tmp_path / "pool"), cache_bytes=0)  # no cache: every read from disk
  assert disk.latents.shape == memory.latents.shape == (3, 2, 4, *SAMPLE)
  np.testing.assert_array_equal(every_point(disk), every_point(memory))
  assert json.loads((tmp_path / "pool" / "built.json").read_text()) == [[p, r] for p in range(3) for r in range(2)]

  def train(pool, steps=3):
    tx = make_optimizer(OptimConfig(learning_rate=1e-3))
    graphdef, state = init_train_state(make_model(), tx)
    step = make_train_step(graphdef, tx, ObjectiveConfig())
    rows = np.array([0, 2])
    for i in range(steps):
      x_t, t, sigma = pool.draw(np.random.default_rng((0, i)), rows)
      x_pre, t_pre, _ = pool.draw(np.random.default_rng((1, i)), rows[::-1])
      batch = ErasureBatch(cond=jnp.asarray(cond[rows]), uncond=jnp.broadcast_to(uncond, (2, *uncond.shape)),
                           concept_mask=jnp.zeros((2, 12)).at[:, 3:5].set(1.0), x_t=jnp.asarray(x_t),
                           t=jnp.asarray(t), sigma=jnp.asarray(sigma), x_pre=jnp.asarray(x_pre),
                           t_pre=jnp.asarray(t_pre), cond_pre=jnp.asarray(cond[rows[::-1]]))
      state, _ = step(state, batch, jax.random.key(i))
    return [np.asarray(v[...]) for _, v in nnx.to_flat_state(state.erasers)]

  for a, b in zip(train(memory), train(disk), strict=True):
    np.testing.assert_array_equal(a, b)


def test_an_interrupted_build_completes_to_the_same_pool(model_and_prompts, tmp_path):
  make_model, cond, uncond = model_and_prompts
  model, directory = make_model(), str(tmp_path / "pool")
  whole = every_point(build(model, cond, uncond, directory=directory))
  # As if the build had stopped after its first batch: the later trajectories were never written.
  (tmp_path / "pool" / "built.json").write_text(json.dumps([[0, 0], [0, 1]]))
  pool = build(model, cond, uncond, directory=directory)
  pool.latents.write(2, 1, np.zeros((4, *SAMPLE), np.float32))  # ...and a finished build is not sampled again
  rebuilt = build(model, cond, uncond, directory=directory)
  np.testing.assert_array_equal(every_point(pool)[:-4], whole[:-4])
  assert not every_point(rebuilt)[-4:].any()
  with pytest.raises(ValueError, match=r"built with other settings \(guidance\); delete it"):
    TrajectoryPool.build(model, TRAJECTORY.make_scheduler(), cond, uncond, 2.0, SAMPLE, repeats=2,
                         directory=directory, progress=False)


def test_a_bfloat16_pool_stores_the_rounded_points(model_and_prompts, tmp_path):
  make_model, cond, uncond = model_and_prompts
  model = make_model()
  exact = every_point(build(model, cond, uncond))
  half = build(model, cond, uncond, directory=str(tmp_path / "pool"), dtype="bfloat16")
  assert half.latents.store.dtype.name == "bfloat16"
  points = every_point(half)
  np.testing.assert_array_equal(points, exact.astype(jnp.bfloat16).astype(np.float32))
  assert np.abs(points - exact).max() <= 2 ** -8 * np.abs(exact).max()  # bf16's relative rounding
  assert os.path.getsize(tmp_path / "pool" / "latents" / "0.0.0.0.0.0.0") == 2 * np.prod(SAMPLE)


def test_bad_pool_settings_are_refused():
  with pytest.raises(ValueError, match="needs model='frozen'"):
    TrajectoryConfig(pool_repeats=2)
  with pytest.raises(ValueError, match="pool_dtype 'float16' is unknown"):
    TrajectoryConfig(model="frozen", pool_repeats=2, pool_dtype="float16")
  with pytest.raises(ValueError, match="must be >= 0"):
    TrajectoryConfig(model="frozen", pool_cache_mb=-1)


BOUNDED = textwrap.dedent("""
    import sys, numpy as np
    from t2vu_jax.erase.pool import DiskLatents, TrajectoryPool

    def rss():  # resident memory now, MiB
      with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20

    directory, cache = sys.argv[1], int(sys.argv[2])
    shape = (24, 8, 8, 4, 1, 64, 64)  # 64 KiB a point, 96 MiB in all
    writer = DiskLatents.open(directory, shape)
    for p in range(shape[0]):
      for r in range(shape[1]):
        writer.write(p, r, np.full(shape[2:], p + r / 10, np.float32))
    pool = TrajectoryPool(DiskLatents.open(directory, cache_bytes=cache << 20), np.arange(9), np.linspace(1, 0, 10))
    rng = np.random.default_rng(0)
    before = peak = rss()
    for _ in range(300):
      prompts = rng.integers(0, shape[0], 4)
      x_t, _, _ = pool.draw(rng, prompts)
      assert (np.floor(x_t[:, 0, 0, 0, 0]) == prompts).all()
      peak = max(peak, rss())
    print(peak - before, np.prod(shape) * 4 / 2 ** 20)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_drawing_from_a_larger_pool_keeps_host_memory_within_the_cache_bound(tmp_path):
  def growth(cache_mb):
    result = subprocess.run([sys.executable, "-c", BOUNDED, str(tmp_path / f"pool{cache_mb}"), str(cache_mb)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tuple(map(float, result.stdout.split()))

  (bounded, size), (large, _) = growth(8), growth(64)
  print(f"pool {size:.0f} MiB: resident memory grew {bounded:.1f} MiB with an 8 MiB cache, {large:.1f} MiB with 64")
  assert size >= 90
  assert bounded <= 8 + 16  # the cache and the reader's buffers, never the pool
  assert large >= bounded + 20  # the measurement sees what the cache holds
