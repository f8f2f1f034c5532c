"""`concept_vector`: a concept direction in the text-embedding space, added to prompts (Ring-A-Bell-style).

From prompt pairs with and without the concept (each erase-pool prompt and its anchor, the prompt with
the concept phrase removed), the direction is the mean over pairs of

    c_i = mean of E(p_i) over the concept phrase's tokens − mean of E(anchor_i) over its tokens,

a (D,) vector in UMT5's output space, and the attack adds s·c to every token of each prompt's
embedding (not the zero padding after it), for each strength s of the budget. Per token, because the
encoder's output is per position and removing the phrase shifts every later token: a whole-sequence
difference E(p) − E(anchor) compares misaligned tokens.
"""
from __future__ import annotations

import numpy as np

from t2vu_jax.erase.prompts import anchor_prompt, token_spans


def token_mask(embeddings: np.ndarray) -> np.ndarray:
  """(B, L) 1 on each prompt's tokens: Wan's prompt embeddings are zero after them."""
  return np.any(embeddings != 0, axis=-1).astype(np.float32)


def concept_direction(pipe, entries) -> np.ndarray:
  """The (D,) concept direction of erase entries (prompt, concept phrase) through `pipe`'s encoder."""
  entries = list(entries)
  with_concept = np.asarray(pipe.encode([e.prompt for e in entries]))
  without = np.asarray(pipe.encode([anchor_prompt(e) for e in entries]))
  spans = token_spans(pipe.tokenizer, entries, with_concept.shape[1])
  tokens = token_mask(without)
  concept = (with_concept * spans[..., None]).sum(1) / spans.sum(1, keepdims=True)
  context = (without * tokens[..., None]).sum(1) / np.maximum(tokens.sum(1, keepdims=True), 1)
  return (concept - context).mean(0)


def add_direction(embeddings: np.ndarray, direction: np.ndarray, strength: float) -> np.ndarray:
  return embeddings + strength * token_mask(embeddings)[..., None] * direction


def run(context) -> tuple[dict, dict]:
  strengths = context.settings.strength_values
  direction = concept_direction(context.pipe, context.erase_entries)
  prompts = context.embed(context.prompts)
  rates = {target: {f"{s:g}": context.concept_rate(target, add_direction(prompts, direction, s)) for s in strengths}
           for target in context.targets}
  return {"name": "strength", "strengths": list(strengths), "direction_norm": float(np.linalg.norm(direction))}, rates
