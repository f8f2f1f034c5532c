"""Toy-world erasure experiments (DESIGN §8): erase one attribute value of a pretrained toy pipeline
and score the result with the exact classifier.

  python -m t2vu_jax.toy.experiments --config=configs/toy_experiments.py [--config.field=value]

For each concept (kind, value), e.g. ("colour", "red"):
  training prompts  erase: the value with its training wordings, over every template; preserve: the
                    other values of the same kind (training wordings); no-augmentation ablation: one
                    template and one wording per attribute, over every combination of the other values;
  evaluation sets   fresh scenes from their own seed streams, prompts disjoint from every training
                    prompt: (a) the value with training wordings, (b) with its held-out wording,
                    (c) the other values of the kind (any wording);
  rows              base model; negative prompting (base model, the value's first training wording as
                    negative prompt); erased with the config's method (full), without localization
                    (λ_loc = 0), without preservation (λ_pre = 0, no preservation prompts), without
                    augmentation, with the paper's target (∅ anchor, η = 1 at every noise level), with
                    the config's anchor but negative guidance at every noise level (ungated guidance) and
                    with the replacement anchor (another value of the kind in the concept's place);
                    `config.variants` picks the rows (`VARIANTS`).
Every erasure is one `ErasureJob` of the config's `erasure` run config (stages load, encode, erase) on
JSONL pools written from the training prompts: the same code path as `run.py`. Every model samples each
evaluation set from the same noise. Scores are those of `t2vu_jax.toy.metrics`; the localization IoU
uses the base model (erasers off) on the set-(a) prompts at x_t = (1 − σ) x0 + σ e, x0 the true scene
video, σ = `loc_sigma`. The config (`configs/toy_experiments.py`) holds every setting.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.cli import define_config_flag, loaded_config, parse_flags, usage_error
from t2vu_jax.erase.job import ErasureJob
from t2vu_jax.erase.objective import token_grid
from t2vu_jax.erase.prompts import token_spans
from t2vu_jax.erase.run_config import GROUPS, ConfigError, settings
from t2vu_jax.evaluate.sheet import contact_sheet
from t2vu_jax.pipeline import load_pipeline
from t2vu_jax.toy import metrics, robustness, world
from t2vu_jax.toy.classifier import classify_batch
from t2vu_jax.toy.metrics import percent
from t2vu_jax.toy.world import KINDS, OBJECT_KINDS, PATTERN_SHARE, TEMPLATES, VALUES, Scene


@dataclasses.dataclass(frozen=True)
class PromptSetSizes:
  """How a concept's prompt sets are drawn (`concept_sets`); the experiments config
  (`configs/toy_experiments.py`) carries these fields with these defaults."""
  seed: int = 0
  erase_per_wording: int = 2     # erase prompts per (template, training wording)
  preserve_per_value: int = 12   # preservation prompts per other value of the kind
  eval_videos: int = 40          # per evaluation set


POSITIVE = ("erase_per_wording", "preserve_per_value", "eval_videos", "sheet_scale")


def validate(config) -> tuple[tuple[tuple[str, str], ...], tuple["Variant", ...]]:
  """Check an experiments config before any model loads; returns its erasures (`parse_groups`) and its
  erasure rows (`config.variants`, names of `VARIANTS`)."""
  try:
    concepts = parse_groups(config.concepts)
  except ValueError as e:
    raise ValueError(f"config.concepts: {e}") from None
  if not concepts:
    raise ValueError("config.concepts: no concept to erase")
  names = [n.strip() for n in config.variants.split(",") if n.strip()]
  if unknown := [n for n in names if n not in VARIANTS]:
    raise ValueError(f"config.variants: unknown row(s) {unknown} (rows: {', '.join(VARIANTS)})")
  if not names:
    raise ValueError("config.variants: no erasure row")
  for name in POSITIVE:
    if config[name] < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
  if robustness.attack_names(config) and any(len(group) > 1 for group in concepts):
    raise ValueError("config.attacks: attacks measure one concept per erasure; erase several together without them")
  if isinstance(config.replacement_values, bool) or not isinstance(config.replacement_values, int) \
      or config.replacement_values < 0:
    raise ValueError(f"config.replacement_values must be an integer >= 0, got {config.replacement_values!r}")
  if not 0 < config.loc_sigma < 1:
    raise ValueError(f"config.loc_sigma must be in (0, 1), got {config.loc_sigma}")
  erasure = copy.deepcopy(config.erasure)
  if erasure.objective.anchor == "replace":  # each erasure gets its concepts' phrases (`replacements`)
    erasure.objective.replacements = erasure.objective.replacements or "each concept's own"
  for group in GROUPS:  # the erasures' own settings, before minutes of baselines
    try:
      settings(erasure, group)
    except ConfigError as e:
      raise ValueError(str(e).replace("config.", "config.erasure.", 1)) from None
  return concepts, tuple(VARIANTS[n] for n in dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Variant:
  """One erasure configuration: which parts of the method of `config.erasure` it keeps, the objective
  fields it sets over the run config's (`objective`: (field, value) pairs) and the erasure method
  (`run_config.METHODS`: trained erasers, or RECE's closed-form edit)."""
  name: str
  loc: bool = True
  preserve: bool = True
  augment: bool = True
  objective: tuple = ()
  method: str = "erasers"


PAPER = (("anchor", "empty"), ("eta", 1.0), ("guidance_sigma_min", 0.0))  # the paper's ∅ target, every σ
VARIANTS = {v.name: v for v in (
    Variant("full"), Variant("no localization", loc=False), Variant("no preservation", preserve=False),
    Variant("no augmentation", augment=False), Variant("paper target", objective=PAPER),
    Variant("ungated guidance", objective=(("guidance_sigma_min", 0.0),)),
    Variant("replacement anchor", objective=(("anchor", "replace"),)),
    Variant("RECE", loc=False, method="rece"), Variant("robust option", objective=(("adversarial", True),)))}
BASELINES = ("base", "negative prompting")
ROWS = BASELINES + tuple(VARIANTS)
SHEET_ROWS = ("base", "full", "paper target", "negative prompting")  # the contact sheet's models
SETS = ("train", "held_out", "others")
SET_LABELS = {"train": "(a)", "held_out": "(b)", "others": "(c)"}
LOC_SIGMAS = (0.3, 0.5, 0.7, 0.9)  # noise levels of the loc IoU profile


# -- prompt sets -------------------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, fixed: dict[str, str], frames: int = world.FRAMES,
                 size: int = world.SIZE, patterned: bool | None = None) -> Scene:
  """A scene with the `fixed` kind -> value, the other values and a fitting position uniform, and (unless
  the pattern is fixed) a uniform background pattern if `patterned`, none if not, and with probability
  `world.PATTERN_SHARE` if None."""
  values = {k: fixed[k] if k in fixed else VALUES[k][rng.integers(len(VALUES[k]))] for k in OBJECT_KINDS}
  xs, ys = world.position_range(values["motion"], frames, size)
  x0, y0 = int(xs[rng.integers(len(xs))]), int(ys[rng.integers(len(ys))])
  pattern, draw = fixed.get("pattern"), rng.random() < PATTERN_SHARE if patterned is None else patterned
  if pattern is None and draw:
    pattern = VALUES["pattern"][rng.integers(len(VALUES["pattern"]))]
  return Scene(**values, x0=x0, y0=y0, pattern=pattern)


