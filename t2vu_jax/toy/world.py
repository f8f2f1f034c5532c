"""The toy world: a coloured shape moving over a dark background, in some scenes a patterned one, and
the prompts that describe it.

A scene is (colour, shape, motion, x0, y0, pattern): a 7x7 shape whose bounding box starts at column
x0, row y0 and moves `SPEED` pixels per frame in its direction (rows grow downward, so "up" decreases
y), drawn over the background. The background is the second, independently named element: plain in
single-element scenes (prompts name no pattern), or one of `PATTERNS` ("... on a striped background").
Its grey level rises by the same step every frame, from `LEVELS[0]` to `LEVELS[1]`: the world's clock.
Without it a video of one motion played backwards is a video of the opposite motion and nothing in a
frame says where it sits in time (the DiT's rotary embeddings only carry frame offsets); real Wan latents
have such an anchor too, the causal VAE encoding frame 0 alone. Renders are exact (no anti-aliasing),
float32 RGB in [-1, 1] as the model sees them, default 5 frames of 16x16.

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
OBJECT_KINDS = ("colour", "shape", "motion")  # the object's attributes, named in every prompt
KINDS = OBJECT_KINDS + ("pattern",)  # every named attribute; the pattern only in two-element scenes
NONE = "none"  # the pattern of a plain background (and what the classifier reads where nothing is drawn)

LEVELS = (0.04, 0.28)  # grey level of the background in the first and the last frame, in [0, 1]
PATTERN_CONTRAST = 0.15  # a pattern's pixels are this much brighter than the plain background
PATTERN_SHARE = 0.5  # share of sampled scenes with a patterned background
COLOURS = {  # RGB in [0, 1]; nearest pair (red, yellow) is 0.75 apart, nearest to any background (green) 0.55
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
# Patterns of whole 2x2 blocks (the DiT's patches), as functions of pixel (row y, column x); any two
# differ in at least a quarter of the pixels, and each in at least a quarter from a plain background.
PATTERNS = {
  "stripes": lambda y, x: (y // 2) % 2 == 0,
  "checks": lambda y, x: (y // 2 + x // 2) % 2 == 0,
  "dots": lambda y, x: (y % 4 < 2) & (x % 4 < 2),
}
VALUES = {"colour": tuple(COLOURS), "shape": tuple(SHAPES), "motion": tuple(MOTIONS), "pattern": tuple(PATTERNS)}

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
  "pattern": {
    "stripes": (("striped", "stripy", "banded"), ("lined",)),
    "checks": (("checkered", "chequered", "plaid"), ("gingham",)),
    "dots": (("dotted", "spotted", "polka dot"), ("speckled",)),
  },
}
# Sentence templates put each attribute phrase in several positions; "a" becomes "an" before a vowel.
TEMPLATES = (
  "a {colour} {shape} {motion}",
  "{motion}, a {colour} {shape}",
  "a {shape} in {colour}, {motion}",
  "there is a {colour} {shape} {motion} in the video",
  "a video of a {colour} {shape} {motion}",
  "the {shape} is {colour} and it is {motion}",
  "a {colour} {shape} that is {motion}",
)
# How a two-element prompt adds its pattern to an object sentence of `TEMPLATES`.
PATTERN_FORMS = (
  "{scene} on a {pattern} background",
  "{scene}, {pattern} background",
  "{pattern} background: {scene}",
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
  """kind -> value named in a toy-world prompt (the inverse of `compose`, wording- and template-blind);
  "pattern" is `NONE` where the prompt names none (a plain background).

  Each kind's wordings are matched as whole words, longest first ("plus sign" before "plus").
  """
  words = f" {re.sub(r'[^a-z]+', ' ', text.lower()).strip()} "
  out = {}
  for kind in KINDS:
    phrases = sorted(((p, v) for v, (train, held) in WORDINGS[kind].items() for p in train + held),
                     key=lambda pv: -len(pv[0]))
    found = {v for p, v in phrases if f" {p} " in words}
    if kind == "pattern" and not found:
      found = {NONE}
    if len(found) != 1:
      what = "no" if not found else f"several ({sorted(found)})"
      raise ValueError(f"prompt {text!r} names {what} {kind} of the toy world")
    out[kind] = found.pop()
  return out


@dataclasses.dataclass(frozen=True)
class Scene:
  """One object: `colour`, `shape`, `motion` and its bounding box's top-left pixel (x0, y0) at frame 0,
  over a plain background (`pattern` None) or a patterned one."""
  colour: str
  shape: str
  motion: str
  x0: int
  y0: int
  pattern: str | None = None

  def __post_init__(self):
    for kind in OBJECT_KINDS:
      _check_value(kind, getattr(self, kind))
    if self.pattern is not None:
      _check_value("pattern", self.pattern)
    for key in ("x0", "y0"):
      v = getattr(self, key)
      if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"Scene.{key} must be an integer, got {type(v).__name__}")
      object.__setattr__(self, key, int(v))

  def value(self, kind: str) -> str:
    """The scene's value of `kind` (`NONE` for the pattern of a plain background)."""
    if kind not in KINDS:
      raise ValueError(f"unknown attribute kind {kind!r} (kinds: {list(KINDS)})")
    v = getattr(self, kind)
    return NONE if v is None else v

  @property
  def kinds(self) -> tuple[str, ...]:
    """The attributes this scene's prompts name."""
    return KINDS if self.pattern else OBJECT_KINDS

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


