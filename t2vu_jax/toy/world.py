"""The toy world: one coloured shape moving over a dark background, and the prompts that describe it.

A scene is (colour, shape, motion, x0, y0): a 7x7 shape whose bounding box starts at column x0, row y0
and moves `SPEED` pixels per frame in its direction (rows grow downward, so "up" decreases y). Renders
are exact (no anti-aliasing), float32 RGB in [-1, 1] as the model sees them, default 5 frames of 16x16.

Every attribute value has several wordings; the last one (`HELD_OUT`) is never used in erasure
training prompts, only in pretraining and evaluation, so erasure can be tested on unseen wordings.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

FRAMES = 5  # 4k + 1 like Wan
SIZE = 16   # divisible by the DiT patch 2
OBJECT = 7  # side of every shape's bounding box, in pixels
SPEED = 2   # pixels per frame: a clear move between frames, not a one-pixel edge flicker
KINDS = ("colour", "shape", "motion")

BACKGROUND = (0.1, 0.1, 0.1)  # RGB in [0, 1]
COLOURS = {  # RGB in [0, 1]; nearest pair (red, yellow) is 0.75 apart, nearest to the background (green) 0.71
  "red": (0.9, 0.1, 0.1),
  "green": (0.1, 0.8, 0.2),
  "blue": (0.15, 0.3, 1.0),
  "yellow": (0.95, 0.85, 0.1),
  "white": (0.95, 0.95, 0.95),
}
_BITMAPS = {  # chosen so that no two overlap with IoU above 0.67 at their best alignment
  "square": ["#######"] * 7,
  "circle": ["..###..", ".#####.", "##...##", "##...##", "##...##", ".#####.", "..###.."],
  "triangle": ["...#...", "...#...", "..###..", "..###..", ".#####.", ".#####.", "#######"],
  "cross": ["..###..", "..###..", "#######", "#######", "#######", "..###..", "..###.."],
}
SHAPES = {name: np.array([[c == "#" for c in row] for row in rows]) for name, rows in _BITMAPS.items()}
for _m in SHAPES.values():
  _m.setflags(write=False)
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}  # (dx, dy)
VALUES = {"colour": tuple(COLOURS), "shape": tuple(SHAPES), "motion": tuple(MOTIONS)}

# value -> (training wordings, held-out wordings); held-out words occur in no training wording.
WORDINGS = {
  "colour": {
    "red": (("red", "crimson", "ruby"), ("scarlet",)),
    "green": (("green", "emerald", "lime"), ("jade",)),
    "blue": (("blue", "azure", "sapphire"), ("cobalt",)),
    "yellow": (("yellow", "golden", "lemon"), ("canary",)),
    "white": (("white", "snowy", "pearly"), ("ivory",)),
  },
  "shape": {
    "square": (("square", "box", "block"), ("tile",)),
    "circle": (("circle", "ring", "hoop"), ("loop",)),
    "triangle": (("triangle", "wedge", "pyramid"), ("arrowhead",)),
    "cross": (("cross", "plus", "plus sign"), ("crosshair",)),
  },
  "motion": {
    "left": (("moving left", "drifting to the left", "sliding leftward"), ("heading west",)),
    "right": (("moving right", "drifting to the right", "sliding rightward"), ("heading east",)),
    "up": (("moving up", "rising", "floating upward"), ("heading north",)),
    "down": (("moving down", "falling", "sinking downward"), ("heading south",)),
    "still": (("standing still", "not moving", "staying in place"), ("resting",)),
  },
}
# Sentence templates put each attribute phrase in several positions; "a" becomes "an" before a vowel.
TEMPLATES = (
  "a {colour} {shape} {motion}",
  "{motion}, a {colour} {shape}",
  "a {shape} in {colour}, {motion}",
  "there is a {colour} {shape} {motion} on a dark background",
  "a video of a {colour} {shape} {motion}",
  "the {shape} is {colour} and it is {motion}",
  "a {colour} {shape} that is {motion}",
)


def _check_value(kind: str, value: str) -> None:
  if kind not in VALUES:
    raise ValueError(f"unknown attribute kind {kind!r} (kinds: {list(KINDS)})")
  if value not in VALUES[kind]:
    raise ValueError(f"unknown {kind} {value!r} (known: {list(VALUES[kind])})")


def wordings(kind: str, value: str, held_out: bool | None = None) -> tuple[str, ...]:
  """The phrases naming `value`: training ones (held_out=False), held-out ones (True) or all (None)."""
  _check_value(kind, value)
  if held_out not in (None, False, True):
    raise ValueError(f"held_out must be None, False or True, got {held_out!r}")
  train, held = WORDINGS[kind][value]
  return {False: train, True: held, None: train + held}[held_out]


def value_of(kind: str, phrase: str) -> str:
  """The attribute value a wording names (inverse of `wordings`)."""
  for value, (train, held) in WORDINGS.get(kind, {}).items():
    if phrase in train + held:
      return value
  raise ValueError(f"{phrase!r} is not a {kind} wording of the toy world")


def is_held_out(kind: str, phrase: str) -> bool:
  """Whether a wording is held out of erasure training."""
  return phrase in WORDINGS[kind][value_of(kind, phrase)][1]


def read_prompt(text: str) -> dict[str, str]:
  """kind -> value named in a toy-world prompt (the inverse of `compose`, wording- and template-blind).

  Each kind's wordings are matched as whole words, longest first ("plus sign" before "plus").
  """
  words = f" {re.sub(r'[^a-z]+', ' ', text.lower()).strip()} "
  out = {}
  for kind in KINDS:
    phrases = sorted(((p, v) for v, (train, held) in WORDINGS[kind].items() for p in train + held),
                     key=lambda pv: -len(pv[0]))
    found = {v for p, v in phrases if f" {p} " in words}
    if len(found) != 1:
      what = "no" if not found else f"several ({sorted(found)})"
      raise ValueError(f"prompt {text!r} names {what} {kind} of the toy world")
    out[kind] = found.pop()
  return out


@dataclasses.dataclass(frozen=True)
class Scene:
  """One object: `colour`, `shape`, `motion` and its bounding box's top-left pixel (x0, y0) at frame 0."""
  colour: str
  shape: str
  motion: str
  x0: int
  y0: int

  def __post_init__(self):
    for kind in KINDS:
      _check_value(kind, getattr(self, kind))
    for key in ("x0", "y0"):
      v = getattr(self, key)
      if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"Scene.{key} must be an integer, got {type(v).__name__}")
      object.__setattr__(self, key, int(v))

  def value(self, kind: str):
    return getattr(self, kind)

  def corners(self, frames: int = FRAMES) -> np.ndarray:
    """(frames, 2) int top-left (x, y) of the object's box in each frame."""
    dx, dy = MOTIONS[self.motion]
    t = np.arange(frames)
    return np.stack([self.x0 + SPEED * dx * t, self.y0 + SPEED * dy * t], 1)

  def centroids(self, frames: int = FRAMES) -> np.ndarray:
    """(frames, 2) float (x, y) centroid of the object's pixels in each frame."""
    ys, xs = np.nonzero(SHAPES[self.shape])
    return self.corners(frames) + np.array([xs.mean(), ys.mean()])


