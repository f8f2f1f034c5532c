"""Where erasure trains: latents x_t on ESD-style sampling trajectories of the concept prompt.

From fresh noise, sample with classifier-free guidance (concept prompt vs ∅) for k + 1 steps,
k ∈ [0, N−2] drawn at random, and train at x_t = the latents at σ_{k+1}, t = timesteps[k+1]. On-policy
(the default) samples with the current model, erasers on, inside the jitted train step; "frozen"
samples with the erasers off, so trajectories do not depend on training and can be sampled once into
a pool (`t2vu_jax.erase.pool`, `pool_repeats` > 0) and drawn at every step.

A two-expert model (Wan2.2 A14B) samples through both experts, as its pipeline does, and each step
trains one expert at a point in that expert's range: the high-noise expert where timesteps[k+1] >=
the boundary, the low-noise one below. The expert of a step is drawn on the host from (seed, step)
with the probability of its share of the points, then k uniformly in its range, so k stays uniform.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t2vu_jax import schedulers
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.pipeline import sample

MODES = ("on_policy", "frozen")
POOL_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
  steps: int = 50
  scheduler: str = "unipc"
  shift: float = 3.0
  guidance: float = 5.0
  guidance_2: float | None = None  # the low-noise expert's guidance in a two-expert model (None: guidance)
  model: str = "on_policy"   # or "frozen": erasers off, trajectories poolable
  # With "frozen": > 0 samples this many trajectories of every training prompt once, into a pool on
  # disk under the run directory, and draws each step's training points from it.
  pool_repeats: int = 0
  pool_dtype: str = "float32"   # or "bfloat16": half the disk and cache
  pool_cache_mb: int = 1024     # host memory bound of the pool's read cache

  def __post_init__(self):
    if self.model not in MODES:
      raise ValueError(f"trajectory model {self.model!r} is unknown; choose one of {MODES}")
    if self.pool_repeats < 0 or self.pool_cache_mb < 0:
      raise ValueError(f"pool_repeats and pool_cache_mb must be >= 0, got {self.pool_repeats} and {self.pool_cache_mb}")
    if self.pool_repeats and self.model != "frozen":
      raise ValueError("a trajectory pool (pool_repeats > 0) needs model='frozen': on-policy trajectories "
                       "change with the erasers")
    if self.pool_dtype not in POOL_DTYPES:
      raise ValueError(f"pool_dtype {self.pool_dtype!r} is unknown; choose one of {POOL_DTYPES}")
    if self.steps < 2:
      raise ValueError(f"trajectory steps must be >= 2 (k is drawn from [0, steps - 2]), got {self.steps}")

  def make_scheduler(self) -> schedulers.Scheduler:
    return schedulers.make_scheduler(self.scheduler, self.steps, self.shift)


def expert_ranges(scheduler: schedulers.Scheduler, boundary: float | None) -> list[tuple[int, int]]:
  """The [lo, hi) range of k (training point at timesteps[k+1]) of each expert: one range [0, N-1)
  without a boundary; else the high-noise expert's points, then the low-noise one's (either may be
  empty when the schedule does not cross the boundary)."""
  last = scheduler.num_steps - 1
  if boundary is None:
    return [(0, last)]
  switch = int(np.sum(np.asarray(scheduler.timesteps)[1:] >= boundary))  # points k+1 run by the high expert
  return [(0, switch), (switch, last)]


def step_expert(ranges: list[tuple[int, int]], seed: int, step: int) -> int:
  """The expert that `step` trains: the one whose range holds a k drawn uniformly from [0, N-1)."""
  if len(ranges) == 1:
    return 0
  k = np.random.default_rng((seed, step, 1)).integers(ranges[0][0], ranges[-1][1])
  return next(i for i, (lo, hi) in enumerate(ranges) if lo <= k < hi)


def training_point(model: WanTransformer, scheduler: schedulers.Scheduler, rng, cond, uncond,
                   guidance: float, latent_shape, erasers: bool = True, k_range: tuple[int, int] | None = None,
                   model_2: WanTransformer | None = None, boundary: float | None = None,
                   guidance_2: float | None = None, text_padding=None):
  """(x_t, t, sigma) at a random step of a fresh guided trajectory for each prompt in `cond`.

  One k per batch, uniform in `k_range` (default [0, N−1)); the loop length is traced (`lax.fori_loop`
  with a dynamic bound), so one compiled step serves every k. With `model_2` and `boundary` the
  trajectory runs through both experts (`pipeline.sample`). No gradient flows into the trajectory.
  `text_padding` goes to the models (`WanTransformer`).
  """
  lo, hi = k_range or (0, scheduler.num_steps - 1)
  k_rng, noise_rng = jax.random.split(rng)
  k = jax.random.randint(k_rng, (), lo, hi)
  noise = jax.random.normal(noise_rng, latent_shape, jnp.float32)
  x_t = sample(model, scheduler, noise, cond, uncond, guidance, steps=k + 1, model_2=model_2, boundary=boundary,
               guidance_2=guidance_2, erasers=erasers, text_padding=text_padding)
  b = latent_shape[0]
  t = jnp.broadcast_to(jnp.asarray(scheduler.timesteps)[k + 1], (b,))
  sigma = jnp.broadcast_to(jnp.asarray(scheduler.sigmas)[k + 1], (b,))
  return jax.lax.stop_gradient(x_t), t, sigma
