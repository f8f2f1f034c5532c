"""Where erasure trains: latents x_t on ESD-style sampling trajectories of the concept prompt.

From fresh noise, sample with classifier-free guidance (concept prompt vs ∅) for k + 1 steps,
k ∈ [0, N−2] drawn at random, and train at x_t = the latents at σ_{k+1}, t = timesteps[k+1]. On-policy
(the default) samples with the current model, erasers on, inside the jitted train step; "frozen"
samples with the erasers off, so trajectories do not depend on training and a `TrajectoryPool` can
generate them once, batched, and serve them for every iteration.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax import schedulers
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.pipeline import cfg_velocity, loop_callable, sample

MODES = ("on_policy", "frozen")


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
  steps: int = 50
  scheduler: str = "unipc"
  shift: float = 3.0
  guidance: float = 5.0
  model: str = "on_policy"   # or "frozen": erasers off, trajectories poolable

  def __post_init__(self):
    if self.model not in MODES:
      raise ValueError(f"trajectory model {self.model!r} is unknown; choose one of {MODES}")
    if self.steps < 2:
      raise ValueError(f"trajectory steps must be >= 2 (k is drawn from [0, steps - 2]), got {self.steps}")

  def make_scheduler(self) -> schedulers.Scheduler:
    return schedulers.make_scheduler(self.scheduler, self.steps, self.shift)


def training_point(model: WanTransformer, scheduler: schedulers.Scheduler, rng, cond, uncond,
                   guidance: float, latent_shape, erasers: bool = True):
  """(x_t, t, sigma) at a random step of a fresh guided trajectory for each prompt in `cond`.

  One k per batch; the loop length is traced (`lax.fori_loop` with a dynamic bound), so one compiled
  step serves every k. No gradient flows into the trajectory.
  """
  k_rng, noise_rng = jax.random.split(rng)
  k = jax.random.randint(k_rng, (), 0, scheduler.num_steps - 1)
  noise = jax.random.normal(noise_rng, latent_shape, jnp.float32)
  x_t = sample(model, scheduler, noise, cond, uncond, guidance, steps=k + 1, erasers=erasers)
  b = latent_shape[0]
  t = jnp.broadcast_to(jnp.asarray(scheduler.timesteps)[k + 1], (b,))
  sigma = jnp.broadcast_to(jnp.asarray(scheduler.sigmas)[k + 1], (b,))
  return jax.lax.stop_gradient(x_t), t, sigma


def pool_noise_key(seed: int, prompt: int, repeat: int) -> jax.Array:
  """The key of the initial noise of prompt `prompt`'s `repeat`-th pooled trajectory."""
  return jax.random.key(seed * 1_000_003 + prompt * 1009 + repeat)


@nnx.jit(static_argnums=(1,))
def _trajectories(model, scheduler, noise, cond, uncond, guidance):
  """Latents after every step but the last: (N − 1, B, C, F, H, W), erasers off."""
  velocity = loop_callable(model)
  timesteps = jnp.asarray(scheduler.timesteps)

  def body(carry, i):
    x, state = carry
    v = cfg_velocity(velocity, x.astype(model.dtype), timesteps[i], cond.astype(model.dtype),
                     uncond.astype(model.dtype), guidance, erasers=False)
    x, state = scheduler.step(state, v.astype(jnp.float32), x)
    return (x, state), x

  _, xs = jax.lax.scan(body, (noise, scheduler.init(noise)), jnp.arange(scheduler.num_steps - 1))
  return xs


@dataclasses.dataclass(frozen=True)
class TrajectoryPool:
  """Frozen-model trajectories, generated once: `latents[p, r, k]` is prompt p's r-th trajectory
  after step k (at σ_{k+1}). Kept on the host."""
  latents: np.ndarray       # (P, R, N − 1, C, F, H, W) float32
  timesteps: np.ndarray     # (N,)
  sigmas: np.ndarray        # (N + 1,)

  @classmethod
  def build(cls, model: WanTransformer, scheduler: schedulers.Scheduler, cond, uncond, guidance: float,
            sample_shape, repeats: int = 1, seed: int = 0, batch_size: int = 4, progress: bool = True):
    """Trajectories of every prompt embedding in `cond` (P, L, D), `repeats` noises each, of latents
    shaped `sample_shape` (C, F, H, W); `uncond` is the empty prompt's embedding (L, D)."""
    cond, uncond = np.asarray(cond), np.asarray(uncond)
    jobs = [(p, r) for p in range(len(cond)) for r in range(repeats)]
    out = np.zeros((len(cond), repeats, scheduler.num_steps - 1, *sample_shape), np.float32)
    for start in tqdm(range(0, len(jobs), batch_size), desc="trajectory pool", disable=not progress):
      chunk = jobs[start:start + batch_size]
      pad = batch_size - len(chunk)  # one compiled shape for every chunk
      noise = np.stack([np.asarray(jax.random.normal(pool_noise_key(seed, p, r), sample_shape, jnp.float32))
                        for p, r in chunk])
      noise = np.concatenate([noise, np.zeros((pad, *sample_shape), np.float32)])
      text = np.concatenate([cond[[p for p, _ in chunk]], np.zeros((pad, *cond.shape[1:]), cond.dtype)])
      xs = np.asarray(_trajectories(model, scheduler, jnp.asarray(noise), jnp.asarray(text),
                                    jnp.broadcast_to(jnp.asarray(uncond), text.shape), guidance))
      for j, (p, r) in enumerate(chunk):
        out[p, r] = xs[:, j]
    return cls(out, np.asarray(scheduler.timesteps), np.asarray(scheduler.sigmas))

  def draw(self, rng: np.random.Generator, prompts: np.ndarray):
    """(x_t, t, sigma) for the given prompt indices, each at a random repeat and step k."""
    _, repeats, steps = self.latents.shape[:3]
    r = rng.integers(0, repeats, len(prompts))
    k = rng.integers(0, steps, len(prompts))
    return self.latents[prompts, r, k], self.timesteps[k + 1], self.sigmas[k + 1]