def pattern_mask(pattern: str | None, size: int = SIZE, width: int | None = None) -> np.ndarray:
  """(size, width or size) bool: the pixels a background pattern brightens (none for a plain background)."""
  width = size if width is None else width
  for v in (size, width):
    _check_size(1, v)
  if pattern is not None and pattern != NONE:
    _check_value("pattern", pattern)
  y, x = np.mgrid[:size, :width]
  if pattern is None or pattern == NONE:
    return np.zeros((size, width), bool)
  return np.asarray(PATTERNS[pattern](y, x), bool)


def levels(frames: int = FRAMES) -> np.ndarray:
  """(frames,) grey level of the plain background in each frame: the same step every frame."""
  _check_size(frames, SIZE)  # frames only; any valid size
  return np.linspace(*LEVELS, frames) if frames > 1 else np.array(LEVELS[:1])


def background(pattern: str | None = None, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
  """(frames, size, size, 3) float RGB in [0, 1]: the background of a scene without its object."""
  grey = levels(frames)[:, None, None] + PATTERN_CONTRAST * pattern_mask(pattern, size)
  return np.repeat(grey[..., None], 3, -1)


def render(scene: Scene, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
  """(frames, size, size, 3) float32 RGB in [-1, 1]: the scene, exactly, the object over the background."""
  mask = object_mask(scene, frames, size)
  video = np.where(mask[..., None], np.array(COLOURS[scene.colour]), background(scene.pattern, frames, size))
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


def _share(name: str, v: float) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0.0 <= v <= 1.0:
    raise ValueError(f"{name} must be a share in [0, 1], got {v!r}")
  return float(v)


def sample_scenes(rng: np.random.Generator | int, n: int, frames: int = FRAMES, size: int = SIZE,
                  pattern_share: float = PATTERN_SHARE) -> list[Scene]:
  """`n` scenes with uniform colour, shape, motion, a uniform position among those that fit, and with
  probability `pattern_share` a uniform background pattern (else a plain background)."""
  rng = _rng(rng)
  _share("pattern_share", pattern_share)
  scenes = []
  for _ in range(n):
    c, s, m = (VALUES[k][rng.integers(len(VALUES[k]))] for k in OBJECT_KINDS)
    xs, ys = position_range(m, frames, size)
    x0, y0 = int(xs[rng.integers(len(xs))]), int(ys[rng.integers(len(ys))])
    patterned, p = rng.random() < pattern_share, VALUES["pattern"][rng.integers(len(PATTERNS))]
    scenes.append(Scene(c, s, m, x0, y0, p if patterned else None))
  return scenes


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt `text`, the exact phrase it uses for each attribute (in `KINDS` order; the pattern's is
  None in a single-element prompt), its object template and its pattern form (None: no pattern)."""
  text: str
  phrases: tuple[str, str, str, str | None]
  template: int
  form: int | None = None

  def phrase(self, kind: str) -> str | None:
    return self.phrases[KINDS.index(kind)]

  def entry(self, kind: str):
    """This prompt as an erasure `Entry` whose concept is the `kind` phrase."""
    from t2vu_jax.erase.prompts import Entry
    if self.phrase(kind) is None:
      raise ValueError(f"prompt {self.text!r} names no {kind}")
    return Entry(self.text, self.phrase(kind))


def _articles(text: str) -> str:
  return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _index(name: str, v, n: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
    raise ValueError(f"{name} must be an integer in [0, {n}), got {v!r}")
  return int(v)


def compose(template: int, phrases: Mapping[str, str], form: int | None = None) -> Prompt:
  """The prompt of object template `template` filled with `phrases` (kind -> wording of the world): the
  object's three kinds, and "pattern" for a two-element prompt, added in pattern form `form` (default 0)."""
  template = _index("template", template, len(TEMPLATES))
  kinds = KINDS if "pattern" in phrases else OBJECT_KINDS
  if set(phrases) != set(kinds):
    raise ValueError(f"phrases must name exactly the kinds {list(OBJECT_KINDS)} and optionally 'pattern', "
                     f"got {sorted(phrases)}")
  if form is not None and "pattern" not in phrases:
    raise ValueError("a pattern form needs a pattern phrase")
  for kind in kinds:
    value_of(kind, phrases[kind])
  text = TEMPLATES[template].format(**{k: phrases[k] for k in OBJECT_KINDS})
  if "pattern" in phrases:
    form = _index("form", 0 if form is None else form, len(PATTERN_FORMS))
    text = PATTERN_FORMS[form].format(scene=text, pattern=phrases["pattern"])
  return Prompt(_articles(text), tuple(phrases.get(k) for k in KINDS), template, form)


def prompt(scene: Scene, rng: np.random.Generator | int, held_out: bool | None | Mapping[str, bool | None] = None,
           template: int | None = None) -> Prompt:
  """A prompt describing `scene`: a random template (and pattern form) and, per attribute, a random wording.

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
  for kind in scene.kinds:
    options = wordings(kind, scene.value(kind), choice.get(kind))
    phrases[kind] = options[rng.integers(len(options))]
  form = int(rng.integers(len(PATTERN_FORMS))) if scene.pattern else None
  return compose(template, phrases, form)


def leave_out(p: Prompt, kind: str) -> str:
  """The prompt's text without its `kind` phrase, cut out exactly as an erasure anchor is
  (`erase.prompts.anchor_prompt`): "a red circle moving left" without colour is "a circle moving left"."""
  from t2vu_jax.erase.prompts import anchor_prompt
  return anchor_prompt(p.entry(kind))


def dataset(seed: int, n: int, frames: int = FRAMES, size: int = SIZE, held_out: bool | None = None,
            omit: float = 0.0, pattern_share: float = PATTERN_SHARE) -> tuple[np.ndarray, list[str], list[Scene]]:
  """(videos (n, frames, size, size, 3) float32 in [-1, 1], prompts, scenes), a function of its arguments.

  A share `omit` of the prompts leaves one of the object's attributes (uniform over them) unnamed
  (`leave_out`), so that a model learns what prompts that name only some attributes mean, as the
  erasure anchors do; the pattern is always named where there is one, since a prompt that names none
  means a plain background. Pretraining uses every wording (held_out=None); text dropout for
  classifier-free guidance is left to the trainer.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be a non-negative integer, got {n!r}")
  _share("omit", omit)
  rng = np.random.default_rng(seed)
  scenes = sample_scenes(rng, n, frames, size, pattern_share)
  prompts = [prompt(s, rng, held_out) for s in scenes]
  left_out = np.random.default_rng([seed, 1])  # its own stream: omit=0 draws exactly the same scenes
  drop, kinds = left_out.random(n) < omit, left_out.integers(len(OBJECT_KINDS), size=n)
  prompts = [leave_out(p, OBJECT_KINDS[k]) if d else p.text for p, d, k in zip(prompts, drop, kinds)]
  videos = np.zeros((n, frames, size, size, 3), np.float32)
  for i, s in enumerate(scenes):
    videos[i] = render(s, frames, size)
  return videos, prompts, scenes
