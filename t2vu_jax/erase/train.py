"""Erasure training: a pure, jitted `train_step(state, batch, rng) -> (state, metrics)`.

The model is split once into its graph, the frozen base parameters (`nnx.Param`) and the trainable
eraser parameters (`EraserParam`); the train state carries both as pytrees, so the step is a pure
function of arrays. Only erasers get gradients and optimizer state (optax Adam after global-norm
clipping); the base parameters pass through the step untouched.

With `objective.adversarial` the state also carries the inner attack's soft tokens, which the step
updates (every `adversarial_every` steps) before the erasure loss sees the attacked prompts.

In a two-expert model (Wan2.2 A14B) each expert has its own train state and its own compiled step,
which trains it at the points of its range and samples trajectories through both experts (the other
one's erasers and base enter the step as read-only arguments).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig, erasure_loss
from t2vu_jax.erase.trajectory import TrajectoryConfig, training_point
from t2vu_jax.models.erasers import EraserParam
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.text import insert_tokens

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-4
  clip_norm: float = 1.0
  schedule: str = "constant"   # after warmup: constant, cosine decay to 0, or linear decay to 0
  warmup_steps: int = 0
  total_steps: int = 300
  b1: float = 0.9
  b2: float = 0.999

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optimizer schedule {self.schedule!r} is unknown; choose one of {SCHEDULES}")
    if self.learning_rate <= 0 or self.clip_norm <= 0:
      raise ValueError("learning_rate and clip_norm must be positive")
    if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
      raise ValueError(f"total_steps must be a positive integer, got {self.total_steps!r}")
    if not 0 <= self.warmup_steps <= self.total_steps:
      raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
  after = {"constant": optax.constant_schedule(cfg.learning_rate),
           "cosine": optax.cosine_decay_schedule(cfg.learning_rate, decay_steps),
           "linear": optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)}[cfg.schedule]
  schedule = after
  if cfg.warmup_steps:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps), after],
                                    [cfg.warmup_steps])
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(schedule, cfg.b1, cfg.b2))


class TrainState(NamedTuple):
  step: jax.Array
  base: nnx.State      # frozen base model parameters (and any other non-eraser state)
  erasers: nnx.State   # trainable eraser parameters, fp32
  opt_state: Any
  adversary: jax.Array | None = None  # the inner attack's soft tokens (objective.adversarial), (k, text_dim)


def init_train_state(model: WanTransformer, tx: optax.GradientTransformation,
                     objective: ObjectiveConfig | None = None) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, state) of a model with erasers attached. The state's erasers are a copy (the step
  donates them), so `model` itself stays usable; its base parameters are shared, not copied. With an
  adversarial `objective` the state carries the inner attack's soft tokens, from zeros."""
  if model.erasers is None:
    raise ValueError("attach erasers to the model before training (t2vu_jax.models.erasers.attach_erasers)")
  graphdef, erasers, base = nnx.split(model, EraserParam, ...)
  erasers = jax.tree.map(jnp.copy, erasers)
  adversary = None
  if objective is not None and objective.adversarial:
    adversary = jnp.zeros((objective.adversarial_tokens, model.config.text_dim), jnp.float32)
  return graphdef, TrainState(jnp.zeros((), jnp.int32), base, erasers, tx.init(erasers), adversary)


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> WanTransformer:
  return nnx.merge(graphdef, state.erasers, state.base)


