"""The erase loop of a run: train erasers on the stored prompt embeddings, log metrics, checkpoint
and resume.

Each step's prompts and RNG key are functions of (seed, step), so a run resumed from a checkpoint
replays exactly the run that was interrupted. A checkpoint holds what training changes (`trainable`).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from t2vu_jax.checkpoint import Preempted, TrainCheckpoints, preemption_guard
from t2vu_jax.erase.objective import ErasureBatch
from t2vu_jax.erase.pool import TrajectoryPool
from t2vu_jax.erase.prompts import ErasureSet
from t2vu_jax.erase.run_config import fail, settings
from t2vu_jax.erase.train import init_train_state, make_optimizer, make_train_step
from t2vu_jax.io import eraser_format
from t2vu_jax.models.erasers import attach_erasers
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.sharding import shard_module


class MetricsLog:
  """Training metrics as `metrics.jsonl` lines and TensorBoard scalars (`erase/<name>`); a no-op on
  processes other than process 0."""

  def __init__(self, run_dir: str, enabled: bool, resume_step: int = 0):
    self.file = self.board = None
    if enabled:
      from tensorboardX import SummaryWriter
      path = os.path.join(run_dir, "metrics.jsonl")
      if os.path.exists(path):  # rows after the resumed checkpoint are logged again: drop the old ones
        with open(path) as f:
          kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
        with open(path, "w") as f:
          f.writelines(kept)
      self.file = open(path, "a")
      self.board = SummaryWriter(os.path.join(run_dir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if self.file is None:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self.file.write(json.dumps({"step": step, **values}) + "\n")
    self.file.flush()
    for name, value in values.items():
      self.board.add_scalar(f"erase/{name}", value, step)
    self.board.flush()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
      self.board.close()


def trainable(state) -> dict:
  """What a train checkpoint holds: the rest of a step is a function of (seed, step)."""
  return {"step": state.step, "erasers": state.erasers, "opt_state": state.opt_state}


def train_setup(transformer: WanTransformer, config, mesh):
  """(optimizer, graphdef, train state) of fresh erasers (config.eraser, seeded by config.seed) on
  `transformer`, on `mesh`."""
  model = attach_erasers(transformer, settings(config, "eraser"), seed=config.seed)
  shard_module(model, mesh)  # the fresh erasers join the base weights on the mesh
  tx = make_optimizer(settings(config, "optim"))
  graphdef, state = init_train_state(model, tx)
  # Scalars (step, Adam's count) replicated on the mesh, where the step returns them: otherwise the
  # second step sees new input shardings and compiles again.
  replicated = NamedSharding(mesh, PartitionSpec())
  on_mesh = lambda x: jax.device_put(x, replicated) if x.ndim == 0 else x  # noqa: E731
  state = state._replace(step=on_mesh(state.step), opt_state=jax.tree.map(on_mesh, state.opt_state))
  return tx, graphdef, state


def checkpoints(directory: str, transformer: WanTransformer, config) -> TrainCheckpoints:
  """The run's train checkpoints, signed with the eraser configuration they hold (as its eraser files
  record it)."""
  cfg, mc = settings(config, "eraser"), transformer.config
  signature = eraser_format.config_dict(cfg.kind, cfg.placement, cfg.rank, cfg.alpha, mc.num_layers, mc.dim)
  return TrainCheckpoints(directory, signature)


def restore_erased(transformer: WanTransformer, config, mesh, checkpoint_dir: str) -> tuple[WanTransformer, dict]:
  """(`transformer` with the erasers of the newest readable checkpoint in `checkpoint_dir`, its source:
  {"step", "latest_step"}; they differ when the latest checkpoint could not be read)."""
  _, graphdef, state = train_setup(transformer, config, mesh)
  saved = checkpoints(checkpoint_dir, transformer, config)
  step, restored = saved.restore_latest(trainable(state))
  if restored is None:
    raise FileNotFoundError(f"no erasure checkpoint in {checkpoint_dir}; run the erase stage")
  return nnx.merge(graphdef, restored["erasers"], state.base), {"step": step, "latest_step": saved.latest_step()}


def trajectory_pools(transformer: WanTransformer, config, embeddings, latent_shape, run_dir: str,
                     primary: bool, progress: bool) -> dict[str, TrajectoryPool]:
  """{"erase", "preserve"}: the frozen-model trajectory pools of the training prompts, built (or
  completed) on disk under `run_dir/pool`; empty without `trajectory.pool_repeats`."""
  trajectory = settings(config, "trajectory")
  if not trajectory.pool_repeats:
    return {}
  pools = {}
  for name in ("erase", "preserve"):
    if len(embeddings[name]):
      pools[name] = TrajectoryPool.build(
          transformer, trajectory.make_scheduler(), embeddings[name], embeddings["empty"], trajectory.guidance,
          latent_shape[1:], repeats=trajectory.pool_repeats, seed=config.seed, batch_size=latent_shape[0],
          progress=progress, directory=os.path.join(run_dir, "pool", name), dtype=trajectory.pool_dtype,
          cache_bytes=trajectory.pool_cache_mb << 20, write=primary)
  return pools


class StepBatches:
  """The batch of every step from the stored embeddings (`embeddings.npz` of the encode stage), with
  training points drawn from `pools` when the run has them (else the step samples them)."""

  def __init__(self, embeddings, prompts: ErasureSet, config, pools: dict[str, TrajectoryPool] | None = None):
    self.data, self.prompts, self.config, self.pools = embeddings, prompts, config, pools or {}
    self.index = {e.prompt: i for i, e in enumerate(prompts.erase.entries)}
    self.pre_index = {e.prompt: i for i, e in enumerate(prompts.preserve.entries)} if prompts.preserve else {}
    self.empty = jnp.asarray(embeddings["empty"])[None]
    self.anchored = config.objective.anchor == "prompt"

  def __call__(self, step: int) -> ErasureBatch:
    c, data = self.config, self.data
    erase, preserve = self.prompts.sample(c.batch_size, c.seed, step, c.preserve_batch_size)
    rows = np.array([self.index[e.prompt] for e in erase])
    batch = ErasureBatch(cond=jnp.asarray(data["erase"][rows]),
                         uncond=jnp.broadcast_to(self.empty, (len(rows), *self.empty.shape[1:])),
                         concept_mask=jnp.asarray(data["concept_mask"][rows]),
                         anchor=jnp.asarray(data["anchor"][rows]) if self.anchored else None)
    rng = np.random.default_rng((c.seed, step))  # the points of a step do not depend on where a run resumed
    if "erase" in self.pools:
      x_t, t, sigma = self.pools["erase"].draw(rng, rows)
      batch = batch._replace(x_t=jnp.asarray(x_t), t=jnp.asarray(t), sigma=jnp.asarray(sigma))
    if preserve:
      pre_rows = np.array([self.pre_index[e.prompt] for e in preserve])[:len(rows)]
      batch = batch._replace(cond_pre=jnp.asarray(data["preserve"][pre_rows]))
      if "preserve" in self.pools:
        x_pre, t_pre, _ = self.pools["preserve"].draw(rng, pre_rows)
        batch = batch._replace(x_pre=jnp.asarray(x_pre), t_pre=jnp.asarray(t_pre))
    return batch


def erase(transformer: WanTransformer, config, mesh, embeddings, prompts: ErasureSet, latent_shape,
          run_dir: str, primary: bool = True, progress: bool = True, log=print) -> tuple[WanTransformer, dict]:
  """Train erasers on `transformer` for `config.optim.total_steps` steps, resuming from the latest
  checkpoint under `run_dir`; returns (the erased model, stage info). A SIGTERM or Ctrl-C saves a
  checkpoint and raises `Preempted`."""
  if config.objective.anchor == "prompt" and "anchor" not in embeddings:
    fail("objective.anchor", "'prompt' needs anchor embeddings, and this run's encode stage ran without them: "
         f"delete {os.path.join(run_dir, 'stages', 'encode')} and rerun to encode them")
  optim = settings(config, "optim")
  tx, graphdef, state = train_setup(transformer, config, mesh)
  step_fn = make_train_step(graphdef, tx, settings(config, "objective"), settings(config, "trajectory"),
                            latent_shape)
  saved = checkpoints(os.path.join(run_dir, "checkpoints"), transformer, config)
  start, restored = saved.restore_latest(trainable(state))
  if start > optim.total_steps:
    fail("optim.total_steps", f"{optim.total_steps} is below step {start} of the latest checkpoint in "
         f"{os.path.join(run_dir, 'checkpoints')}; start a new run with --config.workdir=NEW_DIR")
  if restored is not None:
    state = state._replace(step=restored["step"], erasers=restored["erasers"], opt_state=restored["opt_state"])
    log(f"resuming erasure from step {start}")

  with jax.set_mesh(mesh):
    pools = trajectory_pools(transformer, config, embeddings, latent_shape, run_dir, primary, progress)
  batches = StepBatches(embeddings, prompts, config, pools)
  metrics_log = MetricsLog(run_dir, enabled=primary, resume_step=start)
  key = jax.random.key(config.seed)
  every = lambda n, step: (step + 1) % n == 0 or step + 1 == optim.total_steps  # noqa: E731
  # The mesh in context turns on the model's activation sharding constraints.
  with preemption_guard() as preemption, jax.set_mesh(mesh):
    for step in tqdm(range(start, optim.total_steps), desc="erasing", initial=start, total=optim.total_steps,
                     disable=not progress):
      state, metrics = step_fn(state, batches(step), jax.random.fold_in(key, step))
      if every(config.log_every, step):
        metrics_log.write(step + 1, metrics)
      if every(config.checkpoint_every, step) or preemption["requested"]:
        saved.save(step + 1, trainable(state))
      if preemption["requested"] and step + 1 < optim.total_steps:
        saved.wait()
        metrics_log.close()
        log(f"preempted: saved step {step + 1}; rerun the same command to resume")
        raise Preempted(step + 1)
  saved.wait()
  metrics_log.close()
  return nnx.merge(graphdef, state.erasers, state.base), {"steps": optim.total_steps, "resumed_from": start}