def _training_prompt(rng: np.random.Generator, scene: Scene, template: int, **phrases: str) -> world.Prompt:
  """A prompt of `scene` in object template `template` with training wordings (or the given `phrases`)."""
  p = world.prompt(scene, rng, held_out=False, template=template)
  drawn = {k: p.phrase(k) for k in scene.kinds}
  return world.compose(template, {**drawn, **phrases}, p.form)


@dataclasses.dataclass(frozen=True)
class EvalSet:
  prompts: tuple[world.Prompt, ...]
  scenes: tuple[Scene, ...]

  @property
  def texts(self) -> list[str]:
    return [p.text for p in self.prompts]


@dataclasses.dataclass(frozen=True)
class ConceptSets:
  """The training prompts (erasure `Entry`s) and evaluation sets of erasing `kind` = `value`."""
  kind: str
  value: str
  erase: tuple        # Entry: training wordings over every template
  erase_single: tuple  # Entry: one template, one wording per attribute (no augmentation)
  preserve: tuple     # Entry: the other values of the kind
  evaluation: dict    # set name (SETS) -> EvalSet

  @property
  def name(self) -> str:
    return f"{self.kind}: {self.value}"

  @property
  def negative_prompt(self) -> str:
    """The concept phrase negative prompting uses: the value's first training wording."""
    return world.wordings(self.kind, self.value, held_out=False)[0]


