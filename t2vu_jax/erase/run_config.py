"""The run config of an erasure (`configs/base.py`): its groups' defaults and its validation.

The groups with a dataclass (`eraser`, `objective`, `trajectory`, `optim`, `attack`) take their fields and
defaults from it (`config_group`) and are turned back into it with `settings`; the dataclasses check
their own values. `validate` checks the rest before any weights load; every error names the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing

import jax
import ml_collections
from ml_collections import config_dict

from t2vu_jax.attack.common import AttackConfig
from t2vu_jax.attention import check_backend
from t2vu_jax.erase.objective import ObjectiveConfig
from t2vu_jax.erase.prompts import ErasureSet, load_pools, parse_replacements, split_paths
from t2vu_jax.erase.rece import RECEConfig
from t2vu_jax.erase.train import OptimConfig
from t2vu_jax.erase.trajectory import TrajectoryConfig, expert_ranges
from t2vu_jax.evaluate import scorers
from t2vu_jax.evaluate.videos import evaluation_prompts
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models.erasers import EraserConfig
from t2vu_jax.models.erasers_params import EXPORT_FORMATS
from t2vu_jax.models.wan import REMAT_POLICIES
from t2vu_jax.sharding import MeshConfig

STAGES = ("load", "encode", "erase", "export", "evaluate", "attack", "report")
DEFAULT_STAGES = tuple(s for s in STAGES if s != "attack")  # attacks are asked for
GROUPS = {"eraser": EraserConfig, "objective": ObjectiveConfig, "trajectory": TrajectoryConfig,
          "optim": OptimConfig, "rece": RECEConfig, "attack": AttackConfig}
METHODS = ("erasers", "rece")  # trained erasers (the method), or RECE's closed-form edit (a baseline)
DTYPES = ("float32", "bfloat16")
VIDEO_MULTIPLE = 16  # sides of a video: the VAE stride 8 times the patch 2


# What determines the erasers a run trains: a rerun in the same run directory must not change these.
TRAINING_FIELDS = ("seed", "method", "model", "eraser", "objective", "trajectory", "optim", "rece", "video",
                   "batch_size", "preserve_batch_size", "prompts.erase", "prompts.preserve")
# Fields of those groups that do not change what is trained.
UNTRAINED_FIELDS = ("trajectory.pool_cache_mb", "model.remat", "model.attention")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def fail(field: str, message: str):
  raise ConfigError(f"config.{field}: {message}")


def config_group(cls) -> ml_collections.ConfigDict:
  """A config group with the fields and defaults of dataclass `cls`; a None default becomes a typed
  placeholder, so `--config.group.field=value` still parses."""
  hints = typing.get_type_hints(cls)
  defaults = cls()
  fields = {}
  for f in dataclasses.fields(cls):
    value = getattr(defaults, f.name)
    if value is None:
      value = config_dict.placeholder(next(t for t in typing.get_args(hints[f.name]) if t is not type(None)))
    fields[f.name] = value
  return ml_collections.ConfigDict(fields)


def settings(config, group: str):
  """The dataclass of config group `group` (one of `GROUPS`; its defaults where a run recorded before the
  group existed lacks it); a bad value is a ConfigError naming it."""
  try:
    return GROUPS[group](**(config[group].to_dict() if group in config else {}))
  except (ValueError, TypeError) as e:
    fail(group, str(e))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def read_record(path: str) -> dict:
  """A run's `config.json`. Records written before `eraser.alpha` could be null hold 0.0 for "alpha =
  rank"; they are read as null."""
  with open(path) as f:
    record = json.load(f)
  if record.get("eraser", {}).get("alpha") == 0:
    record["eraser"]["alpha"] = None
  return record


def training_differences(recorded: dict, config, ignore=()) -> list[str]:
  """`field: recorded -> now` for every training field (`TRAINING_FIELDS`) in which `config` differs from
  the recorded config (a `config.json` dict), except those in `ignore`. A field the record lacks is not
  compared."""
  old, new = _flat(recorded), _flat(json.loads(config.to_json_best_effort()))
  ignore = (*ignore, *UNTRAINED_FIELDS)
  fields = [k for k in sorted(old) if k not in ignore and any(k == f or k.startswith(f + ".") for f in TRAINING_FIELDS)]
  return [f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in fields if old[k] != new.get(k)]


