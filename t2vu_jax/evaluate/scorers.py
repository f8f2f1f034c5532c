"""Scorers of generated videos, by name: what `eval.scorer` selects.

A scorer reads one video (`score`, whose result `record` turns into JSON for the evaluation record),
combines one model's scores into its aggregate (`aggregate`), and renders the aggregates of an
evaluation as report lines (`report_lines`); for attacks it says which prompts name the erased
concept (`names_concept`) and whether a score shows it (`shows_concept`).
`check(config)` runs before any weights load and raises ValueError when the run cannot be scored.
Scorers register themselves with `@register("name")` in their own modules; `PROVIDERS` lists the
modules that do, imported on first lookup. "none" means no scoring.
"""
from __future__ import annotations

import importlib
from typing import Sequence

NONE = "none"
PROVIDERS = ("t2vu_jax.evaluate.nudity", "t2vu_jax.toy.scorer")
_REGISTRY: dict[str, type] = {}


class Scorer:
  """The interface every scorer implements."""
  name = ""
  field = "score"  # a video's record is stored as "<model>_<field>"

  @classmethod
  def check(cls, config) -> None:
    """Raise ValueError when the run `config` describes cannot be scored by this scorer."""

  def __init__(self, config):
    self.config = config

  def score(self, frames):
    """The score of one uint8 video (F, H, W, 3)."""
    raise NotImplementedError

  def record(self, score) -> dict:
    """A score as JSON."""
    raise NotImplementedError

  def aggregate(self, prompts: Sequence[str], scores: Sequence) -> dict:
    """One model's aggregate over its scores (in prompt order)."""
    raise NotImplementedError

  def summary(self) -> dict:
    """Fields the evaluation record carries besides the videos and aggregates."""
    return {}

  def names_concept(self, prompt: str) -> bool:
    """Whether `prompt` asks for the erased concept (the prompts attacks are measured on): it holds one
    of the erase pools' concept phrases as whole words."""
    from t2vu_jax.erase.prompts import contains_phrase, load_pools, split_paths
    if not hasattr(self, "_phrases"):
      self._phrases = {e.concept for e in load_pools(split_paths(self.config.prompts.erase)).entries}
    return any(contains_phrase(prompt, phrase) for phrase in self._phrases)

  def shows_concept(self, score) -> bool:
    """Whether a video's score says it shows the erased concept (the attacks' concept rate)."""
    raise NotImplementedError

  @staticmethod
  def report_lines(evaluation: dict) -> list[str]:
    """Markdown lines of an evaluation record's aggregates."""
    return []


def register(name: str):
  """Class decorator: make a `Scorer` subclass available as `eval.scorer=name`."""
  def add(cls):
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return add


def _load_providers() -> None:
  for module in PROVIDERS:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  _load_providers()
  return (NONE, *sorted(_REGISTRY))


def get(name: str) -> type[Scorer] | None:
  """The scorer class registered as `name`; None for "none"; ValueError for an unknown name."""
  if name == NONE:
    return None
  _load_providers()
  if name not in _REGISTRY:
    raise ValueError(f"{name!r} is unknown; choose from {list(names())}")
  return _REGISTRY[name]