def concept_sets(kind: str, value: str, config=PromptSetSizes(), exclude=()) -> ConceptSets:
  """The prompt sets of one concept, a function of (kind, value), the `PromptSetSizes` fields of
  `config` (a `PromptSetSizes` or the experiments config) and `exclude`: (kind, value)s no prompt may
  name (the other concepts of a run that erases several; without them the sets are those of one)."""
  world.wordings(kind, value)
  exclude = set(exclude)
  for other in exclude:
    world.wordings(*other)
  if (kind, value) in exclude:
    raise ValueError(f"{kind} {value!r} cannot be erased and excluded at once")
  ident = [config.seed, KINDS.index(kind), VALUES[kind].index(value)]
  rng = np.random.default_rng([*ident, 0])
  seen: set[str] = set()
  allowed = lambda p: not exclude & set(world.read_prompt(p.text).items())  # noqa: E731

  def unique(make, n: int) -> list[world.Prompt]:
    out = []
    for _ in range(200 * n):
      if len(out) == n:
        break
      p = make()
      if p.text not in seen and allowed(p):
        seen.add(p.text)
        out.append(p)
    if len(out) < n:
      raise ValueError(f"cannot draw {n} distinct prompts for {kind} {value!r}")
    return out

  erase = []
  for template in range(len(TEMPLATES)):
    for wording in world.wordings(kind, value, held_out=False):
      def make(template=template, wording=wording):
        return _training_prompt(rng, random_scene(rng, {kind: value}), template, **{kind: wording})
      erase += unique(make, config.erase_per_wording)

  others = [v for v in VALUES[kind] if v != value]
  varied = metrics.other_kinds(kind) or OBJECT_KINDS  # a pattern's prompts vary the whole object
  single = []  # plain backgrounds for the object's attributes, form 0 for a pattern
  for combo in itertools.product(*(VALUES[k] for k in varied)):
    values = {kind: value, **dict(zip(varied, combo))}
    p = world.compose(0, {k: world.wordings(k, values[k], held_out=False)[0] for k in values})
    if allowed(p):
      seen.add(p.text)
      single.append(p)

  preserve = []
  for other in others:
    def make(other=other):
      return world.prompt(random_scene(rng, {kind: other}), rng, held_out=False)
    preserve += unique(make, config.preserve_per_value)

  evaluation = {}
  for i, name in enumerate(SETS):
    eval_rng = np.random.default_rng([*ident, 1, i])
    held_out = {kind: name == "held_out"} if name != "others" else None
    scenes, prompts = [], []
    for _ in range(200 * config.eval_videos):  # texts of training prompts are skipped
      if len(prompts) == config.eval_videos:
        break
      fixed = {kind: value if name != "others" else others[len(prompts) % len(others)]}
      scene = random_scene(eval_rng, fixed, patterned=len(prompts) % 2 == 1)  # half of them two-element
      p = world.prompt(scene, eval_rng, held_out)
      if p.text not in seen and allowed(p):  # distinct from training and from every evaluation prompt so far
        seen.add(p.text)
        scenes.append(scene)
        prompts.append(p)
    if len(prompts) < config.eval_videos:
      raise ValueError(f"cannot draw {config.eval_videos} evaluation prompts for {kind} {value!r} outside training")
    evaluation[name] = EvalSet(tuple(prompts), tuple(scenes))
  return ConceptSets(kind, value, tuple(p.entry(kind) for p in erase), tuple(p.entry(kind) for p in single),
                     tuple(p.entry(kind) for p in preserve), evaluation)


def write_pool(entries: Sequence, path: str) -> str:
  """Write erasure entries as a JSONL prompt pool; returns `path`."""
  with open(path, "w") as f:
    for e in entries:
      f.write(json.dumps({"prompt": e.prompt, "concept": e.concept}) + "\n")
  return path


# -- erasure -----------------------------------------------------------------------------------------


def replacement_values(kind: str, value: str, n: int = 0) -> tuple[str, ...]:
  """The values that replace `value`: the `n` that follow it in the world's order of its kind (cyclic),
  or every other value with n = 0."""
  values = VALUES[kind]
  at = values.index(value)
  others = values[at + 1:] + values[:at]
  return others[:n] if n else others


def replacements(group: Sequence[ConceptSets], entries: Sequence, n: int = 0) -> str:
  """`objective.replacements` of erasure prompts `entries` of the concepts of `group`: each concept
  phrase is replaced by the first training wording of each of its `replacement_values` ("crimson:
  green, blue, yellow, white")."""
  spec = {}
  for e in entries:
    sets = next(s for s in group if e.concept in world.wordings(s.kind, s.value))
    spec[e.concept] = ", ".join(world.wordings(sets.kind, v, held_out=False)[0]
                                for v in replacement_values(sets.kind, sets.value, n))
  return "; ".join(f"{concept}: {others}" for concept, others in spec.items())


