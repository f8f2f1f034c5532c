"""The erase loop of a run: train erasers on the stored prompt embeddings, log metrics, checkpoint
and resume.

Each step's prompts and RNG key are functions of (seed, step), so a run resumed from a checkpoint
replays exactly the run that was interrupted. A checkpoint holds what training changes (`trainable`).

A two-expert model (Wan2.2 A14B) trains one eraser set per expert, each with its own optimizer; a
step trains the expert `trajectory.step_expert` draws for it, and a checkpoint holds both.
"""
from __future__ import annotations

import dataclasses
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
from t2vu_jax.erase.train import Expert, TrainState, init_train_state, make_optimizer, make_train_step
from t2vu_jax.erase.trajectory import expert_ranges, step_expert
from t2vu_jax.io import eraser_format
from t2vu_jax.models.erasers import attach_erasers
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.sharding import shard_module
from t2vu_jax.text import collapse_padding


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


EXPERT_NAMES = ("transformer", "transformer_2")  # as diffusers names a two-expert pipeline's subfolders


def trainable(states: list[TrainState]) -> dict:
  """What a train checkpoint holds: the rest of a step is a function of (seed, step). One expert's
  {"step", "erasers", "opt_state"}; with two, that of each under its name in `EXPERT_NAMES`."""
  held = [{"step": s.step, "erasers": s.erasers, "opt_state": s.opt_state,
           **({"adversary": s.adversary} if s.adversary is not None else {})} for s in states]
  return held[0] if len(held) == 1 else dict(zip(EXPERT_NAMES, held))


def restored_states(states: list[TrainState], restored: dict) -> list[TrainState]:
  held = [restored] if len(states) == 1 else [restored[name] for name in EXPERT_NAMES]
  return [s._replace(step=r["step"], erasers=r["erasers"], opt_state=r["opt_state"],
                     adversary=r.get("adversary", s.adversary)) for s, r in zip(states, held)]


def expert_steps(config, boundary: float | None) -> tuple[list[tuple[int, int]], list[int]]:
  """(each expert's range of k, the expert of every step of the run)."""
  ranges = expert_ranges(settings(config, "trajectory").make_scheduler(), boundary)
  return ranges, [step_expert(ranges, config.seed, step) for step in range(config.optim.total_steps)]


def train_setup(transformer: WanTransformer, config, mesh, updates: int | None = None):
  """(optimizer, graphdef, train state) of fresh erasers (config.eraser, seeded by config.seed) on
  `transformer`, on `mesh`. `updates` is the number of steps this model trains (an expert of two: its
  share of the run), over which the learning-rate schedule runs; default `optim.total_steps`."""
  model = attach_erasers(transformer, settings(config, "eraser"), seed=config.seed)
  shard_module(model, mesh)  # the fresh erasers join the base weights on the mesh
  optim = settings(config, "optim")
  if updates is not None and updates != optim.total_steps:
    n = max(updates, 1)
    warmup = min(n, round(optim.warmup_steps * n / optim.total_steps))
    optim = dataclasses.replace(optim, total_steps=n, warmup_steps=warmup)
  tx = make_optimizer(optim)
  graphdef, state = init_train_state(model, tx, settings(config, "objective"))
  # Scalars (step, Adam's count) replicated on the mesh, where the step returns them: otherwise the
  # second step sees new input shardings and compiles again.
  replicated = NamedSharding(mesh, PartitionSpec())
  on_mesh = lambda x: jax.device_put(x, replicated) if x.ndim == 0 else x  # noqa: E731
  state = state._replace(step=on_mesh(state.step), opt_state=jax.tree.map(on_mesh, state.opt_state),
                         adversary=None if state.adversary is None else jax.device_put(state.adversary, replicated))
  return tx, graphdef, state


def checkpoints(directory: str, transformer: WanTransformer, config) -> TrainCheckpoints:
  """The run's train checkpoints, signed with the eraser configuration they hold (as its eraser files
  record it)."""
  cfg, mc = settings(config, "eraser"), transformer.config
  signature = eraser_format.config_dict(cfg.kind, cfg.placement, cfg.rank, cfg.alpha, mc.num_layers, mc.dim)
  return TrainCheckpoints(directory, signature)


def restore_erased(experts: list[WanTransformer], config, mesh, checkpoint_dir: str
                   ) -> tuple[list[WanTransformer], dict]:
  """(the `experts` with the erasers of the newest readable checkpoint in `checkpoint_dir`, its source:
  {"step", "latest_step"}; they differ when the latest checkpoint could not be read)."""
  setups = [train_setup(t, config, mesh) for t in experts]
  saved = checkpoints(checkpoint_dir, experts[0], config)
  step, restored = saved.restore_latest(trainable([state for _, _, state in setups]))
  if restored is None:
    raise FileNotFoundError(f"no erasure checkpoint in {checkpoint_dir}; run the erase stage")
  states = restored_states([state for _, _, state in setups], restored)
  models = [nnx.merge(graphdef, state.erasers, state.base) for (_, graphdef, _), state in zip(setups, states)]
  return models, {"step": step, "latest_step": saved.latest_step()}


