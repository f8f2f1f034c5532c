"""An exact, deterministic (not learned) classifier of toy-world videos.

Candidates = pixels farther than `FOREGROUND` (RGB distance, values in [0, 1]) from both greys the
background takes in their frame (plain and patterned, `world.background`), without 8-connected specks
smaller than `MIN_BLOB` pixels (noise). Then:
  colour: a blurred or dimmed object's pixels lie on the segment from the background to its colour, so
          each palette colour is scored by the median distance of the candidates to its segment; the
          best one, or "other" when that distance exceeds `OTHER_COLOUR` or the object reaches less
          than `MIN_STRENGTH` of the way to it (an off-palette or washed-out object, e.g. grey);
  mask:   candidates at least half as far from the background as the object's colour, or as the
          frame's brightest tenth of candidates where the object is dimmer (where a blurred step edge
          crosses its midpoint), specks dropped again;
  shape:  per visible frame, IoU of the mask with each 7x7 template placed at the mask's centroid
          (+-1 px); the shape with the best mean IoU, or "other" when that is below `MIN_SHAPE_IOU`;
  motion: least-squares velocity (px/frame) of the centroid track: "still" below half of `SPEED`,
          else the dominant axis, or "other" when the motion is diagonal (minor axis > half the major);
  pattern: the pixels whose brightness above their frame's grey, averaged over the frames where they are
          background (not within a pixel of a candidate), exceeds half the pattern's contrast, against
          each pattern's pixels: the pattern (or `NONE` for a plain background) that agrees on the
          largest share, or "other" when that is below `MIN_PATTERN`.
With no object visible in any frame, colour, shape and motion are all "none": what a video whose whole
object was erased looks like (an object nearer than `FOREGROUND` to the background counts as absent);
the pattern is still read. Motion is "none" too when the object is visible in a single frame.

Value ranges: uint8 arrays are read as [0, 255]; float arrays as [-1, 1] (the model's convention, what
`world.render` returns) unless `value_range` says otherwise, e.g. (0, 1) for the pipeline's float
frames. Values up to 10% of the range outside it (an unclipped model output) are clipped; anything
further is refused, as are wrong shapes, dtypes and non-finite values.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from t2vu_jax.toy.world import (COLOURS, KINDS, NONE, OBJECT, OBJECT_KINDS, PATTERN_CONTRAST, PATTERNS,
                                SHAPES, SPEED, Scene, levels, pattern_mask)

FOREGROUND = 0.3
MIN_BLOB = 3
OTHER_COLOUR = 0.25
MIN_STRENGTH = 0.65
MIN_SHAPE_IOU = 0.5
MIN_PATTERN = 0.9
OTHER = "other"
_PALETTE = np.array(list(COLOURS.values()), np.float32)
_EIGHT = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True, eq=False)
class Reading:
  """What the classifier sees in one video (see the module docstring for the values' meaning).

  mask (F, H, W) bool object pixels; track (F, 2) float centroid (x, y), NaN where the object is absent;
  velocity (vx, vy) px/frame; colour_distance the median distance of the object's pixels to the segment
  from the background to the chosen colour; shape_iou the chosen shape's mean IoU; shape_ious every
  shape's; pattern_agreement the share of background pixels that agree with the chosen pattern.
  """
  colour: str
  shape: str
  motion: str
  pattern: str
  mask: np.ndarray = dataclasses.field(repr=False)
  track: np.ndarray = dataclasses.field(repr=False)
  velocity: tuple[float, float]
  colour_distance: float
  shape_iou: float
  shape_ious: dict = dataclasses.field(repr=False)
  pattern_agreement: float = 1.0

  @property
  def visible(self) -> int:
    """Number of frames in which the object is visible."""
    return int(self.mask.any(axis=(1, 2)).sum())

  @property
  def ok(self) -> bool:
    """Whether the object's attributes were read as values of the world (not "none" or "other") and the
    background as plain or a pattern of the world."""
    return all(getattr(self, k) not in (NONE, OTHER) for k in OBJECT_KINDS) and self.pattern != OTHER

  def matches(self, scene: Scene) -> dict[str, bool]:
    """kind -> whether this reading agrees with `scene` on it."""
    return {k: getattr(self, k) == scene.value(k) for k in KINDS}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two boolean masks of one shape; 1.0 when both are empty."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
  union = (a | b).sum()
  return float((a & b).sum() / union) if union else 1.0


def to_unit(video, value_range: tuple[float, float] | None = None, batched: bool = False) -> np.ndarray:
  """A validated float32 copy of `video` (..., F, H, W, 3) with values in [0, 1]."""
  name = "videos" if batched else "video"
  try:
    arr = np.asarray(video)
  except Exception as e:
    raise ValueError(f"{name} cannot be read as an array: {e}") from None
  ndim = 5 if batched else 4
  want = "(B, F, H, W, 3)" if batched else "(F, H, W, 3)"
  if arr.ndim != ndim:
    raise ValueError(f"{name} must be {want}, got an array of shape {arr.shape}")
  if arr.shape[-1] != 3:
    raise ValueError(f"{name} must have 3 (RGB) channels last, got shape {arr.shape}")
  if arr.shape[-4] < 2:
    raise ValueError(f"{name} needs at least 2 frames to read motion, got shape {arr.shape}")
  if min(arr.shape[-3:-1]) < OBJECT:
    raise ValueError(f"{name} frames must be at least {OBJECT}x{OBJECT} pixels, got shape {arr.shape}")
  if arr.dtype == np.uint8:
    lo, hi = (0.0, 255.0) if value_range is None else value_range
  elif arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
    lo, hi = (-1.0, 1.0) if value_range is None else value_range
  else:
    raise ValueError(f"{name} must be uint8 or floating point, got dtype {arr.dtype}")
  lo, hi = float(lo), float(hi)
  if not hi > lo:
    raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
  arr = arr.astype(np.float32)
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} contains NaN or infinite values")
  margin = 0.1 * (hi - lo)
  if arr.size and (arr.min() < lo - margin or arr.max() > hi + margin):
    raise ValueError(f"{name} values span [{arr.min():.4g}, {arr.max():.4g}], outside the expected range "
                     f"[{lo:g}, {hi:g}]: pass value_range (uint8 is read as [0, 255], floats as [-1, 1])")
  return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _drop_specks(fg: np.ndarray) -> np.ndarray:
  fg = fg.copy()
  for t in range(len(fg)):
    labels, n = ndimage.label(fg[t], structure=_EIGHT)
    if n:
      fg[t] &= np.bincount(labels.ravel())[labels] >= MIN_BLOB
  return fg


def _colour(frames: np.ndarray, candidate: np.ndarray) -> tuple[str, float, np.ndarray]:
  """(colour, median distance of the candidates to its segment, (F,) its contrast with each frame's
  plain background)."""
  grey = levels(len(frames))
  base = np.broadcast_to(grey[:, None, None, None], frames.shape)[candidate]  # (N, 3)
  d = frames[candidate] - base
  u = _PALETTE[None] - base[:, None]  # (N, C, 3)
  alpha = np.clip((d[:, None] * u).sum(-1) / (u * u).sum(-1), 0.0, 1.0)  # (N, C)
  residual = np.linalg.norm(d[:, None] - alpha[..., None] * u, axis=-1)
  score = np.median(residual, axis=0)
  i = int(score.argmin())
  peak = float(np.percentile(alpha[:, i], 90))
  if score[i] > OTHER_COLOUR or peak < MIN_STRENGTH:
    return OTHER, float(score[i]), np.full(len(frames), float(np.percentile(np.linalg.norm(d, axis=1), 90)))
  return list(COLOURS)[i], float(score[i]), np.linalg.norm(_PALETTE[i][None] - grey[:, None], axis=-1)


def _background_distance(frames: np.ndarray) -> np.ndarray:
  """(F, H, W) RGB distance of every pixel to the nearer of its frame's two background greys."""
  grey = levels(len(frames))[:, None, None, None]
  return np.minimum(np.linalg.norm(frames - grey, axis=-1), np.linalg.norm(frames - grey - PATTERN_CONTRAST, axis=-1))


def foreground(frames: np.ndarray) -> tuple[np.ndarray, str, float, np.ndarray]:
  """(object mask (F, H, W) bool, colour, colour distance, candidates (F, H, W) bool) of (F, H, W, 3)
  frames in [0, 1].

  Pixels farther than `FOREGROUND` from both background greys of their frame are candidates; the mask
  keeps those at least half as far as the object's colour, or as its brightest tenth of candidates in
  that frame where those are nearer (where a blurred step edge crosses its midpoint).
  """
  dist = _background_distance(frames)
  candidate = _drop_specks(dist > FOREGROUND)
  if not candidate.any():
    return candidate, NONE, float("inf"), candidate
  colour, distance, peak = _colour(frames, candidate)
  for t in range(len(frames)):  # a dimmed object's edges cross half of its own contrast, not the palette's
    if candidate[t].any():
      peak[t] = min(peak[t], np.percentile(dist[t][candidate[t]], 90))
  return _drop_specks(candidate & (dist >= 0.5 * peak[:, None, None])), colour, distance, candidate


def read_pattern(frames: np.ndarray, candidate: np.ndarray) -> tuple[str, float]:
  """(pattern or `NONE` or "other", share of background pixels agreeing with it) of (F, H, W, 3) frames
  in [0, 1] whose object candidates are `candidate`. A pattern does not move, so each pixel's brightness
  over its frame's grey is averaged over the frames where it is background (away from the object)."""
  f, h, w = candidate.shape
  background = ~ndimage.binary_dilation(candidate, structure=np.ones((1, 3, 3), bool))
  seen = background.any(0)
  if not seen.any():
    return OTHER, 0.0
  above = np.where(background, frames.mean(-1) - levels(f)[:, None, None], 0.0).sum(0)
  bright = (above[seen] / background.sum(0)[seen]) > 0.5 * PATTERN_CONTRAST
  agreement = {name: float((pattern_mask(name, h, w)[seen] == bright).mean()) for name in (NONE, *PATTERNS)}
  best = max(agreement, key=agreement.get)
  return (best if agreement[best] >= MIN_PATTERN else OTHER), agreement[best]


def _shape_ious(mask, track) -> dict[str, float]:
  f, h, w = mask.shape
  pad = OBJECT + 2
  out = {}
  for name, template in SHAPES.items():
    ys, xs = np.nonzero(template)
    centre = np.array([xs.mean(), ys.mean()])
    scores = []
    for t in range(f):
      if not mask[t].any():
        continue
      frame = np.pad(mask[t], pad)
      area = mask[t].sum()
      x, y = np.rint(track[t] - centre).astype(int) + pad
      best = 0.0
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          r, c = y + dy, x + dx
          if r < 0 or c < 0 or r + OBJECT > h + 2 * pad or c + OBJECT > w + 2 * pad:
            continue
          inter = (frame[r:r + OBJECT, c:c + OBJECT] & template).sum()
          best = max(best, inter / (area + template.sum() - inter))
      scores.append(best)
    out[name] = float(np.mean(scores))
  return out


def _motion(track) -> tuple[str, tuple[float, float]]:
  seen = ~np.isnan(track[:, 0])
  if seen.sum() < 2:
    return NONE, (float("nan"), float("nan"))
  t = np.nonzero(seen)[0].astype(np.float64)
  v = np.polyfit(t, track[seen], 1)[0]  # slope of x and of y
  vx, vy = float(v[0]), float(v[1])
  major, minor = max(abs(vx), abs(vy)), min(abs(vx), abs(vy))
  if major < 0.5 * SPEED:
    return "still", (vx, vy)
  if minor > 0.5 * major:
    return OTHER, (vx, vy)
  if abs(vx) >= abs(vy):
    return ("left" if vx < 0 else "right"), (vx, vy)
  return ("up" if vy < 0 else "down"), (vx, vy)


def classify(video, value_range: tuple[float, float] | None = None) -> Reading:
  """Read colour, shape, motion, the background pattern and the object mask from one video (F, H, W, 3)."""
  frames = to_unit(video, value_range)
  mask, colour, distance, candidate = foreground(frames)
  pattern, agreement = read_pattern(frames, candidate)
  track = np.full((len(mask), 2), np.nan)
  for t in range(len(mask)):
    ys, xs = np.nonzero(mask[t])
    if len(xs):
      track[t] = xs.mean(), ys.mean()
  if not mask.any():
    nan = float("nan")
    return Reading(NONE, NONE, NONE, pattern, mask, track, (nan, nan), float("inf"), 0.0, {s: 0.0 for s in SHAPES},
                   agreement)
  ious = _shape_ious(mask, track)
  shape = max(ious, key=ious.get)
  motion, velocity = _motion(track)
  return Reading(colour, shape if ious[shape] >= MIN_SHAPE_IOU else OTHER, motion, pattern, mask, track, velocity,
                 distance, ious[shape], ious, agreement)


def classify_batch(videos, value_range: tuple[float, float] | None = None) -> list[Reading]:
  """`classify` for each video of a batch (B, F, H, W, 3)."""
  to_unit(videos, value_range, batched=True)  # validate the whole batch before reading any of it
  return [classify(v, value_range) for v in np.asarray(videos)]
