"""The T2VUnlearning objective (DESIGN §5): negatively guided target, localization, preservation.

With the erasers off, v_a = v(x_t, a, t) and v_c = v(x_t, c, t); the target is v_a − η_σ(v_c − v_a) and
  L_u   = mean(w · (v′(x_t, c, t) − target)²)           (w = 1, or σ_t² per sample)
  L_loc = mean_l,b [ Σ_s mean_d(o_l²)(1 − M_l) / (Σ_s (1 − M_l) + 1e-9) ]
  L_pre = mean((v′(x_pre, c_pre, t_pre) − v(x_pre, c_pre, t_pre))²)
  L     = L_u + λ_loc L_loc + λ_pre L_pre
where v′ is the model with erasers on, o_l the layer-l eraser output and M_l the layer-l concept mask
from the erasers-off cross-attention on c (heads averaged, summed over the concept's tokens,
min–max normalised per latent frame, thresholded).

The anchor a is the empty prompt ∅ (the paper's target, `anchor="empty"`), or, with `anchor="prompt"`,
each prompt with its concept phrase removed (`prompts.anchor_prompt`): v_c − v_a then isolates what the
concept adds, so the target steers away from the concept alone and keeps the rest of the prompt.

With `anchor="replace"` the anchor is the prompt with one of `replacements` in place of the concept
phrase (`prompts.replaced_prompt`, one drawn per training point), and the training point lies on the
anchor's own trajectory. With η = 0 the target is then the anchor's velocity where the anchor's videos
are: regressing on points of trajectories of several replacements, the erased model learns the velocity
of their mixture (at each x_t the average of their velocities weighted by how likely each replacement
is to pass there), so the concept prompt draws what the replacements draw, with the rest of the prompt,
and nothing is pushed past an anchor.

With `adversarial` (AdvUnlearn / RECE-style robustness) the erase prompts carry an inner attack: k
soft tokens after each prompt's tokens (`text.insert_tokens`), which the train step updates against the
erased model so that it reproduces the base model's concept velocity v_c; v′ is then computed on the
attacked prompt (`cond_attack`) while the target still comes from the plain one, so the erasers learn to
erase the concept however it is asked for.

η_σ = η where the training point's σ >= `guidance_sigma_min` and 0 below: there the target is the
anchor's own velocity, so the erased model lands on what the anchor draws instead of extrapolating past
it while details form. With the default 0 the guidance applies at every noise level (the paper's target).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from t2vu_jax.models.wan import WanTransformer

F32 = jnp.float32
ANCHORS = ("empty", "prompt", "replace")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  eta: float = 1.0              # negative guidance strength
  threshold: float = 0.1        # localization mask: normalised attention > threshold
  lambda_loc: float = 1.0
  lambda_pre: float = 1.0
  sigma_weighting: bool = False  # weight L_u by σ_t² (x0-space matching)
  anchor: str = "empty"          # the target's anchor: "" ("empty"), the prompt minus the concept ("prompt"),
  #                                or the prompt with a replacement phrase for the concept ("replace")
  replacements: str = ""         # with anchor "replace": "p1, p2" for every concept, or "concept: p1, p2; ..."
  guidance_sigma_min: float = 0.0  # below this σ the target is v_a (no negative guidance)
  adversarial: bool = False      # an inner soft-prompt attack on the erase prompts
  adversarial_tokens: int = 4    # its soft tokens
  adversarial_steps: int = 1     # its normalised-gradient steps per update
  adversarial_every: int = 1     # it is updated every n train steps
  adversarial_lr: float = 0.05   # its step size, in units of the soft tokens' per-entry RMS gradient

  def __post_init__(self):
    if self.anchor not in ANCHORS:
      raise ValueError(f"objective anchor {self.anchor!r} is unknown; choose one of {ANCHORS}")
    if self.anchor == "replace" and not self.replacements.strip():
      raise ValueError("objective anchor 'replace' needs its replacement phrases (objective.replacements)")
    if not 0.0 <= self.guidance_sigma_min <= 1.0:
      raise ValueError(f"objective guidance_sigma_min must be in [0, 1], got {self.guidance_sigma_min}")
    if not 0.0 <= self.threshold < 1.0:
      raise ValueError(f"objective threshold must be in [0, 1), got {self.threshold}")
    for name in ("eta", "lambda_loc", "lambda_pre"):
      if getattr(self, name) < 0:
        raise ValueError(f"objective {name} must be >= 0, got {getattr(self, name)}")
    for name in ("adversarial_tokens", "adversarial_steps", "adversarial_every"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"objective {name} must be a positive integer, got {value!r}")
    if not self.adversarial_lr > 0:
      raise ValueError(f"objective adversarial_lr must be positive, got {self.adversarial_lr}")


class ErasureBatch(NamedTuple):
  """One training batch, built with keywords. Without `x_t` (and `t`, `sigma`) the train step samples
  its training points from fresh trajectories; the preservation fields are None when there is no
  preservation set."""
  cond: jax.Array          # (B, L, text_dim) concept prompt embeddings
  uncond: jax.Array        # (B, L, text_dim) empty prompt embeddings
  concept_mask: jax.Array  # (B, L) 1 on the concept's tokens
  x_t: jax.Array | None = None    # (B, C, F, H, W) latents on a trajectory of the concept prompt
  t: jax.Array | None = None      # (B,) their timestep
  sigma: jax.Array | None = None  # (B,) their sigma
  x_pre: jax.Array | None = None
  t_pre: jax.Array | None = None
  cond_pre: jax.Array | None = None
  anchor: jax.Array | None = None  # (B, L, text_dim) anchor prompt embeddings (objective anchor "prompt", "replace")
  cond_attack: jax.Array | None = None  # (B, L, text_dim) the concept prompts under the inner attack
  text_padding: jax.Array | None = None  # () padding rows the contexts' last row stands for (`text.collapse_padding`)


def token_grid(model: WanTransformer, latent_shape) -> tuple[int, int, int]:
  """(F', H', W') of the patch tokens of latents shaped (B, C, F, H, W)."""
  pt, ph, pw = model.config.patch_size
  _, _, f, h, w = latent_shape
  return f // pt, h // ph, w // pw


def localization_masks(concept_attention, grid: tuple[int, int, int], threshold: float):
  """Binary masks (..., S) from concept attention (..., S): min–max normalised per latent frame over
  (h, w), then > threshold. A frame with a constant map gets an empty mask."""
  f, h, w = grid
  a = concept_attention.astype(F32).reshape(*concept_attention.shape[:-1], f, h * w)
  lo, hi = a.min(-1, keepdims=True), a.max(-1, keepdims=True)
  normalised = (a - lo) / (hi - lo + 1e-8)
  return (normalised > threshold).astype(F32).reshape(concept_attention.shape)


def erasure_loss(model: WanTransformer, batch: ErasureBatch, cfg: ObjectiveConfig):
  """(L, metrics) for `model` with erasers attached; only the eraser path carries gradients."""
  b = batch.x_t.shape[0]
  dtype = model.dtype
  x_t = batch.x_t.astype(dtype)
  if (cfg.anchor != "empty") != (batch.anchor is not None):
    raise ValueError(f"objective anchor {cfg.anchor!r} needs a batch "
                     + ("without anchor embeddings" if cfg.anchor == "empty" else "with anchor embeddings"))
  cond = batch.cond.astype(dtype)
  anchor = (batch.uncond if batch.anchor is None else batch.anchor).astype(dtype)

  preserve = batch.x_pre is not None
  x_pre = batch.x_pre.astype(dtype) if preserve else x_t[:0]
  cond_pre = batch.cond_pre.astype(dtype) if preserve else cond[:0]
  t_pre = batch.t_pre if preserve else batch.t[:0]
  p = x_pre.shape[0]

  # Erasers off, in one batched forward: v_c (with its concept attention), v_a, and the preservation
  # prompt's kept velocity.
  none = jnp.zeros_like(batch.concept_mask)
  concept_mask = jnp.concatenate([batch.concept_mask, none, jnp.zeros((p, none.shape[1]), none.dtype)])
  off, aux = model(jnp.concatenate([x_t, x_t, x_pre]), jnp.concatenate([batch.t, batch.t, t_pre]),
                   jnp.concatenate([cond, anchor, cond_pre]), erasers=False, concept_mask=concept_mask,
                   return_aux=True, text_padding=batch.text_padding)
  off = jax.lax.stop_gradient(off.astype(F32))
  v_cond, v_anchor, kept = off[:b], off[b:2 * b], off[2 * b:]
  masks = localization_masks(jax.lax.stop_gradient(aux.concept_attention[:, :b]),
                             token_grid(model, batch.x_t.shape), cfg.threshold)
  eta = cfg.eta
  if cfg.guidance_sigma_min > 0:
    if batch.sigma is None:
      raise ValueError("objective guidance_sigma_min needs the training points' sigma in the batch")
    eta = jnp.where(batch.sigma.astype(F32) >= cfg.guidance_sigma_min, cfg.eta, 0.0).reshape(b, 1, 1, 1, 1)
  target = v_anchor - eta * (v_cond - v_anchor)

  # Erasers on, in one batched forward: the concept prompt (attacked, with `adversarial`; its
  # localization term counts) and the preservation prompt.
  loc_masks = jnp.concatenate([masks, jnp.zeros((masks.shape[0], p, *masks.shape[2:]), masks.dtype)], axis=1)
  cond_on = cond if batch.cond_attack is None else batch.cond_attack.astype(dtype)
  on, aux_on = model(jnp.concatenate([x_t, x_pre]), jnp.concatenate([batch.t, t_pre]),
                     jnp.concatenate([cond_on, cond_pre]), loc_masks=loc_masks, return_aux=True,
                     text_padding=batch.text_padding)
  on = on.astype(F32)
  err = jnp.square(on[:b] - target)
  if cfg.sigma_weighting:
    err = err * jnp.square(batch.sigma.astype(F32)).reshape(b, 1, 1, 1, 1)
  l_u = jnp.mean(err)
  l_loc = jnp.mean(aux_on.localization[:, :b])
  l_pre = jnp.mean(jnp.square(on[b:] - kept)) if preserve else jnp.zeros((), F32)

  loss = l_u + cfg.lambda_loc * l_loc + cfg.lambda_pre * l_pre
  metrics = {"loss": loss, "l_u": l_u, "l_loc": l_loc, "l_pre": l_pre, "mask_coverage": jnp.mean(masks)}
  return loss, metrics
