"""Pools of frozen-model trajectories: the training points of `trajectory.model="frozen"`, sampled once
and drawn at every step.

`latents[p, r, k]` is prompt p's r-th trajectory after sampling step k (at σ_{k+1}). A pool lives in
host memory (`build`) or on disk (`build(directory=...)`): a zarr array through TensorStore with one
chunk per training point, in float32 or bfloat16, read through a cache of at most `cache_bytes`, so a
pool far larger than host memory streams from disk a batch of points at a time. A disk pool is built
resumably: each finished trajectory is recorded in `built.json`, and a rebuild samples only the rest
(each trajectory's noise is a function of (seed, prompt, repeat), so the pool does not depend on
where it stopped).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax import schedulers
from t2vu_jax.erase.trajectory import POOL_DTYPES
from t2vu_jax.io.atomic import write_text
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.pipeline import cfg_velocity, expert_switch, loop_callable
from t2vu_jax.sharding import sync_processes, to_host


def pool_noise_key(seed: int, prompt: int, repeat: int) -> jax.Array:
  """The key of the initial noise of prompt `prompt`'s `repeat`-th pooled trajectory."""
  return jax.random.key(seed * 1_000_003 + prompt * 1009 + repeat)


@nnx.jit(static_argnums=(1, 6))
def sample_trajectories(model, scheduler, noise, cond, uncond, guidance, boundary=None, model_2=None,
                        guidance_2=None):
  """Latents after every step but the last: (N − 1, B, C, F, H, W), erasers off; with `model_2` the
  steps whose timestep is below `boundary` run it (guidance `guidance_2`, default `guidance`)."""
  timesteps = jnp.asarray(scheduler.timesteps)
  switch = expert_switch(scheduler, boundary)
  dtype = model.dtype
  cond, uncond = cond.astype(dtype), uncond.astype(dtype)

  def run(expert, g, steps, carry):
    velocity = loop_callable(expert)

    def body(carry, i):
      x, state = carry
      v = cfg_velocity(velocity, x.astype(dtype), timesteps[i], cond, uncond, g, erasers=False)
      x, state = scheduler.step(state, v.astype(jnp.float32), x)
      return (x, state), x
    return jax.lax.scan(body, carry, steps)

  carry, high = run(model, guidance, jnp.arange(min(switch, scheduler.num_steps - 1)), (noise, scheduler.init(noise)))
  if model_2 is None or switch >= scheduler.num_steps - 1:
    return high
  _, low = run(model_2, guidance if guidance_2 is None else guidance_2, jnp.arange(switch, scheduler.num_steps - 1),
               carry)
  return jnp.concatenate([high, low])


ZARR_DTYPES = {"float32": "<f4", "bfloat16": "bfloat16"}


class DiskLatents:
  """A pool's latents in a zarr array on disk; indexing one point reads it (through the cache)."""

  def __init__(self, store):
    self.store = store
    self.shape = tuple(store.shape)

  @classmethod
  def open(cls, directory: str, shape=None, dtype: str = "float32", cache_bytes: int = 0) -> "DiskLatents":
    """Open the array under `directory`, or create it (zero-filled) when `shape` is given and it is
    missing."""
    import tensorstore as ts
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.abspath(directory)},
            "context": {"cache_pool": {"total_bytes_limit": int(cache_bytes)}}}
    if shape is not None:
      spec["metadata"] = {"shape": list(shape), "chunks": [1, 1, 1, *shape[3:]], "dtype": ZARR_DTYPES[dtype],
                          "compressor": None}
    return cls(ts.open(spec, create=shape is not None, open=True).result())

  def read(self, points) -> np.ndarray:
    """The latents at (p, r, k) for each point, read concurrently, as float32 (len(points), ...)."""
    futures = [self.store[p, r, k].read() for p, r, k in points]
    return np.stack([f.result() for f in futures]).astype(np.float32)

  def write(self, prompt: int, repeat: int, latents: np.ndarray) -> None:
    self.store[prompt, repeat].write(latents.astype(self.store.dtype.numpy_dtype)).result()


