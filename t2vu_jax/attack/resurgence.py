"""`resurgence`: benign fine-tuning of the attacked model, then the concept rate again ("Unstable
Unlearning": fine-tuning on data without the concept can bring an erased concept back).

A LoRA (rank `attack.resurgence_rank`, B zero-initialised) on every block's linear kernels (self- and
cross-attention projections, feed-forward) is trained with Adam on the flow-matching loss of the base
model's own videos of prompts unrelated to the concept (the preserve pools, else the evaluation prompts
that do not name it), everything else frozen: the erased model keeps its erasers (on, not trained).
The base model is fine-tuned once for both the base and the negative-prompting targets. The concept
rate is measured after each step count of `attack.resurgence_steps` (budget: steps).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from t2vu_jax.attack.common import adam, draw_sigma, flow_point
from t2vu_jax.erase.prompts import load_pools, split_paths


def _names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)


def lora_targets(params) -> list[tuple]:
  """Paths of every block's stacked linear kernel (L, in, out) in a transformer's `nnx.Param` state."""
  return [_names(path) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if _names(path)[0] == "blocks" and _names(path)[-2] == "kernel" and leaf.ndim == 3]


def init_lora(params, rank: int, key) -> dict:
  """{kernel path: (A (L, in, r) ~ N(0, 1/in), B (L, r, out) = 0)}."""
  shapes = {_names(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  lora = {}
  for i, path in enumerate(lora_targets(params)):
    layers, din, dout = shapes[path]
    a = jax.random.normal(jax.random.fold_in(key, i), (layers, din, rank), jnp.float32) / np.sqrt(din)
    lora[path] = (a, jnp.zeros((layers, rank, dout), jnp.float32))
  return lora


def with_lora(params, lora: dict):
  """`params` with W + A B at every LoRA path."""
  def add(path, leaf):
    name = _names(path)
    if name not in lora:
      return leaf
    a, b = lora[name]
    return (leaf.astype(jnp.float32) + a @ b).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(add, params)


@functools.partial(jax.jit, static_argnums=(0, 9, 10))
def _step(graphdef, params, rest, lora, opt_state, x0, cond, sigma, noise, erasers: bool, learning_rate: float):
  def loss_fn(lora):
    fresh_rest = jax.tree.map(lambda a: a, rest)  # Variables of this trace level (the erasers among them)
    model = nnx.merge(graphdef, with_lora(params, lora), fresh_rest)
    x_t, target = flow_point(x0, noise, sigma)
    v = model(x_t.astype(model.dtype), jnp.broadcast_to(1000.0 * sigma, x0.shape[:1]), cond.astype(model.dtype),
              erasers=erasers)
    return jnp.mean((v.astype(jnp.float32) - target) ** 2)

  loss, grad = jax.value_and_grad(loss_fn)(lora)
  updates, opt_state = adam(learning_rate).update(grad, opt_state, lora)
  return optax.apply_updates(lora, updates), opt_state, loss


def benign_prompts(context) -> list[str]:
  config = context.config
  if config.prompts.preserve:
    prompts = [e.prompt for e in load_pools(split_paths(config.prompts.preserve)).entries]
  else:
    from t2vu_jax.evaluate.videos import evaluation_prompts
    prompts = [p for p, _ in evaluation_prompts(config) if not context.scorer.names_concept(p)]
  if not prompts:
    raise ValueError("config.prompts.preserve: resurgence fine-tunes on prompts unrelated to the concept; give "
                     "a preserve pool (or evaluation prompts that do not name the concept)")
  return prompts[:context.settings.resurgence_prompts]


def fine_tune(context, pipe, erasers: bool, x0, cond, checkpoints, key) -> dict:
  """{steps: the pipeline with its experts fine-tuned that many steps}."""
  settings, ev = context.settings, context.config.eval
  experts = [pipe.transformer] + ([pipe.transformer_2] if pipe.transformer_2 is not None else [])
  split = [nnx.split(m, nnx.Param, ...) for m in experts]
  loras = [init_lora(params, settings.resurgence_rank, jax.random.fold_in(key, i))
           for i, (_, params, _) in enumerate(split)]
  states = [adam(settings.resurgence_lr).init(lora) for lora in loras]
  rng = np.random.default_rng(context.config.seed)

  def tuned():
    models = [nnx.merge(g, with_lora(p, lora), r) for (g, p, r), lora in zip(split, loras)]
    return dataclasses.replace(pipe, transformer=models[0], transformer_2=models[1] if len(models) > 1 else None)

  kept = {0: pipe} if 0 in checkpoints else {}
  for step in range(1, max(checkpoints) + 1):
    sigma, e = draw_sigma(rng, pipe, ev.steps)
    noise = jax.random.normal(jax.random.fold_in(key, 1000 + step), x0.shape, jnp.float32)
    graphdef, params, rest = split[e]
    loras[e], states[e], _ = _step(graphdef, params, rest, loras[e], states[e], x0, cond, jnp.float32(sigma), noise,
                                   erasers, settings.resurgence_lr)
    if step in checkpoints:
      kept[step] = tuned()
  return kept


def run(context) -> tuple[dict, dict]:
  settings = context.settings
  checkpoints = settings.resurgence_step_values
  texts = benign_prompts(context)
  cond = context.embed(texts)
  x0 = context.base_latents(cond)  # the base model's own videos
  key = jax.random.key(context.config.seed)
  prompts = context.embed(context.prompts)
  tuned, rates = {}, {}
  for target, (pipe, erasers, _) in context.targets.items():
    which = (id(pipe), erasers)  # the base model is fine-tuned once for base and negative prompting
    if which not in tuned:
      tuned[which] = fine_tune(context, pipe, erasers, x0, jnp.asarray(cond), checkpoints, key)
    rates[target] = {str(steps): context.concept_rate(target, prompts, pipe=p) for steps, p in tuned[which].items()}
  budget = {"name": "fine-tuning steps", "steps": list(checkpoints), "rank": settings.resurgence_rank,
            "learning_rate": settings.resurgence_lr, "train_prompts": len(texts)}
  return budget, rates