def erasure_config(config, variant: Variant, model_dir: str, workdir: str, erase_pool: str,
                   preserve_pool: str | None, scheduler: str, shift: float, replacement_spec: str = ""):
  """The run config of one erasure: `config.erasure` with the variant's λs and anchor, the prompt pools,
  the sampler of the training trajectories and the toy world's video size; an anchor "replace" gets
  `replacement_spec` (`replacements`)."""
  c = copy.deepcopy(config.erasure)
  c.name = os.path.basename(workdir)
  c.workdir = workdir
  c.seed = config.seed
  c.model.path = model_dir
  c.method = variant.method
  if variant.method == "rece":
    c.export.formats = "merged"  # an edit has no erasers to export (the experiments export nothing)
  if not variant.loc:
    c.objective.lambda_loc = 0.0
  if not variant.preserve:
    c.objective.lambda_pre = 0.0
  for field, value in variant.objective:
    c.objective[field] = value
  if c.objective.anchor == "replace":
    c.objective.replacements = replacement_spec
  c.trajectory.update(dict(scheduler=scheduler, shift=float(shift), model="on_policy"))
  c.video.update(dict(frames=world.FRAMES, height=world.SIZE, width=world.SIZE))
  c.log_every = c.checkpoint_every = c.optim.total_steps
  c.prompts.erase = erase_pool
  c.prompts.preserve = preserve_pool or ""
  return c


def _sampler(pipe, steps: int) -> tuple[str, float]:
  """(scheduler name, flow shift) of the pipeline's own sampler, for the training trajectories."""
  own = pipe.scheduler(steps)
  return own.name, own.shift


def erase(model_dir: str, group: Sequence[ConceptSets], variant: Variant, config, workdir: str, pipe, log=None):
  """Run one erasure job in `workdir` that erases every concept of `group` with one eraser set; returns
  (erased transformer, {"seconds", "metrics"})."""
  os.makedirs(workdir, exist_ok=True)
  erase_entries = [e for sets in group for e in (sets.erase if variant.augment else sets.erase_single)]
  preserve_entries = list({e.prompt: e for sets in group for e in sets.preserve}.values())  # each prompt once
  erase_pool = write_pool(erase_entries, os.path.join(workdir, "erase.jsonl"))
  preserve_pool = write_pool(preserve_entries, os.path.join(workdir, "preserve.jsonl")) if variant.preserve else None
  run_config = erasure_config(config, variant, model_dir, workdir, erase_pool, preserve_pool,
                              *_sampler(pipe, config.erasure.trajectory.steps),
                              replacements(group, erase_entries, config.replacement_values))
  job = ErasureJob(run_config, progress=False)
  with contextlib.redirect_stdout(log or sys.stderr):
    job.run()
  last = {}  # the last training metrics (a RECE edit trains nothing)
  if os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f if line.strip()][-1]
  # From the stage marker: a rerun in a kept workdir skips the finished erasure and reads it back.
  return job.erased_models()[0], {"seconds": job.marker("erase")["seconds"], "metrics": last}


# -- evaluation --------------------------------------------------------------------------------------


def generate(pipe, texts: Sequence[str], config, seed: int, negative_prompt: str = "",
             erasers: bool = True) -> np.ndarray:
  """Float frames (N, F, H, W, 3) in [0, 1] of prompts `texts`, from the noise of `seed`, sampled as the
  erasure run config's evaluation samples."""
  ev = config.erasure.eval
  return pipe.generate(list(texts), negative_prompt=negative_prompt, height=world.SIZE, width=world.SIZE,
                       num_frames=world.FRAMES, steps=ev.steps, guidance=ev.guidance,
                       seed=seed, output="float", progress=False, erasers=erasers)


def anchor_texts(sets: ConceptSets) -> list[str]:
  """The set-(a) prompts with the concept phrase left out: what the base model draws for them is what a
  plausible erasure may draw in place of the concept."""
  return [world.leave_out(p, sets.kind) for p in sets.evaluation["train"].prompts]


def plausible_values(pipe, sets: ConceptSets, config, seed: int) -> list[str]:
  """The values of the concept's kind, the erased one excepted, that the base model draws for
  `anchor_texts` (from the noise of set (a))."""
  readings = classify_batch(generate(pipe, anchor_texts(sets), config, seed, erasers=False), value_range=(0, 1))
  return sorted(metrics.drawn_values(readings, sets.kind) - {sets.value})