def trajectory_pools(experts: list[WanTransformer], config, embeddings, latent_shape, run_dir: str,
                     primary: bool, progress: bool, boundary: float | None = None) -> dict[str, TrajectoryPool]:
  """{"erase", "preserve"}: the frozen-model trajectory pools of the training prompts (through both
  experts of a two-expert model), built (or completed) on disk under `run_dir/pool`; empty without
  `trajectory.pool_repeats`."""
  trajectory = settings(config, "trajectory")
  if not trajectory.pool_repeats:
    return {}
  second = dict(model_2=experts[1], boundary=boundary, guidance_2=trajectory.guidance_2) if len(experts) > 1 else {}
  pools = {}
  # With anchor "replace" the erase prompts' training points lie on their anchors' trajectories.
  sources = {"erase": "anchor" if config.objective.anchor == "replace" else "erase", "preserve": "preserve"}
  for name, source in sources.items():
    if len(embeddings[name]):
      pools[name] = TrajectoryPool.build(
          experts[0], trajectory.make_scheduler(), embeddings[source], embeddings["empty"], trajectory.guidance,
          latent_shape[1:], repeats=trajectory.pool_repeats, seed=config.seed, batch_size=latent_shape[0],
          progress=progress, directory=os.path.join(run_dir, "pool", name), dtype=trajectory.pool_dtype,
          cache_bytes=trajectory.pool_cache_mb << 20, write=primary, **second)
  return pools


class StepBatches:
  """The batch of every step from the stored embeddings (`embeddings.npz` of the encode stage), with
  training points drawn from `pools` when the run has them (else the step samples them)."""

  def __init__(self, embeddings, prompts: ErasureSet, config, pools: dict[str, TrajectoryPool] | None = None):
    self.prompts, self.config, self.pools = prompts, config, pools or {}
    self.data, self.text_padding = self.contexts(embeddings, config)
    self.index = {e.prompt: i for i, e in enumerate(prompts.erase.entries)}
    self.pre_index = {e.prompt: i for i, e in enumerate(prompts.preserve.entries)} if prompts.preserve else {}
    self.empty = jnp.asarray(self.data["empty"])[None]
    self.replacing = config.objective.anchor == "replace"
    self.anchors = None  # each erase prompt's rows of the anchor embeddings
    if config.objective.anchor != "empty":
      of = np.asarray(self.data.get("anchor_of", np.arange(len(self.data["anchor"]))))
      self.anchors = [np.flatnonzero(of == i) for i in range(len(prompts.erase.entries))]

  def anchor_rows(self, step: int, rows: np.ndarray) -> np.ndarray:
    """One anchor row of each erase prompt in `rows`, drawn from (seed, step) among its replacements."""
    choice = np.random.default_rng((self.config.seed, step, 2)).integers(1 << 30, size=len(rows))
    return np.array([self.anchors[r][u % len(self.anchors[r])] for r, u in zip(rows, choice)])

  @staticmethod
  def contexts(embeddings, config) -> tuple[dict, jax.Array | None]:
    """The stored embeddings with their common zero padding cut to one row (`text.collapse_padding`,
    leaving room for the inner attack's tokens), and the padding that row stands for; cut with the XLA
    attention only (the fused kernels take no key bias)."""
    arrays = {name: np.asarray(embeddings[name]) for name in embeddings}
    if config.model.get("attention", "xla") != "xla":
      return arrays, None
    objective = config.objective
    room = objective.adversarial_tokens if objective.get("adversarial", False) else 0
    texts = {name: a for name, a in arrays.items() if name not in ("concept_mask", "anchor_of") and len(a)}
    texts, masks, padding = collapse_padding(texts, {"concept_mask": arrays["concept_mask"]}, room)
    return {**arrays, **texts, **masks}, None if padding is None else jnp.asarray(padding, jnp.int32)

  def __call__(self, step: int, k_range: tuple[int, int] | None = None) -> ErasureBatch:
    """Step `step`'s batch; pooled points are drawn with k in `k_range` (default: every k)."""
    c, data = self.config, self.data
    erase, preserve = self.prompts.sample(c.batch_size, c.seed, step, c.preserve_batch_size)
    rows = np.array([self.index[e.prompt] for e in erase])
    anchors = None if self.anchors is None else self.anchor_rows(step, rows)
    batch = ErasureBatch(cond=jnp.asarray(data["erase"][rows]),
                         uncond=jnp.broadcast_to(self.empty, (len(rows), *self.empty.shape[1:])),
                         concept_mask=jnp.asarray(data["concept_mask"][rows]),
                         anchor=None if anchors is None else jnp.asarray(data["anchor"][anchors]),
                         text_padding=self.text_padding)
    rng = np.random.default_rng((c.seed, step))  # the points of a step do not depend on where a run resumed
    if "erase" in self.pools:  # with anchor "replace", the pool holds the anchors' trajectories
      x_t, t, sigma = self.pools["erase"].draw(rng, anchors if self.replacing else rows, k_range)
      batch = batch._replace(x_t=jnp.asarray(x_t), t=jnp.asarray(t), sigma=jnp.asarray(sigma))
    if preserve:
      pre_rows = np.array([self.pre_index[e.prompt] for e in preserve])[:len(rows)]
      batch = batch._replace(cond_pre=jnp.asarray(data["preserve"][pre_rows]))
      if "preserve" in self.pools:
        x_pre, t_pre, _ = self.pools["preserve"].draw(rng, pre_rows, k_range)
        batch = batch._replace(x_pre=jnp.asarray(x_pre), t_pre=jnp.asarray(t_pre))
    return batch


