"""Scores of toy-world erasure experiments, from the exact classifier's readings.

  ESR  erasure success rate: share of videos prompted with the erased value whose reading of its
       attribute is anything else (another value, "other" or "none");
  PSR  preservation success rate: accuracy of that attribute on prompts naming the other values;
  attribute preservation: accuracy of the erased element's other attributes on prompts naming the
       erased value (the object's two others for a colour, shape or motion; none for a pattern);
  other element kept: share of two-element scenes among those whose other element (the background
       pattern for an object attribute, the whole object for a pattern) reads right;
  plausible share: share of readings of the erased attribute that are values the base model draws for
       prompts that leave the attribute unnamed (not an "opposite concept" artefact, nor nothing);
  localization IoU: the binarised cross-attention concept mask (thresholded as the localization loss
       does it), upsampled from the patch-token grid to pixels, against the true object mask; its
       ceiling `best_token_iou` is what the best possible mask on that grid reaches.

`readings` are `classifier.Reading`s (anything with `colour`, `shape`, `motion`, `pattern` attributes);
`scenes` are `world.Scene`s (anything with `value(kind)`, the pattern `world.NONE` in single-element ones).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from t2vu_jax.toy.classifier import mask_iou
from t2vu_jax.toy.world import KINDS, NONE, OBJECT_KINDS, VALUES


def _kind(kind: str) -> str:
  if kind not in KINDS:
    raise ValueError(f"unknown attribute kind {kind!r} (kinds: {list(KINDS)})")
  return kind


def _check(kind: str, readings: Sequence, scenes: Sequence | None = None) -> None:
  _kind(kind)
  if not len(readings):
    raise ValueError("no readings to score")
  if scenes is not None and len(scenes) != len(readings):
    raise ValueError(f"{len(readings)} readings for {len(scenes)} scenes")


def erasure_success_rate(readings: Sequence, kind: str, erased: str) -> float:
  """Share of `readings` whose `kind` is not the erased value."""
  _check(kind, readings)
  return float(np.mean([getattr(r, kind) != erased for r in readings]))


def accuracy(readings: Sequence, scenes: Sequence, kind: str) -> float:
  """Share of `readings` that agree with their scene on `kind` (PSR on the other values' prompts)."""
  _check(kind, readings, scenes)
  return float(np.mean([getattr(r, kind) == s.value(kind) for r, s in zip(readings, scenes)]))


def element_kinds(kind: str) -> tuple[str, ...]:
  """The attributes of the element `kind` belongs to: the object's three, or the pattern alone."""
  return OBJECT_KINDS if _kind(kind) in OBJECT_KINDS else ("pattern",)


def other_kinds(kind: str) -> tuple[str, ...]:
  """The erased element's attributes besides `kind`, in `KINDS` order (none for the pattern)."""
  return tuple(k for k in element_kinds(kind) if k != kind)


def other_element(kind: str) -> tuple[str, ...]:
  """The attributes of the element `kind` does not belong to."""
  return tuple(k for k in KINDS if k not in element_kinds(kind))


def attribute_preservation(readings: Sequence, scenes: Sequence, kind: str) -> dict[str, float]:
  """Accuracy of each of the erased element's other attributes, and of all of them at once ("both");
  empty for the pattern, which has no other attribute."""
  _check(kind, readings, scenes)
  others = other_kinds(kind)
  if not others:
    return {}
  hits = np.array([[getattr(r, k) == s.value(k) for k in others] for r, s in zip(readings, scenes)])
  return {**{k: float(hits[:, i].mean()) for i, k in enumerate(others)}, "both": float(hits.all(1).mean())}


def other_element_kept(readings: Sequence, scenes: Sequence, kind: str) -> float | None:
  """Share of the two-element scenes whose other element (see `other_element`) reads right in every
  attribute; None when no scene has two elements."""
  _check(kind, readings, scenes)
  kinds = other_element(kind)
  hits = [all(getattr(r, k) == s.value(k) for k in kinds) for r, s in zip(readings, scenes)
          if s.value("pattern") != NONE]
  return float(np.mean(hits)) if hits else None


def plausible_share(readings: Sequence, kind: str, support) -> float:
  """Share of `readings` whose `kind` is in `support`: the values the base model draws for prompts that
  leave `kind` unnamed (`drawn_values`), the erased one left out by the caller."""
  _check(kind, readings)
  support = set(support)
  return float(np.mean([getattr(r, kind) in support for r in readings]))


def drawn_values(readings: Sequence, kind: str) -> set[str]:
  """The world values of `kind` that occur among `readings` (not "other", nor "none" for the object)."""
  _check(kind, readings)
  allowed = set(VALUES[kind]) | ({NONE} if kind == "pattern" else set())
  return {getattr(r, kind) for r in readings} & allowed


def upsample_tokens(mask, grid: tuple[int, int, int], scale: tuple[int, int, int]) -> np.ndarray:
  """A per-token mask (..., S) with S = F'·H'·W' in (f, h, w) order as (..., F'·a, H'·b, W'·c) pixels,
  every token covering its `scale` = (a, b, c) block (nearest neighbour)."""
  mask = np.asarray(mask)
  f, h, w = grid
  if mask.shape[-1] != f * h * w:
    raise ValueError(f"a token mask of {mask.shape[-1]} tokens does not fit the grid {grid}")
  out = mask.reshape(*mask.shape[:-1], f, h, w)
  for axis, s in zip((-3, -2, -1), scale):
    out = np.repeat(out, s, axis=axis)
  return out


def localization_iou(concept_attention, grid: tuple[int, int, int], scale: tuple[int, int, int],
                     object_mask, threshold: float) -> np.ndarray:
  """Per-layer IoU (L,) of the binarised concept masks of one video's concept attention (L, S)
  against its true object mask (F, H, W). The masks are `objective.localization_masks` (min–max per
  latent frame, > threshold), upsampled by `scale` (patch size × latent stride) to pixels."""
  from t2vu_jax.erase.objective import localization_masks
  attention = np.asarray(concept_attention, np.float32)
  if attention.ndim != 2:
    raise ValueError(f"concept attention must be (layers, tokens), got shape {attention.shape}")
  masks = np.asarray(localization_masks(attention, grid, threshold)) > 0
  pixels = upsample_tokens(masks, grid, scale)
  object_mask = np.asarray(object_mask, bool)
  if pixels.shape[1:] != object_mask.shape:
    raise ValueError(f"the token grid {grid} at scale {scale} covers {pixels.shape[1:]} pixels, "
                     f"but the object mask is {object_mask.shape}")
  return np.array([mask_iou(m, object_mask) for m in pixels])


def best_token_iou(object_mask, scale: tuple[int, int, int]) -> float:
  """The highest IoU with `object_mask` (F, H, W) that any mask of whole `scale`-sized token blocks
  reaches: a token-level localization mask cannot do better. With blocks of equal size the best set is
  always the blocks covered above some fraction, so every such threshold is tried."""
  mask = np.asarray(object_mask, bool)
  if mask.ndim != 3 or any(n % s for n, s in zip(mask.shape, scale)):
    raise ValueError(f"object mask of shape {mask.shape} is not a (F, H, W) grid of {tuple(scale)} blocks")
  if not mask.any():
    return 1.0
  (f, h, w), (a, b, c) = mask.shape, scale
  coverage = mask.reshape(f // a, a, h // b, b, w // c, c).mean((1, 3, 5))
  return max(mask_iou(upsample_tokens((coverage >= q).ravel(), coverage.shape, scale), mask)
             for q in np.unique(coverage[coverage > 0]))


def noised(x0, noise, sigma: float):
  """The flow-matching latent x_t = (1 − σ) x0 + σ e at noise level σ (timestep 1000 σ)."""
  if not 0.0 <= sigma <= 1.0:
    raise ValueError(f"sigma must be in [0, 1], got {sigma}")
  return (1.0 - sigma) * np.asarray(x0) + sigma * np.asarray(noise)


def percent(x) -> str:
  """A rate as a whole percentage for tables; "–" where there is none."""
  return "–" if x is None else f"{100 * x:.0f}%"


class _Named(dict):
  """kind -> value read from a prompt, usable where a `world.Scene` is expected."""

  def value(self, kind: str) -> str:
    return self[kind]


def erased_concept(phrases: Sequence[str]) -> tuple[str, str]:
  """(kind, value) that every concept phrase of an erasure pool names, e.g. ("red", "crimson") ->
  ("colour", "red"); an error when they name several or none."""
  from t2vu_jax.toy.world import value_of
  found = set()
  for phrase in phrases:
    for kind in KINDS:
      try:
        found.add((kind, value_of(kind, phrase)))
      except ValueError:
        pass
  if len(found) != 1:
    raise ValueError(f"the concept phrases {sorted(phrases)} name {sorted(found) or 'no toy-world value'}; "
                     "a toy run erases exactly one attribute value")
  return found.pop()


def prompt_scores(prompts: Sequence[str], readings: Sequence, kind: str, value: str) -> dict:
  """One model's scores on free-form toy prompts: ESR, the erased element's other attributes and the
  other element on the prompts that name the erased `value`, PSR on those naming another value of
  `kind` (None where no prompt does)."""
  from t2vu_jax.toy.world import read_prompt
  if len(prompts) != len(readings):
    raise ValueError(f"{len(readings)} readings for {len(prompts)} prompts")
  named = [_Named(read_prompt(p)) for p in prompts]
  erased = [i for i, n in enumerate(named) if n[kind] == value]
  kept = [i for i, n in enumerate(named) if n[kind] != value]
  pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
  out = {"erased_prompts": len(erased), "other_prompts": len(kept), "esr": None, "psr": None, "attributes": None,
         "other_element": None}
  if erased:
    out["esr"] = erasure_success_rate(pick(readings, erased), kind, value)
    out["attributes"] = attribute_preservation(pick(readings, erased), pick(named, erased), kind)
    out["other_element"] = other_element_kept(pick(readings, erased), pick(named, erased), kind)
  if kept:
    out["psr"] = accuracy(pick(readings, kept), pick(named, kept), kind)
  return out