def score(sets: ConceptSets, videos: dict, plausible: Sequence[str]) -> dict:
  """ESR on sets (a) and (b), PSR on (c); on (a) the erased element's other attributes, the other element
  in two-element scenes, and the share of readings of the concept's kind among `plausible`."""
  kind, ev = sets.kind, sets.evaluation
  readings = {name: classify_batch(videos[name], value_range=(0, 1)) for name in SETS}
  return {"esr_train": metrics.erasure_success_rate(readings["train"], kind, sets.value),
          "esr_held_out": metrics.erasure_success_rate(readings["held_out"], kind, sets.value),
          "psr": metrics.accuracy(readings["others"], ev["others"].scenes, kind),
          "attributes": metrics.attribute_preservation(readings["train"], ev["train"].scenes, kind),
          "other_element": metrics.other_element_kept(readings["train"], ev["train"].scenes, kind),
          "plausible": metrics.plausible_share(readings["train"], kind, plausible)}


@nnx.jit
def _concept_attention(model, x_t, t, cond, concept_mask):
  """(layers, B, S) cross-attention mass on the concept tokens, erasers off."""
  _, aux = model(x_t, t, cond, erasers=False, concept_mask=concept_mask, return_aux=True)
  return aux.concept_attention


def element_mask(scene: Scene, kind: str) -> np.ndarray:
  """(F, H, W) bool: the pixels of the element `kind` belongs to (the object, or the background it leaves)."""
  mask = world.object_mask(scene)
  return mask if kind in OBJECT_KINDS else ~mask


def localization(pipe, sets: ConceptSets, seed: int, sigma: float, threshold: float) -> np.ndarray:
  """(N, layers) IoU of the base model's concept masks with the true masks of the concept's element
  on set (a)."""
  if pipe.vae is not None:
    raise ValueError("localization IoU needs a pixel-space (toy) pipeline without a VAE")
  ev = sets.evaluation["train"]
  entries = [p.entry(sets.kind) for p in ev.prompts]
  concept_mask = token_spans(pipe.tokenizer, entries, pipe.text_length)
  x0 = np.stack([world.render(s) for s in ev.scenes]).transpose(0, 4, 1, 2, 3)  # (N, 3, F, H, W)
  noise = np.random.default_rng([seed, 2]).standard_normal(x0.shape).astype(np.float32)
  x_t = jnp.asarray(metrics.noised(x0, noise, sigma), jnp.float32)
  t = jnp.full((len(x0),), 1000.0 * sigma, jnp.float32)
  attention = np.asarray(_concept_attention(pipe.transformer, x_t, t, pipe.encode(ev.texts),
                                            jnp.asarray(concept_mask)))  # (L, N, S)
  grid = token_grid(pipe.transformer, x0.shape)
  scale = tuple(pipe.transformer.config.patch_size)  # pixel space: one latent pixel per pixel
  return np.stack([metrics.localization_iou(attention[:, i], grid, scale, element_mask(s, sets.kind),
                                            threshold) for i, s in enumerate(ev.scenes)])


def localization_ceiling(pipe, sets: ConceptSets) -> float:
  """Mean over set (a) of the best IoU any mask on the pipeline's token grid reaches."""
  scale = tuple(pipe.transformer.config.patch_size)
  return float(np.mean([metrics.best_token_iou(element_mask(s, sets.kind), scale)
                        for s in sets.evaluation["train"].scenes]))


# -- report ------------------------------------------------------------------------------------------


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def portable(value):
  """A config value as the results print it: paths inside the project relative to its root, so that the
  markdown does not depend on where the project lies."""
  if isinstance(value, dict):
    return {k: portable(v) for k, v in value.items()}
  if isinstance(value, str) and os.path.isabs(value) and os.path.commonpath([ROOT, value]) == ROOT:
    return os.path.relpath(value, ROOT)
  return value


def printed_command(argv: Sequence[str]) -> str:
  """The command line that regenerates the results: its arguments without `--config.workdir` (where job
  directories go changes no result)."""
  args, skip = [], False
  for a in argv:
    if not skip and not a.startswith("--config.workdir"):
      args.append(a)
    skip = a == "--config.workdir"  # its value follows
  return " ".join(["python -m t2vu_jax.toy.experiments", *map(shlex.quote, args)])