def parse_stages(stages: str) -> list[str]:
  names = [s.strip() for s in str(stages).split(",") if s.strip()]
  if not names:
    fail("stages", "no stage selected")
  if unknown := [s for s in names if s not in STAGES]:
    fail("stages", f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
  return [s for s in STAGES if s in names]


def validate_model(config) -> None:
  """The `model` group's dtypes, remat policy and attention backend (which must run here)."""
  for field in ("dtype", "text_dtype"):
    if config.model[field] not in DTYPES:
      fail(f"model.{field}", f"{config.model[field]!r}: choose float32 or bfloat16")
  if config.model.remat not in REMAT_POLICIES:
    fail("model.remat", f"{config.model.remat!r} is unknown; choose one of {sorted(REMAT_POLICIES)}")
  try:
    check_backend(config.model.attention)
  except ValueError as e:
    fail("model.attention", str(e))


def validate(config) -> list[str]:
  """Check everything that can be checked before heavy work; returns the stages to run."""
  stages = parse_stages(config.stages)
  if not config.model.path:
    fail("model.path", "is empty; give a diffusers Wan T2V pipeline directory (Wan2.1, Wan2.2 TI2V-5B or A14B)")
  if not os.path.isdir(config.model.path):
    fail("model.path", f"directory does not exist: {config.model.path}")
  validate_model(config)
  if method(config) not in METHODS:
    fail("method", f"{method(config)!r} is unknown; choose one of {METHODS}")
  for group in GROUPS:
    settings(config, group)
  if os.path.isfile(os.path.join(config.model.path, "model_index.json")):
    _validate_experts(config)
  for group in ("video", "eval"):
    v = config[group]
    if v.frames < 1 or (v.frames - 1) % 4:
      fail(f"{group}.frames", f"{v.frames} is not 4k+1 (1, 5, 9, ..., 81)")
    for side in ("height", "width"):
      if v[side] <= 0 or v[side] % VIDEO_MULTIPLE:
        fail(f"{group}.{side}", f"{v[side]} is not a positive multiple of {VIDEO_MULTIPLE}")
  _validate_mesh(config.mesh)
  for field in ("batch_size", "preserve_batch_size", "log_every", "checkpoint_every"):
    if config[field] < 1:
      fail(field, f"must be >= 1, got {config[field]}")
  _validate_prompts(config, stages)
  _validate_export(config)
  _validate_eval(config, stages)
  if "attack" in stages and config.eval.scorer == "none":
    fail("eval.scorer", "the attack stage measures the concept rate and needs a scorer (toy or nudenet)")
  return stages


def pipeline_boundary(path: str) -> float | None:
  """The timestep at which a two-expert pipeline (Wan2.2 A14B) switches experts; None with one expert."""
  from t2vu_jax.pipeline import check_pipeline_dir
  ratio = check_pipeline_dir(path).get("boundary_ratio")
  if ratio is None:
    return None
  with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
    return ratio * json.load(f).get("num_train_timesteps", 1000)


def _validate_experts(config) -> None:
  """A second expert's guidance only for a two-expert pipeline, whose experts both get training points."""
  try:
    boundary = pipeline_boundary(config.model.path)
  except (CheckpointError, OSError, ValueError) as e:
    fail("model.path", str(e))
  if boundary is None:
    for field in ("trajectory.guidance_2", "eval.guidance_2"):
      group, name = field.split(".")
      if config[group].get(name) is not None:
        fail(field, f"is set, but {config.model.path} has one transformer; it is the guidance of a "
                    "two-expert (Wan2.2 A14B) pipeline's low-noise expert")
    return
  ranges = expert_ranges(settings(config, "trajectory").make_scheduler(), boundary)
  if empty := [name for name, (lo, hi) in zip(("transformer (high noise)", "transformer_2 (low noise)"), ranges)
               if lo == hi]:
    fail("trajectory.steps", f"with {config.trajectory.steps} steps at shift {config.trajectory.shift} no training "
         f"point falls in the range of {' or '.join(empty)}, which switch at timestep {boundary:g}; "
         "use more steps or another shift")


def _validate_mesh(mesh: str) -> None:
  try:
    MeshConfig.parse(mesh).shape(jax.device_count())
  except ValueError as e:
    fail("mesh", str(e))


def _validate_prompts(config, stages) -> None:
  if ("encode" in stages or "erase" in stages) and not config.prompts.erase:
    fail("prompts.erase", "is empty; give the JSONL prompt pool(s) of the concept to erase")
  if "evaluate" in stages and not config.prompts.evaluate:
    fail("prompts.evaluate", "is empty; the evaluate stage needs prompts disjoint from training")
  for field in ("erase", "preserve", "evaluate"):
    for path in split_paths(config.prompts[field]):
      if not os.path.isfile(path):
        fail(f"prompts.{field}", f"file does not exist: {path}")
  # Load them too: a pool the loader rejects must fail here, not after the erasure.
  for field in ("erase", "preserve"):
    if paths := split_paths(config.prompts[field]):
      try:
        pool = load_pools(paths)
      except ValueError as e:
        fail(f"prompts.{field}", str(e))
      if field == "erase" and config.objective.anchor == "replace":
        try:
          parse_replacements(config.objective.replacements, pool.concepts)
        except ValueError as e:
          fail("objective.replacements", str(e))
  erase, preserve = split_paths(config.prompts.erase), split_paths(config.prompts.preserve)
  if erase and preserve:
    try:
      ErasureSet.from_files(erase, preserve)
    except ValueError as e:
      fail("prompts.preserve", f"does not fit prompts.erase: {e}")
  if "evaluate" in stages:
    try:
      evaluation_prompts(config)
    except ValueError as e:
      fail("prompts.evaluate", str(e))


def method(config) -> str:
  """The run's erasure method (`METHODS`; "erasers" where a run recorded before RECE lacks the field)."""
  return config.get("method", "erasers")


def _validate_export(config) -> None:
  formats = split_paths(config.export.formats)
  if unknown := [f for f in formats if f not in EXPORT_FORMATS]:
    fail("export.formats", f"unknown format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
  if method(config) == "rece":
    if formats != ["merged"]:
      fail("export.formats", "a RECE run has no erasers: its edit exports as 'merged' only (a diffusers transformer)")
  elif config.eraser.kind == "adapter" and any(f in ("lora", "merged") for f in formats):
    fail("export.formats", "adapter erasers export only as 'adapter' (lora/merged need eraser.kind='lora')")
  if config.export.dtype not in DTYPES:
    fail("export.dtype", f"{config.export.dtype!r}: choose float32 or bfloat16")


def _validate_eval(config, stages) -> None:
  for field in ("num_prompts", "seeds", "steps", "score_every", "fps", "decode_chunk"):
    if config.eval[field] < 1:
      fail(f"eval.{field}", f"must be >= 1, got {config.eval[field]}")
  try:
    scorer = scorers.get(config.eval.scorer)
    if scorer is not None and "evaluate" in stages and config.prompts.erase:
      scorer.check(config)
  except ValueError as e:
    fail("eval.scorer", str(e))
