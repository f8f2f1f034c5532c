"""RECE: a closed-form erasure of Wan's cross-attention (Gong et al. 2024, after UCE), a training-free
baseline for the eraser method.

Every block's cross-attention reads the text through `to_k` and `to_v` (kernels K of shape (D, D), rows
x ↦ x K + b) applied to the context x = text_embedder(E(prompt)). With the contexts of the concept
phrase's tokens X_c, the contexts they should look like X_t (the empty prompt's first token, or the
mean token of the prompt without the concept) and contexts to preserve X_p (every token of the
preserve prompts, the erase prompts' other tokens and the padding), the edit of each kernel is

    Δ = argmin |X_c (K + Δ) − X_t K|² / n_c + λ |X_p Δ|² / n_p + μ |Δ|²
      = (X_cᵀ X_c / n_c + λ X_pᵀ X_p / n_p + μ I)⁻¹ X_cᵀ (X_t − X_c) K / n_c,

one D x D solve shared by every kernel. The mean over rows (UCE sums them) keeps λ's meaning whatever
the sizes of the pools: λ = 1 weighs a preserved context as much as a concept one. RECE then derives,
in closed form, the context the edited model maps onto the concept's original keys and values,

    e = argmin Σ_K |e K' − c K|² + γ |e|² = (Σ_K c K K'ᵀ)(Σ_K K' K'ᵀ + γ I)⁻¹   (c: the mean concept context),

adds it to the concept rows (with the same target) and edits the original kernels again, for
`iterations` rounds. Solves run in float64 on the host.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.erase.prompts import anchor_prompt, token_spans
from t2vu_jax.models.wan import WanTransformer

TARGETS = ("empty", "anchor")
PROJECTIONS = ("to_k", "to_v")


@dataclasses.dataclass(frozen=True)
class RECEConfig:
  target: str = "empty"          # what concept tokens are mapped to: the empty prompt, or the prompt without them
  preserve_weight: float = 1.0   # λ
  ridge: float = 0.1             # μ, relative to the mean squared norm of a concept row
  iterations: int = 3            # rounds of adversarial contexts after the first edit
  adversarial_ridge: float = 0.1  # γ, relative to the mean squared singular value of the edited kernels

  def __post_init__(self):
    if self.target not in TARGETS:
      raise ValueError(f"target {self.target!r} is unknown; choose one of {TARGETS}")
    if self.preserve_weight < 0 or self.ridge <= 0 or self.adversarial_ridge <= 0:
      raise ValueError("preserve_weight must be >= 0, ridge and adversarial_ridge > 0")
    if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
      raise ValueError(f"iterations must be an integer >= 0, got {self.iterations!r}")


def edit_solve(x_c, x_t, x_p, preserve_weight: float, ridge: float) -> np.ndarray:
  """The (D, D) map S with Δ = S K for every kernel K (see the module)."""
  x_c, x_t, x_p = (np.asarray(a, np.float64) for a in (x_c, x_t, x_p))
  n_c, n_p, d = len(x_c), max(len(x_p), 1), x_c.shape[1]
  gram = x_c.T @ x_c / n_c + preserve_weight * (x_p.T @ x_p) / n_p + ridge * np.eye(d)
  return np.linalg.solve(gram, x_c.T @ (x_t - x_c) / n_c)


def adversarial_context(concept, kernels, edited, ridge: float) -> np.ndarray:
  """The context whose edited projections best reproduce `concept`'s original ones (see the module)."""
  concept = np.asarray(concept, np.float64)
  lhs = sum(k2 @ k2.T for k2 in edited) + ridge * np.eye(concept.shape[-1])
  rhs = sum((concept @ k) @ k2.T for k, k2 in zip(kernels, edited))
  return np.linalg.solve(lhs.T, rhs.T).T


def cross_attention_kernels(model: WanTransformer) -> dict[str, np.ndarray]:
  """{"to_k", "to_v"}: every block's attn2 kernel, stacked (L, D, D), as float64."""
  return {p: np.asarray(getattr(model.blocks.attn2, p).kernel[...], np.float64) for p in PROJECTIONS}


def contexts(model: WanTransformer, embeddings) -> np.ndarray:
  """text_embedder(E) (B, L, D) as float64: what every block's cross-attention projects."""
  return np.asarray(model.condition_embedder.text_embedder(jnp.asarray(embeddings, jnp.float32)), np.float64)