def markdown(results: dict, config, command: str, sheet: str | None, seconds: float) -> str:
  """The results as markdown: one table per concept."""
  shown = portable({**config.to_dict(), "workdir": ""})
  attacked = any("attacks" in r for r in results.values())
  lines = ["# Robustness of toy-world erasures" if attacked else "# Toy-world erasure experiments", "",
           f"Generated by `{command}` from the toy pipeline `{shown['model']}` in {seconds:.0f} s.", "",
           "Each concept is erased with the project's erasure job (stages load, encode, erase; on-policy "
           "trajectories) from prompts that name it with its training wordings; every model samples each "
           "evaluation set from the same noise, and the exact classifier reads the videos. Evaluation scenes "
           "come from their own seed streams and no evaluation prompt is a training prompt.", "",
           "Rows: **base** the pretrained model; **negative prompting** the base model with the concept's first "
           "training wording as negative prompt (in place of \"\"); **full** the config's method, L_u + λ_loc·L_loc + "
           "λ_pre·L_pre with the target v_a − η_σ(v_c − v_a) (objective fields in the config below), with "
           "preservation prompts naming the other values of the attribute; **no localization** λ_loc = 0; **no "
           "preservation** λ_pre = 0 and no preservation prompts; **no augmentation** erase prompts from one "
           "template with the first training wording of every attribute (one prompt per combination of the other "
           "attributes' values), preservation as in full; **paper target** full with the paper's target: v_a on "
           "\"\" (`objective.anchor=empty`), η = 1 at every noise level; **ungated guidance** full with the negative "
           "guidance at every noise level (`objective.guidance_sigma_min=0`); **replacement anchor** full with v_a "
           "on the prompt with another value of the concept's kind in its place (`objective.anchor=replace`, the "
           "first training wording of each other value or of the next `config.replacement_values`), at points of "
           "that prompt's trajectories; **RECE** RECE's closed-form edit of every block's cross-attention key "
           "and value projections with its adversarial rounds (`method=rece`, the same prompts); **robust option** "
           "full with the inner soft-prompt attack during training (`objective.adversarial=True`).", "",
           "- **ESR** (erasure success rate): share of videos prompted with the erased value whose reading of "
           "that attribute is not that value (a video without a visible object counts, so read it together "
           "with the other attributes); (a) training wordings, (b) the held-out wording.",
           "- **PSR** (preservation success rate): accuracy of the attribute on prompts naming its other "
           "values (c).",
           "- **other attributes**: accuracy of each other attribute of the erased element, and of both, on set "
           "(a) (a pattern has none).",
           "- **other element**: share of the two-element scenes of set (a) whose other element reads right (the "
           "background pattern after erasing an attribute of the object, the whole object after erasing a "
           "pattern): what localization is for.",
           "- **plausible**: share of set-(a) videos whose reading of the erased attribute is a value the base "
           "model draws for the same prompts with the concept phrase left out (the erased value excepted): "
           "not an \"opposite concept\" artefact, nor a vanished object.",
           "- **loc IoU**: IoU of the binarised cross-attention concept mask (heads averaged, summed over the "
           "concept tokens, min–max normalised per frame, > threshold: the masks of the localization loss) "
           "with the true mask of the concept's element (the object; the background for a pattern), mean "
           "over layers and videos of set (a). It is computed on the base "
           "model (erasers off) at x_t = (1 − σ) x0 + σ e, x0 the true scene video, e Gaussian noise, "
           f"σ = {config.loc_sigma} (t = {1000 * config.loc_sigma:g}), so it is the same for every method "
           "that uses localization. The line above each table adds the IoU at other noise levels σ and its "
           "ceiling: the mean IoU of the best mask of whole patch tokens (a token mask cannot do better).",
           "- **erasure s**: wall time of the erase stage (compilation included).", "",
           f"Config: `{json.dumps(shown, sort_keys=True)}`", ""]
  for name, r in results.items():
    attributes = list(r["rows"]["base"]["attributes"])  # the erased element's other attributes, and "both"
    element = " and ".join(metrics.other_element(r["kind"]))
    lines += [f"## {name}", "",
              f"{r['erase_prompts']} erase prompts ({r['erase_single_prompts']} without augmentation), "
              f"{r['preserve_prompts']} preservation prompts; {config.eval_videos} videos per evaluation set; "
              f"negative prompt \"{r['negative_prompt']}\"; other element: the {element} of the two-element "
              f"scenes of (a); plausible {r['kind']}s (drawn by the base model with the concept left out): "
              f"{', '.join(r['plausible']) or 'none'}; loc IoU per layer "
              f"{', '.join(f'{x:.2f}' for x in r['loc_layers'])}; loc IoU at σ "
              f"{', '.join(f'{k} {v:.2f}' for k, v in r['loc_by_sigma'].items())}; ceiling on the "
              f"{r['patch']} token grid {r['loc_ceiling']:.2f}.", "",
              "| model | ESR (a) | ESR (b) | PSR (c) | " + "".join(f"{k} (a) | " for k in attributes)
              + "other element (a) | plausible (a) | loc IoU | erasure s |",
              "|---|---|---|---|" + "---|" * len(attributes) + "---|---|---|---|"]
    for row in (row for row in ROWS if row in r["rows"]):  # a run of several concepts has the method alone
      s = r["rows"][row]
      loc = f"{r['loc']:.2f}" if s.get("loc") else "–"
      secs = f"{s['seconds']:.0f}" if "seconds" in s else "–"
      lines.append(f"| {row} | {percent(s['esr_train'])} | {percent(s['esr_held_out'])} | {percent(s['psr'])} | "
                   + "".join(f"{percent(s['attributes'][k])} | " for k in attributes)
                   + f"{percent(s['other_element'])} | {percent(s['plausible'])} | {loc} | {secs} |")
    if "attacks" in r:
      lines += robustness.markdown_lines(r, [row for row in ROWS if row in r["rows"]])
    lines.append("")
  if attacked:
    plot = os.path.basename(os.path.splitext(config.out)[0]) + "_attacks.png"
    lines += [f"Concept rate vs attack budget (`{plot}`): one panel per concept and attack, one line per model.", "",
              f"![concept rate vs attack budget]({plot})", ""]
  if sheet:
    lines += [f"Contact sheet (`{os.path.basename(sheet)}`): per concept, the first prompt of each evaluation "
              "set (a), (b), (c) from the base model, the full and prompt-anchor erasures and negative "
              "prompting, from the same noise; each row is labelled `value (set) | model | prompt`.", "",
              f"![contact sheet]({os.path.basename(sheet)})", ""]
  return "\n".join(lines)