def erase(experts: list[WanTransformer], config, mesh, embeddings, prompts: ErasureSet, latent_shape,
          run_dir: str, primary: bool = True, progress: bool = True, log=print, boundary: float | None = None
          ) -> tuple[list[WanTransformer], dict]:
  """Train erasers on the `experts` (one transformer, or Wan2.2 A14B's two switched at timestep
  `boundary`) for `config.optim.total_steps` steps, resuming from the latest checkpoint under
  `run_dir`; returns (the erased models, stage info). A SIGTERM or Ctrl-C saves a checkpoint and raises
  `Preempted`."""
  if config.objective.anchor != "empty" and "anchor" not in embeddings:
    fail("objective.anchor", f"{config.objective.anchor!r} needs anchor embeddings, and this run's encode stage "
         f"ran without them: delete {os.path.join(run_dir, 'stages', 'encode')} and rerun to encode them")
  if (len(experts) > 1) != (boundary is not None):
    raise ValueError("two experts need a boundary timestep, and a boundary two experts")
  optim = settings(config, "optim")
  ranges, step_experts = expert_steps(config, boundary)
  setups = [train_setup(t, config, mesh, updates=step_experts.count(i)) for i, t in enumerate(experts)]
  states = [state for _, _, state in setups]
  step_fns = [make_train_step(graphdef, tx, settings(config, "objective"), settings(config, "trajectory"),
                              latent_shape,
                              Expert(i, setups[1 - i][1], boundary, ranges[i]) if len(experts) > 1 else None)
              for i, (tx, graphdef, _) in enumerate(setups)]
  saved = checkpoints(os.path.join(run_dir, "checkpoints"), experts[0], config)
  start, restored = saved.restore_latest(trainable(states))
  if start > optim.total_steps:
    fail("optim.total_steps", f"{optim.total_steps} is below step {start} of the latest checkpoint in "
         f"{os.path.join(run_dir, 'checkpoints')}; start a new run with --config.workdir=NEW_DIR")
  if restored is not None:
    states = restored_states(states, restored)
    log(f"resuming erasure from step {start}")

  with jax.set_mesh(mesh):
    pools = trajectory_pools(experts, config, embeddings, latent_shape, run_dir, primary, progress, boundary)
  batches = StepBatches(embeddings, prompts, config, pools)
  metrics_log = MetricsLog(run_dir, enabled=primary, resume_step=start)
  key = jax.random.key(config.seed)
  every = lambda n, step: (step + 1) % n == 0 or step + 1 == optim.total_steps  # noqa: E731
  # The mesh in context turns on the model's activation sharding constraints.
  with preemption_guard() as preemption, jax.set_mesh(mesh):
    for step in tqdm(range(start, optim.total_steps), desc="erasing", initial=start, total=optim.total_steps,
                     disable=not progress):
      e = step_experts[step]
      other = states[1 - e] if len(states) > 1 else None
      states[e], metrics = step_fns[e](states[e], batches(step, ranges[e]), jax.random.fold_in(key, step), other)
      if every(config.log_every, step):
        metrics_log.write(step + 1, {**metrics, "expert": e} if len(states) > 1 else metrics)
      if every(config.checkpoint_every, step) or preemption["requested"]:
        saved.save(step + 1, trainable(states))
      if preemption["requested"] and step + 1 < optim.total_steps:
        saved.wait()
        metrics_log.close()
        log(f"preempted: saved step {step + 1}; rerun the same command to resume")
        raise Preempted(step + 1)
  saved.wait()
  metrics_log.close()
  models = [nnx.merge(graphdef, state.erasers, state.base) for (_, graphdef, _), state in zip(setups, states)]
  info = {"steps": optim.total_steps, "resumed_from": start}
  if len(experts) > 1:
    info["expert_steps"] = [step_experts.count(i) for i in range(len(experts))]
  return models, info