def _check_size(frames: int, size: int) -> None:
  for name, v, lo in (("frames", frames, 1), ("size", size, OBJECT)):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def object_mask(scene: Scene, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
  """(frames, size, size) bool: the object's pixels. The object must stay inside the frame throughout."""
  _check_size(frames, size)
  corners = scene.corners(frames)
  if corners.min() < 0 or corners.max() > size - OBJECT:
    raise ValueError(f"{scene} leaves the {size}x{size} frame within {frames} frames")
  mask = np.zeros((frames, size, size), bool)
  for t, (x, y) in enumerate(corners):
    mask[t, y:y + OBJECT, x:x + OBJECT] = SHAPES[scene.shape]
  return mask


def render(scene: Scene, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
  """(frames, size, size, 3) float32 RGB in [-1, 1]: the scene, exactly, over the flat background."""
  mask = object_mask(scene, frames, size)
  video = np.where(mask[..., None], np.array(COLOURS[scene.colour]), np.array(BACKGROUND))
  return (video * 2 - 1).astype(np.float32)


def position_range(motion: str, frames: int = FRAMES, size: int = SIZE) -> tuple[range, range]:
  """The x0 and y0 that keep an object with `motion` inside the frame for all `frames`."""
  _check_value("motion", motion)
  _check_size(frames, size)
  travel = SPEED * (frames - 1)
  out = []
  for d in MOTIONS[motion]:
    lo, hi = (travel if d < 0 else 0), size - OBJECT - (travel if d > 0 else 0)
    if hi < lo:
      raise ValueError(f"an object moving {motion} at {SPEED} px/frame for {frames} frames does not fit "
                       f"in {size}x{size} pixels")
    out.append(range(lo, hi + 1))
  return out[0], out[1]


def _rng(rng) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_scenes(rng: np.random.Generator | int, n: int, frames: int = FRAMES, size: int = SIZE) -> list[Scene]:
  """`n` scenes with uniform colour, shape, motion and a uniform position among those that fit."""
  rng = _rng(rng)
  scenes = []
  for _ in range(n):
    c, s, m = (VALUES[k][rng.integers(len(VALUES[k]))] for k in KINDS)
    xs, ys = position_range(m, frames, size)
    scenes.append(Scene(c, s, m, int(xs[rng.integers(len(xs))]), int(ys[rng.integers(len(ys))])))
  return scenes


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt `text` and the exact phrase it uses for each attribute (in `KINDS` order)."""
  text: str
  phrases: tuple[str, str, str]
  template: int

  def phrase(self, kind: str) -> str:
    return self.phrases[KINDS.index(kind)]

  def entry(self, kind: str):
    """This prompt as an erasure `Entry` whose concept is the `kind` phrase."""
    from t2vu_jax.erase.prompts import Entry
    return Entry(self.text, self.phrase(kind))


def _articles(text: str) -> str:
  return re.sub(r"\ba (?=[aeiou])", "an ", text)


def compose(template: int, phrases: Mapping[str, str]) -> Prompt:
  """The prompt of template `template` filled with `phrases` (kind -> wording of the world)."""
  if isinstance(template, bool) or not isinstance(template, (int, np.integer)) or not 0 <= template < len(TEMPLATES):
    raise ValueError(f"template must be an integer in [0, {len(TEMPLATES)}), got {template!r}")
  if set(phrases) != set(KINDS):
    raise ValueError(f"phrases must name exactly the kinds {list(KINDS)}, got {sorted(phrases)}")
  for kind in KINDS:
    value_of(kind, phrases[kind])
  text = _articles(TEMPLATES[template].format(**phrases))
  return Prompt(text, tuple(phrases[k] for k in KINDS), int(template))


def prompt(scene: Scene, rng: np.random.Generator | int, held_out: bool | None | Mapping[str, bool | None] = None,
           template: int | None = None) -> Prompt:
  """A prompt describing `scene`: a random template and, per attribute, a random wording.

  `held_out` picks the wordings: False training ones, True held-out ones, None any; or a mapping
  kind -> one of those (kinds left out take None).
  """
  rng = _rng(rng)
  choice = held_out if isinstance(held_out, Mapping) else {k: held_out for k in KINDS}
  if unknown := set(choice) - set(KINDS):
    raise ValueError(f"held_out names unknown kinds {sorted(unknown)} (kinds: {list(KINDS)})")
  if template is None:
    template = int(rng.integers(len(TEMPLATES)))
  phrases = {}
  for kind in KINDS:
    options = wordings(kind, scene.value(kind), choice.get(kind))
    phrases[kind] = options[rng.integers(len(options))]
  return compose(template, phrases)


def leave_out(p: Prompt, kind: str) -> str:
  """The prompt's text without its `kind` phrase, cut out exactly as an erasure anchor is
  (`erase.prompts.anchor_prompt`): "a red circle moving left" without colour is "a circle moving left"."""
  from t2vu_jax.erase.prompts import anchor_prompt
  return anchor_prompt(p.entry(kind))


def dataset(seed: int, n: int, frames: int = FRAMES, size: int = SIZE, held_out: bool | None = None,
            omit: float = 0.0) -> tuple[np.ndarray, list[str], list[Scene]]:
  """(videos (n, frames, size, size, 3) float32 in [-1, 1], prompts, scenes), a function of its arguments.

  A share `omit` of the prompts leaves one attribute (uniform over kinds) unnamed (`leave_out`), so that
  a model learns what prompts that name only some attributes mean, as the erasure anchors do; the
  other prompts are those of `omit=0`. Pretraining uses every wording (held_out=None); text dropout for
  classifier-free guidance is left to the trainer.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be a non-negative integer, got {n!r}")
  if not 0.0 <= omit <= 1.0:
    raise ValueError(f"omit must be a share in [0, 1], got {omit!r}")
  rng = np.random.default_rng(seed)
  scenes = sample_scenes(rng, n, frames, size)
  prompts = [prompt(s, rng, held_out) for s in scenes]
  left_out = np.random.default_rng([seed, 1])  # its own stream: omit=0 draws exactly what it always did
  drop, kinds = left_out.random(n) < omit, left_out.integers(len(KINDS), size=n)
  prompts = [leave_out(p, KINDS[k]) if d else p.text for p, d, k in zip(prompts, drop, kinds)]
  videos = np.zeros((n, frames, size, size, 3), np.float32)
  for i, s in enumerate(scenes):
    videos[i] = render(s, frames, size)
  return videos, prompts, scenes