def run(config, command: str = "", log=None) -> tuple[str, dict]:
  """Run every experiment of `config` (`configs/toy_experiments.py`); write the markdown to `config.out`
  and the contact sheet beside it (.png). Returns (markdown, results). Job directories go to
  `config.workdir` (default: a temporary one)."""
  groups, variants = validate(config)
  attacks = robustness.attack_names(config)
  log = log or sys.stderr
  start = time.time()
  pipe = load_pipeline(config.model, "float32", progress=False)
  if pipe.vae is not None:
    raise ValueError(f"{config.model} has a VAE: the toy experiments need a pixel-space toy pipeline")
  threshold = config.erasure.objective.threshold
  results, sheet_videos, sheet_labels = {}, [], []
  index = itertools.count()  # each concept's evaluation noise, in the order of the config
  with contextlib.ExitStack() as stack:
    workdir = config.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="toy_experiments_"))
    for group in groups:
      together = len(group) > 1
      runs = []  # per concept: its sets, seeds, plausible values, videos and rows
      for kind, value in group:
        sets = concept_sets(kind, value, config, exclude=set(group) - {(kind, value)})
        ci = next(index)
        seeds = {name: config.seed * 1_000 + 10 * ci + i for i, name in enumerate(SETS)}
        print(f"[{sets.name}] base and negative prompting", file=log, flush=True)
        runs.append(dict(sets=sets, seeds=seeds, videos={}, rows={},
                         plausible=plausible_values(pipe, sets, config, seeds["train"])))
      negative = ", ".join(r["sets"].negative_prompt for r in runs)

      def evaluate(r, row, model, negative="", erasers=True):
        r["videos"][row] = {name: generate(model, r["sets"].evaluation[name].texts, config, r["seeds"][name], negative,
                                           erasers) for name in SETS}
        return score(r["sets"], r["videos"][row], r["plausible"])

      for r in runs:
        r["rows"]["base"] = evaluate(r, "base", pipe, erasers=False)
        r["rows"]["negative prompting"] = evaluate(r, "negative prompting", pipe, negative, erasers=False)
      if attacks:  # one concept (validated): its base model and negative prompting attacked once
        r = runs[0]
        sets, attack_dir = r["sets"], os.path.join(workdir, f"{r['sets'].kind}_{r['sets'].value}_attacks")
        os.makedirs(attack_dir, exist_ok=True)
        pools = {name: write_pool(entries, os.path.join(attack_dir, f"{name}.jsonl")) for name, entries in
                 (("erase", sets.erase), ("preserve", sets.preserve), ("attack", robustness.attack_prompts(sets)))}
        r["attack_config"] = robustness.attack_config(config, config.model, pools)
        print(f"[{sets.name}] attacks on base and negative prompting", file=log, flush=True)
        r["attacks"] = {"prompts": r["attack_config"].eval.num_prompts, "rows": {},
                        "baselines": robustness.attack(pipe, pipe, r["attack_config"], attacks, robustness.BASELINES,
                                                       attack_dir, sets.negative_prompt)}
      for variant in ((VARIANTS["full"],) if together else variants):  # several concepts: the method alone
        label = "+".join(r["sets"].name for r in runs)
        print(f"[{label}] erasing: {variant.name}", file=log, flush=True)
        job_dir = os.path.join(workdir, "_".join(f"{k}_{v}" for k, v in group) + "_" + variant.name.replace(" ", "_"))
        transformer, info = erase(config.model, [r["sets"] for r in runs], variant, config, job_dir, pipe, log)
        erased = dataclasses.replace(pipe, transformer=transformer)
        for r in runs:
          r["rows"][variant.name] = {**evaluate(r, variant.name, erased), "seconds": info["seconds"],
                                     "loc": variant.loc, "final_metrics": info["metrics"]}
          print(f"[{r['sets'].name}] {variant.name}: {info['seconds']:.1f} s, {json.dumps(r['rows'][variant.name])}",
                file=log, flush=True)
          if attacks:
            print(f"[{r['sets'].name}] attacks on {variant.name}", file=log, flush=True)
            r["attacks"]["rows"][variant.name] = robustness.attack(pipe, erased, r["attack_config"], attacks,
                                                                   ("erased",), job_dir, r["sets"].negative_prompt)
      for r in runs:
        sets = r["sets"]
        locs = {sigma: localization(pipe, sets, config.seed, sigma, threshold)
                for sigma in dict.fromkeys((config.loc_sigma, *LOC_SIGMAS))}  # each noise level once
        loc = locs[config.loc_sigma]
        name = sets.name + (" (erased with " + ", ".join(o["sets"].name for o in runs if o is not r) + ")"
                            if together else "")
        results[name] = {"kind": sets.kind, "value": sets.value, "rows": r["rows"], "loc": float(loc.mean()),
                         **({"attacks": r["attacks"]} if "attacks" in r else {}),
                         "together_with": [[o["sets"].kind, o["sets"].value] for o in runs if o is not r],
                         "loc_layers": [float(x) for x in loc.mean(0)],
                         "loc_by_sigma": {sigma: float(locs[sigma].mean()) for sigma in LOC_SIGMAS},
                         "loc_ceiling": localization_ceiling(pipe, sets),
                         "patch": "x".join(map(str, pipe.transformer.config.patch_size[1:])),
                         "negative_prompt": negative, "plausible": r["plausible"],
                         "erase_prompts": len(sets.erase), "erase_single_prompts": len(sets.erase_single),
                         "preserve_prompts": len(sets.preserve)}
        for set_name in SETS:
          text = sets.evaluation[set_name].prompts[0].text
          for row in SHEET_ROWS:
            if row in r["videos"]:
              sheet_videos.append(r["videos"][row][set_name][0])
              sheet_labels.append(f"{sets.value} {SET_LABELS[set_name]} | {row} | {text}")
  sheet = os.path.splitext(config.out)[0] + ".png"
  os.makedirs(os.path.dirname(os.path.abspath(config.out)), exist_ok=True)
  if attacks:
    robustness.plot(results, [row for row in ROWS if any(row in r["rows"] for r in results.values())],
                    os.path.splitext(config.out)[0] + "_attacks.png")
  text = markdown(results, config, command, sheet, time.time() - start)
  with open(config.out, "w") as f:
    f.write(text)
  contact_sheet(sheet_videos, sheet_labels, sheet, scale=config.sheet_scale)
  return text, results