class TrajectoryPool:
  """Trajectories of the erasers-off model and the schedule they were sampled on."""

  def __init__(self, latents, timesteps: np.ndarray, sigmas: np.ndarray):
    self.latents = latents      # (P, R, N − 1, C, F, H, W): an np.ndarray or DiskLatents
    self.timesteps = timesteps  # (N,)
    self.sigmas = sigmas        # (N + 1,)

  @classmethod
  def build(cls, model: WanTransformer, scheduler: schedulers.Scheduler, cond, uncond, guidance: float,
            sample_shape, repeats: int = 1, seed: int = 0, batch_size: int = 4, progress: bool = True,
            directory: str | None = None, dtype: str = "float32", cache_bytes: int = 0, write: bool = True,
            model_2: WanTransformer | None = None, boundary: float | None = None, guidance_2: float | None = None):
    """Trajectories of every prompt embedding in `cond` (P, L, D), `repeats` noises each, of latents
    shaped `sample_shape` (C, F, H, W); `uncond` is the empty prompt's embedding (L, D). With `model_2`
    (a two-expert model) the steps below timestep `boundary` run it, with guidance `guidance_2`.

    In memory without `directory`; else on disk under it, continuing a build that stopped. In a
    multi-process run every process samples (the model is sharded over all of them) and only the
    one with `write` writes."""
    if dtype not in POOL_DTYPES:
      raise ValueError(f"pool dtype {dtype!r} is unknown; choose one of {POOL_DTYPES}")
    cond, uncond = np.asarray(cond), np.asarray(uncond)
    shape = (len(cond), repeats, scheduler.num_steps - 1, *sample_shape)
    settings = {"shape": list(shape), "dtype": dtype, "seed": seed, "guidance": float(guidance),
                "timesteps": np.asarray(scheduler.timesteps).tolist()}
    if model_2 is not None:
      settings.update(boundary=float(boundary), guidance_2=None if guidance_2 is None else float(guidance_2))
    if directory is None:
      latents, built = np.zeros(shape, np.dtype(jnp.dtype(dtype))), set()
    else:
      latents, built = _open_for_build(directory, settings, cache_bytes, write)
    jobs = [(p, r) for p in range(len(cond)) for r in range(repeats) if (p, r) not in built]
    with tqdm(total=len(cond) * repeats, initial=len(cond) * repeats - len(jobs), desc="trajectory pool",
              disable=not progress) as bar:
      for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape for every chunk
        noise = np.stack([np.asarray(jax.random.normal(pool_noise_key(seed, p, r), sample_shape, jnp.float32))
                          for p, r in chunk])
        noise = np.concatenate([noise, np.zeros((pad, *sample_shape), np.float32)])
        text = np.concatenate([cond[[p for p, _ in chunk]], np.zeros((pad, *cond.shape[1:]), cond.dtype)])
        xs = sample_trajectories(model, scheduler, jnp.asarray(noise), jnp.asarray(text),
                                 jnp.broadcast_to(jnp.asarray(uncond), text.shape), guidance, boundary, model_2,
                                 guidance_2)
        for j, (p, r) in enumerate(chunk):  # one trajectory on the host at a time
          trajectory = np.asarray(to_host(xs[:, j]))
          if directory is None:
            latents[p, r] = trajectory
          elif write:
            latents.write(p, r, trajectory)
        built.update(chunk)
        if directory is not None and write:
          write_text(os.path.join(directory, "built.json"), json.dumps(sorted(built)))
        bar.update(len(chunk))
    return cls(latents, np.asarray(scheduler.timesteps), np.asarray(scheduler.sigmas))

  def draw(self, rng: np.random.Generator, prompts: np.ndarray, k_range: tuple[int, int] | None = None):
    """(x_t, t, sigma) for the given prompt indices, each at a random repeat and step k in `k_range`
    (default: every step); x_t is float32."""
    _, repeats, steps = self.latents.shape[:3]
    r = rng.integers(0, repeats, len(prompts))
    k = rng.integers(*(k_range or (0, steps)), len(prompts))
    if isinstance(self.latents, np.ndarray):
      x_t = self.latents[prompts, r, k].astype(np.float32)
    else:
      x_t = self.latents.read(zip(prompts, r, k))
    return x_t, self.timesteps[k + 1], self.sigmas[k + 1]


def _open_for_build(directory: str, settings: dict, cache_bytes: int, write: bool):
  """(DiskLatents, the set of (prompt, repeat) already built) of the pool under `directory`, created by
  the writing process when missing; a pool built with other settings is refused. Every process of a
  run calls this (it meets the others once the pool exists), so all see the same built set."""
  recorded = os.path.join(directory, "pool.json")
  if os.path.exists(recorded):  # every process checks, so all of them stop on a mismatch
    with open(recorded) as f:
      theirs = json.load(f)
    if theirs != settings:
      changed = sorted(k for k in settings if theirs.get(k) != settings[k])
      raise ValueError(f"the trajectory pool in {directory} was built with other settings "
                       f"({', '.join(changed)}); delete it to build a new one")
  elif write:
    os.makedirs(directory, exist_ok=True)
    write_text(recorded, json.dumps(settings))
  if write:
    DiskLatents.open(os.path.join(directory, "latents"), settings["shape"], settings["dtype"])
  sync_processes("trajectory pool")
  latents = DiskLatents.open(os.path.join(directory, "latents"), cache_bytes=cache_bytes)
  built = set()
  if os.path.exists(os.path.join(directory, "built.json")):
    with open(os.path.join(directory, "built.json")) as f:
      built = {tuple(job) for job in json.load(f)}
  return latents, built