@dataclasses.dataclass(frozen=True)
class Expert:
  """The expert a step trains in a two-expert model: `index` 0 is the high-noise `transformer`, 1 the
  low-noise `transformer_2`; `other` is the other expert's graph; `k_range` its points' range of k."""
  index: int
  other: nnx.GraphDef
  boundary: float
  k_range: tuple[int, int]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, objective: ObjectiveConfig,
                    trajectory: TrajectoryConfig | None = None, latent_shape=None,
                    expert: Expert | None = None) -> Callable:
  """The jitted step. A batch whose `x_t` is None gets its training points from fresh trajectories
  inside the step (on-policy with erasers on, or frozen with them off; `latent_shape` (B, C, F, H, W)
  then sizes the noise); otherwise `x_t`, `t`, `sigma` (e.g. from a `TrajectoryPool`) are used. With
  `expert`, the step trains that expert and takes the other one's `(erasers, base)` as `other`."""
  scheduler = trajectory.make_scheduler() if trajectory is not None else None

  def attack(adversary, erasers, base, batch: ErasureBatch):
    """The inner attack's update: normalised-gradient steps on the soft tokens so that the erased model
    on the attacked prompt gives the base model's concept velocity v_c."""
    fresh = lambda tree: jax.tree.map(lambda a: a, tree)  # noqa: E731  (Variables of the current trace level)
    v_c = jax.lax.stop_gradient(nnx.merge(graphdef, fresh(erasers), fresh(base))(
        batch.x_t, batch.t, batch.cond, erasers=False, text_padding=batch.text_padding).astype(jnp.float32))

    def gap(tokens):
      model = nnx.merge(graphdef, fresh(erasers), fresh(base))
      v = model(batch.x_t, batch.t, insert_tokens(batch.cond, tokens), erasers=True, text_padding=batch.text_padding)
      return jnp.mean(jnp.square(v.astype(jnp.float32) - v_c))

    for _ in range(objective.adversarial_steps):
      g = jax.grad(gap)(adversary)
      adversary = adversary - objective.adversarial_lr * g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-12)
    return adversary

  def update(trainable, base, batch: ErasureBatch, rng, other=None):
    step, erasers, opt_state, adversary = trainable
    if batch.x_t is None:
      if scheduler is None or latent_shape is None:
        raise ValueError("a batch without x_t needs a trajectory config and latent_shape")
      model = nnx.merge(graphdef, erasers, base)
      experts = dict(model=model)
      if expert is not None:  # trajectories through both experts, high noise first
        high, low = [model, nnx.merge(expert.other, *other)][::1 if expert.index == 0 else -1]
        experts = dict(model=high, model_2=low, boundary=expert.boundary, guidance_2=trajectory.guidance_2,
                       k_range=expert.k_range)

      def point(rng, cond):
        return training_point(scheduler=scheduler, rng=rng, cond=cond, uncond=batch.uncond,
                              guidance=trajectory.guidance, latent_shape=latent_shape,
                              erasers=trajectory.model == "on_policy", text_padding=batch.text_padding, **experts)

      rng, pre_rng = jax.random.split(rng)
      # With anchor "replace" the point lies on the anchor's trajectory, where its velocity is the target.
      x_t, t, sigma = point(rng, batch.anchor if objective.anchor == "replace" else batch.cond)
      batch = batch._replace(x_t=x_t, t=t, sigma=sigma)
      if batch.cond_pre is not None:
        x_pre, t_pre, _ = point(pre_rng, batch.cond_pre)
        batch = batch._replace(x_pre=x_pre, t_pre=t_pre)

    if objective.adversarial:
      if adversary is None:
        raise ValueError("objective.adversarial needs the train state's soft tokens: "
                         "init_train_state(model, tx, objective)")
      adversary = jax.lax.cond(step % objective.adversarial_every == 0, attack, lambda a, *_: a,
                               adversary, erasers, base, batch)
      batch = batch._replace(cond_attack=insert_tokens(batch.cond, adversary))

    def loss_fn(erasers):
      fresh_base = jax.tree.map(lambda a: a, base)  # Variables of this trace level
      return erasure_loss(nnx.merge(graphdef, erasers, fresh_base), batch, objective)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(erasers)
    updates, opt_state = tx.update(grads, opt_state, erasers)
    erasers = optax.apply_updates(erasers, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), t=jnp.mean(batch.t.astype(jnp.float32)))
    return (step + 1, erasers, opt_state, adversary), metrics

  # Erasers and optimizer state are donated and replaced; the frozen base is only read, so it is
  # neither copied nor invalidated.
  jitted = jax.jit(update, donate_argnums=(0,))

  def train_step(state: TrainState, batch: ErasureBatch, rng, other: TrainState | None = None
                 ) -> tuple[TrainState, dict]:
    if (expert is None) != (other is None):
      raise ValueError("a two-expert step needs the other expert's state, and only such a step takes one")
    other = None if other is None else (other.erasers, other.base)
    (step, erasers, opt_state, adversary), metrics = jitted(
        (state.step, state.erasers, state.opt_state, state.adversary), state.base, batch, rng, other)
    return TrainState(step, state.base, erasers, opt_state, adversary), metrics

  # jitted((step, erasers, opt_state, adversary), base, batch, rng, other): for ahead-of-time lowering
  train_step.jitted = jitted
  return train_step
