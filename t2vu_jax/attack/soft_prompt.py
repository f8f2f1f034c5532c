"""`soft_prompt`: k learned embeddings inserted in every prompt, optimised with all weights frozen so
that the attacked model reproduces the concept (PROBE-style textual inversion).

The data is the base model's own videos (final latents x0) of erase-pool prompts naming the concept,
sampled as the evaluation samples; nothing external. The k vectors live in the text encoder's output
space (a stronger, cheaper attacker than one that backpropagates through UMT5) and go right after
each prompt's tokens, where its embedding would be zero padding (over its last tokens where the text
length leaves no room). Adam minimises the flow-matching loss of the
target's guided velocity, |v_u + g (v_c − v_u) − (ε − x0)|² at x_t = (1 − σ) x0 + σ ε, with σ drawn
as the pipeline's shifted schedule spreads it. Each target (base, negative prompting, erased) gets its
own soft prompt, from zeros (the unattacked prompt). The budget is steps × k; the concept rate is
measured on the attack prompts with the soft prompt of each step count in `attack.soft_steps`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from t2vu_jax.attack.common import adam, draw_sigma, flow_point
from t2vu_jax.pipeline import cfg_velocity, loop_callable
from t2vu_jax.text import insert_tokens


def check_room(embeddings: np.ndarray, tokens: int) -> None:
  if tokens >= embeddings.shape[1]:
    raise ValueError(f"config.attack.soft_tokens: {tokens} soft tokens leave no room for the prompt in the "
                     f"{embeddings.shape[1]}-token text length")


@nnx.jit(static_argnums=(8, 9))
def _step(model, soft, opt_state, x0, cond, uncond, sigma, noise, erasers: bool, learning_rate: float,
          guidance):
  velocity = loop_callable(model)  # the module rebuilt inside the gradient's trace

  def loss_fn(soft):
    x_t, target = flow_point(x0, noise, sigma)
    v = cfg_velocity(velocity, x_t.astype(model.dtype), 1000.0 * sigma,
                     insert_tokens(cond, soft).astype(model.dtype),
                     None if uncond is None else uncond.astype(model.dtype), guidance, erasers=erasers)
    return jnp.mean((v.astype(jnp.float32) - target) ** 2)

  loss, grad = jax.value_and_grad(loss_fn)(soft)
  updates, opt_state = adam(learning_rate).update(grad, opt_state, soft)
  return optax.apply_updates(soft, updates), opt_state, loss


def optimise(context, target: str, x0, cond, checkpoints, key):
  """{steps: soft prompt after that many steps} for `target`, trained on latents `x0` of embeddings `cond`."""
  settings, ev = context.settings, context.config.eval
  pipe, erasers, negative = context.targets[target]
  guided = ev.guidance > 1.0
  uncond = jnp.broadcast_to(jnp.asarray(context.embed([negative])[0]), cond.shape) if guided else None
  experts = (pipe.transformer, pipe.transformer_2)
  soft = jnp.zeros((settings.soft_tokens, cond.shape[-1]), jnp.float32)
  opt_state = adam(settings.soft_lr).init(soft)
  rng = np.random.default_rng(context.config.seed)
  kept = {0: soft} if 0 in checkpoints else {}
  for step in range(1, max(checkpoints) + 1):
    sigma, expert = draw_sigma(rng, pipe, ev.steps)
    model = experts[expert]
    noise = jax.random.normal(jax.random.fold_in(key, step), x0.shape, jnp.float32)
    soft, opt_state, _ = _step(model, soft, opt_state, x0, cond, uncond, jnp.float32(sigma), noise, erasers,
                               settings.soft_lr, ev.guidance)
    if step in checkpoints:
      kept[step] = soft
  return kept


def run(context) -> tuple[dict, dict]:
  settings = context.settings
  checkpoints = settings.soft_step_values
  entries = context.erase_entries[:settings.soft_train_prompts]
  train = context.embed([e.prompt for e in entries])
  prompts = context.embed(context.prompts)
  check_room(train, settings.soft_tokens)
  # The base model's own videos of the concept prompts: what every target is pushed to reproduce.
  x0 = context.base_latents(train)
  key = jax.random.key(context.config.seed)
  rates = {}
  for target in context.targets:
    softs = optimise(context, target, x0, jnp.asarray(train), checkpoints, key)
    rates[target] = {str(steps): context.concept_rate(target, np.asarray(insert_tokens(prompts, soft)))
                     for steps, soft in softs.items()}
  budget = {"name": "steps (x tokens)", "steps": list(checkpoints), "tokens": settings.soft_tokens,
            "learning_rate": settings.soft_lr, "train_prompts": len(entries),
            "budget": [steps * settings.soft_tokens for steps in checkpoints]}
  return budget, rates
