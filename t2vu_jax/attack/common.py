"""What every attack shares: its settings (`AttackConfig`, the `attack` config group), the targets it
is measured on and the concept rate (`AttackContext`), and the dispatch by name (`run_attack`)."""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2vu_jax.erase.prompts import load_pools, split_paths
from t2vu_jax.evaluate import scorers
from t2vu_jax.evaluate.videos import evaluation_prompts

# Each the module `t2vu_jax.attack.<name>`, whose `run(context)` returns (budget, rates).
ATTACKS = ("concept_vector", "soft_prompt", "resurgence")
TARGETS = ("base", "negative prompting", "erased")


def parse_floats(text: str, field: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in str(text).split(",") if v.strip())
  except ValueError:
    raise ValueError(f"{field} must be comma-separated numbers, got {text!r}") from None
  if not values:
    raise ValueError(f"{field} is empty")
  return values


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  names: str = "concept_vector"   # the attack stage's attacks, comma-separated
  num_prompts: int = 16           # evaluation prompts naming the concept that every attack is measured on
  batch_size: int = 1             # prompts per sampling call
  negative_prompt: str = ""       # negative prompting's phrase ("": the erase pools' most frequent concept)
  strengths: str = "0,0.5,1,2"    # concept_vector: multiples of the concept direction added to every token
  soft_tokens: int = 4            # soft_prompt: learned embeddings inserted after each prompt's tokens
  soft_steps: str = "0,50,100,200"  # soft_prompt: Adam steps after which the concept rate is measured
  soft_lr: float = 5e-2
  soft_train_prompts: int = 8     # soft_prompt: erase-pool prompts whose base-model videos it trains on
  resurgence_steps: str = "0,50,100"  # resurgence: fine-tuning steps after which the concept rate is measured
  resurgence_rank: int = 4        # resurgence: the LoRA's rank on every block's linear kernels
  resurgence_lr: float = 1e-3
  resurgence_prompts: int = 8     # resurgence: prompts unrelated to the concept whose base-model videos it tunes on

  def __post_init__(self):
    if unknown := [n for n in self.attacks if n not in ATTACKS]:
      raise ValueError(f"unknown attack(s) {unknown}; choose from {list(ATTACKS)}")
    for field in ("num_prompts", "batch_size", "soft_tokens", "soft_train_prompts", "resurgence_rank",
                  "resurgence_prompts"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if any(s < 0 for s in self.strength_values):
      raise ValueError(f"strengths must be >= 0, got {self.strengths!r}")
    for field in ("soft_steps", "resurgence_steps"):
      if any(s < 0 or s != int(s) for s in parse_floats(getattr(self, field), field)):
        raise ValueError(f"{field} must be integers >= 0, got {getattr(self, field)!r}")
    for field in ("soft_lr", "resurgence_lr"):
      if not getattr(self, field) > 0:
        raise ValueError(f"{field} must be positive, got {getattr(self, field)!r}")

  @property
  def attacks(self) -> tuple[str, ...]:
    names = tuple(split_paths(self.names))
    if not names:
      raise ValueError("names is empty; choose from " + str(list(ATTACKS)))
    return names

  @property
  def strength_values(self) -> tuple[float, ...]:
    return parse_floats(self.strengths, "strengths")

  @property
  def soft_step_values(self) -> tuple[int, ...]:
    return tuple(sorted({int(s) for s in parse_floats(self.soft_steps, "soft_steps")}))

  @property
  def resurgence_step_values(self) -> tuple[int, ...]:
    return tuple(sorted({int(s) for s in parse_floats(self.resurgence_steps, "resurgence_steps")}))


@functools.lru_cache
def adam(learning_rate: float) -> optax.GradientTransformation:
  """One Adam per learning rate, so that the jitted steps it is a static argument of compile once."""
  return optax.adam(learning_rate)


def draw_sigma(rng: np.random.Generator, pipe, steps: int) -> tuple[float, int]:
  """A noise level σ spread as the pipeline's shifted schedule of `steps` spreads it, and the expert that
  denoises there (0: `transformer`, 1: Wan2.2's low-noise `transformer_2`)."""
  shift = pipe.scheduler(steps).shift
  u = rng.uniform()
  sigma = shift * u / (1 + (shift - 1) * u)
  return sigma, 0 if pipe.boundary is None or 1000.0 * sigma >= pipe.boundary else 1


def flow_point(x0, noise, sigma):
  """The flow-matching training point at σ: (x_t = (1 − σ) x0 + σ ε, its velocity target ε − x0)."""
  return (1.0 - sigma) * x0 + sigma * noise, noise - x0


def attack_settings(config) -> AttackConfig:
  """The run's `attack` group (defaults where a run recorded before attacks existed lacks it)."""
  group = config.get("attack")
  return AttackConfig(**(group.to_dict() if group is not None else {}))


def most_common_concept(phrases) -> str:
  counts = collections.Counter(phrases)
  return max(counts, key=lambda p: (counts[p], -list(counts).index(p)))


class AttackContext:
  """The targets of a run's attacks (the base model, with and without negative prompting, and the
  erased model), the evaluation prompts naming the concept with their seeds, and the scorer that
  decides whether a video shows the concept. Videos are sampled as the evaluate stage samples them."""

  def __init__(self, pipe, erased_pipe, config, progress: bool = True, targets=TARGETS):
    self.config, self.pipe, self.progress = config, pipe, progress
    self.settings = attack_settings(config)
    scorer_cls = scorers.get(config.eval.scorer)
    if scorer_cls is None:
      raise ValueError("config.eval.scorer: attacks measure the concept rate and need a scorer (toy or nudenet)")
    self.scorer = scorer_cls(config)
    self.erase_entries = list(load_pools(split_paths(config.prompts.erase)).entries)
    pairs = [(p, s) for p, s in evaluation_prompts(config) if self.scorer.names_concept(p)]
    if not pairs:
      raise ValueError(f"config.prompts.evaluate: none of {config.prompts.evaluate}'s first "
                       f"{config.eval.num_prompts} prompts names the erased concept")
    pairs = pairs[:self.settings.num_prompts]
    self.prompts, self.seeds = [p for p, _ in pairs], [s for _, s in pairs]
    self.negative_prompt = self.settings.negative_prompt or most_common_concept(e.concept for e in self.erase_entries)
    every = {"base": (pipe, False, ""), "negative prompting": (pipe, False, self.negative_prompt),
             "erased": (erased_pipe, True, "")}
    if unknown := [t for t in targets if t not in every]:
      raise ValueError(f"unknown attack target(s) {unknown}; choose from {list(TARGETS)}")
    self.targets = {t: every[t] for t in targets}  # name -> (pipeline, erasers on, negative prompt)

  def embed(self, texts) -> np.ndarray:
    return np.asarray(self.pipe.encode(list(texts)))

  def base_latents(self, cond) -> jax.Array:
    """Final latents of the base model's own videos of prompt embeddings `cond`, sampled as the evaluation
    samples (from the run's seed): the training data of the attacks that learn."""
    ev = self.config.eval
    uncond = np.broadcast_to(self.embed([""])[0], np.shape(cond)) if ev.guidance > 1.0 else None
    return jnp.asarray(self.pipe.sample_embeddings(cond, uncond, ev.height, ev.width, ev.frames, ev.steps,
                                                   ev.guidance, seed=self.config.seed, progress=False, erasers=False,
                                                   guidance_2=ev.get("guidance_2")))

  def videos(self, target: str, cond, pipe=None) -> list[np.ndarray]:
    """uint8 videos of prompt embeddings `cond` (one per attack prompt, on its seed) through `target`
    (through `pipe` in place of its pipeline: a fine-tuned one)."""
    own, erasers, negative = self.targets[target]
    pipe = own if pipe is None else pipe
    ev = self.config.eval
    guided = ev.guidance > 1.0
    uncond = np.broadcast_to(self.embed([negative])[0], np.shape(cond)) if guided else None
    shape = pipe.latent_shape(1, ev.height, ev.width, ev.frames)
    noise = np.concatenate([np.asarray(jax.random.normal(jax.random.key(s), shape, jnp.float32)) for s in self.seeds])
    out = []
    for start in range(0, len(cond), self.settings.batch_size):
      part = slice(start, start + self.settings.batch_size)
      latents = pipe.sample_embeddings(cond[part], None if uncond is None else uncond[part], ev.height, ev.width,
                                       ev.frames, ev.steps, ev.guidance, seed=0, latents=noise[part],
                                       progress=False, erasers=erasers, guidance_2=ev.get("guidance_2"))
      out += list(np.round(pipe.decode(latents) * 255).astype(np.uint8))
    return out

  def concept_rate(self, target: str, cond, pipe=None) -> float:
    """Share of the attack prompts' videos from embeddings `cond` through `target` (or `pipe` in place of its
    pipeline) that show the concept."""
    return float(np.mean([self.scorer.shows_concept(self.scorer.score(v)) for v in self.videos(target, cond, pipe)]))


def run_attack(name: str, context: AttackContext) -> dict:
  """Run attack `name` on every target: {"attack", "budget", "rates": {target: {budget point: rate}}, ...}."""
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; choose from {list(ATTACKS)}")
  module = importlib.import_module(f"t2vu_jax.attack.{name}")
  budget, rates = module.run(context)
  return {"attack": name, "budget": budget, "rates": rates, "prompts": len(context.prompts),
          "negative_prompt": context.negative_prompt, "scorer": context.config.eval.scorer}


def write_result(run_dir: str, result: dict) -> str:
  from t2vu_jax.io.atomic import write_text
  path = os.path.join(run_dir, "attacks", f"{result['attack']}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_text(path, json.dumps(result, indent=2))
  return path


def report_lines(run_dir: str) -> list[str]:
  """Markdown tables of the run's attack results (`attacks/*.json`)."""
  folder = os.path.join(run_dir, "attacks")
  if not os.path.isdir(folder):
    return []
  lines = []
  for file in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
    with open(os.path.join(folder, file)) as f:
      r = json.load(f)
    points = list(next(iter(r["rates"].values())))
    lines += ["", f"Attack `{r['attack']}` ({r['scorer']}, {r['prompts']} prompts naming the concept; negative "
              f"prompt {r['negative_prompt']!r}): concept rate by {r['budget']['name']}", "",
              "| model | " + " | ".join(points) + " |", "|---|" + "---|" * len(points)]
    lines += [f"| {t} | " + " | ".join(f"{100 * v:.0f}%" for v in rates.values()) + " |"
              for t, rates in r["rates"].items()]
  return lines