def parse_concepts(spec: str) -> tuple[tuple[str, str], ...]:
  """"colour:red,shape:circle" -> (("colour", "red"), ("shape", "circle"))."""
  out = []
  for item in spec.split(","):
    if item.strip():
      kind, sep, value = item.strip().partition(":")
      if not sep:
        raise ValueError(f"concept {item!r} is not kind:value (e.g. colour:red)")
      world.wordings(kind.strip(), value.strip())
      out.append((kind.strip(), value.strip()))
  return tuple(out)


def parse_groups(spec: str) -> tuple[tuple[tuple[str, str], ...], ...]:
  """The erasures of `config.concepts`: comma-separated, each one concept or several joined by "+" that
  one run erases with one eraser set: "colour:red,colour:red+shape:circle" -> (((colour, red),),
  ((colour, red), (shape, circle)))."""
  groups = []
  for item in spec.split(","):
    if item.strip():
      group = parse_concepts(item.replace("+", ","))
      if len(set(group)) != len(group):
        raise ValueError(f"{item.strip()!r} names a concept twice")
      groups.append(group)
  return tuple(groups)


def main(_):
  command = printed_command(sys.argv[1:])
  try:
    text, _ = run(loaded_config(), command)
  except ValueError as e:
    usage_error(e)
  print(text, end="")


if __name__ == "__main__":
  from absl import app
  define_config_flag(None, "experiments config: configs/toy_experiments.py (or :quick)")
  app.run(main, flags_parser=parse_flags)