def edit_rows(pipe, model: WanTransformer, erase_entries, preserve_prompts, cfg: RECEConfig):
  """(X_c, X_t, X_p) of `model` (the pipeline's transformer or an expert of it): concept tokens, their
  targets, preserved contexts."""
  erase_entries = list(erase_entries)
  with_concept = np.asarray(pipe.encode([e.prompt for e in erase_entries]))
  spans = token_spans(pipe.tokenizer, erase_entries, with_concept.shape[1]).astype(bool)
  ctx = contexts(model, with_concept)
  tokens = np.any(with_concept != 0, axis=-1)
  x_c = ctx[spans]
  if cfg.target == "empty":
    x_t = np.broadcast_to(contexts(model, pipe.encode([""]))[0, 0], x_c.shape)
  else:
    anchors = np.asarray(pipe.encode([anchor_prompt(e) for e in erase_entries]))
    a_ctx, a_tokens = contexts(model, anchors), np.any(anchors != 0, axis=-1)
    means = (a_ctx * a_tokens[..., None]).sum(1) / np.maximum(a_tokens.sum(1, keepdims=True), 1)
    x_t = np.repeat(means, spans.sum(1), axis=0)  # each concept token to its own prompt's anchor
  kept = [ctx[tokens & ~spans], contexts(model, np.zeros((1, 1, with_concept.shape[-1]), np.float32))[0]]
  if preserve_prompts:
    pre = np.asarray(pipe.encode(list(preserve_prompts)))
    kept.append(contexts(model, pre)[np.any(pre != 0, axis=-1)])
  return x_c, np.array(x_t), np.concatenate(kept)


def rece_kernels(kernels: dict[str, np.ndarray], x_c, x_t, x_p, cfg: RECEConfig) -> tuple[dict, list]:
  """(edited kernels, the adversarial contexts found), every layer and projection edited from `kernels`."""
  flat = [kernels[p][i] for p in PROJECTIONS for i in range(kernels[p].shape[0])]
  scale = float(np.mean(np.sum(np.asarray(x_c, np.float64) ** 2, axis=1)))
  concept = np.asarray(x_c, np.float64).mean(0, keepdims=True)
  target = np.asarray(x_t, np.float64).mean(0, keepdims=True)
  found = []
  while True:
    rows_c = np.concatenate([x_c, *found])
    rows_t = np.concatenate([x_t, *([target] * len(found))])
    solve = edit_solve(rows_c, rows_t, x_p, cfg.preserve_weight, cfg.ridge * scale)
    edited = {p: kernels[p] + np.einsum("de,lef->ldf", solve, kernels[p]) for p in PROJECTIONS}
    if len(found) == cfg.iterations:
      return edited, found
    new_flat = [edited[p][i] for p in PROJECTIONS for i in range(edited[p].shape[0])]
    sv = float(np.mean([np.mean(np.linalg.svd(k, compute_uv=False) ** 2) for k in new_flat]))
    found.append(adversarial_context(concept, flat, new_flat, cfg.adversarial_ridge * sv))


def with_kernels(model: WanTransformer, kernels: dict[str, np.ndarray]) -> WanTransformer:
  """A copy of `model` whose attn2 to_k and to_v kernels are `kernels` (each (L, D, D))."""
  model = nnx.clone(model)
  for p in PROJECTIONS:
    param = getattr(model.blocks.attn2, p).kernel
    if tuple(param[...].shape) != tuple(np.shape(kernels[p])):
      raise ValueError(f"RECE kernels {p} have shape {np.shape(kernels[p])}, the model's {tuple(param[...].shape)}")
    param[...] = jnp.asarray(kernels[p], param[...].dtype)
  return model


def rece_edit(pipe, erase_entries, preserve_prompts, cfg: RECEConfig, model: WanTransformer | None = None
              ) -> tuple[dict[str, np.ndarray], dict]:
  """RECE's edited attn2 to_k and to_v kernels of `model` (default: the pipeline's transformer), and what
  was done: {"concept_rows", "preserved_rows", "adversarial", "max_relative_change"}."""
  model = pipe.transformer if model is None else model
  x_c, x_t, x_p = edit_rows(pipe, model, erase_entries, preserve_prompts, cfg)
  kernels = cross_attention_kernels(model)
  edited, found = rece_kernels(kernels, x_c, x_t, x_p, cfg)
  change = max(float(np.linalg.norm(edited[p] - kernels[p]) / np.linalg.norm(kernels[p])) for p in PROJECTIONS)
  return edited, {"concept_rows": len(x_c), "preserved_rows": len(x_p), "adversarial": len(found),
                  "max_relative_change": change}
