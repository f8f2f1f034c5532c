"""Run config groups built from the library's dataclasses, the scorer registry, the experiments config."""
import dataclasses
import os
import subprocess
import sys

import pytest

from configs import base, toy_experiments
from t2vu_jax.erase import run_config
from t2vu_jax.evaluate import scorers
from t2vu_jax.toy import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("group", list(run_config.GROUPS))
def test_config_groups_carry_the_dataclass_defaults(group):
  cls = run_config.GROUPS[group]
  config = base.get_config()
  assert set(config[group]) == {f.name for f in dataclasses.fields(cls)}
  assert run_config.settings(config, group) == cls()


def test_a_none_default_is_a_typed_field_the_command_line_sets():
  config = base.get_config()
  assert config.eraser.alpha is None and run_config.settings(config, "eraser").lora_scale == 1.0
  code = ("from absl import app, flags\nfrom ml_collections import config_flags\n"
          "config_flags.DEFINE_config_file('config', 'configs/base.py')\n"
          "app.run(lambda _: print(repr(flags.FLAGS.config.eraser.alpha)))")
  out = subprocess.run([sys.executable, "-c", code, "--config.eraser.alpha=8"], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "8.0"
  config.eraser.alpha, config.eraser.rank = 8.0, 4
  assert run_config.settings(config, "eraser").lora_scale == 2.0
  config.eraser.alpha = -1.0
  with pytest.raises(run_config.ConfigError, match=r"config\.eraser: LoRA alpha must be a finite positive"):
    run_config.settings(config, "eraser")


def test_scorer_registry():
  assert {"none", "nudenet", "toy"} <= set(scorers.names())
  assert scorers.get("none") is None
  toy = scorers.get("toy")
  assert issubclass(toy, scorers.Scorer) and toy.name == "toy" and toy.field == "reading"
  with pytest.raises(ValueError, match=r"'clip' is unknown; choose from \['none', "):
    scorers.get("clip")


def test_the_toy_scorer_refuses_a_run_that_is_not_a_toy_run():
  config = base.get_config()
  config.prompts.erase = os.path.join(ROOT, "t2vu_jax", "erase", "pools", "nudity.jsonl")
  with pytest.raises(ValueError, match="'toy' scores toy-world runs only"):
    scorers.get("toy").check(config)
  config.prompts.erase = os.path.join(ROOT, "t2vu_jax", "erase", "pools", "toy_red.jsonl")
  scorers.get("toy").check(config)
  assert scorers.get("toy")(config).summary() == {"concept": ["colour", "red"]}


@pytest.mark.parametrize("field, value, message", [
    ("concepts", "colour=red", "not kind:value"), ("concepts", "", "no concept"),
    ("concepts", "colour:teal", "teal"), ("eval_videos", 0, "eval_videos must be >= 1"),
    ("loc_sigma", 1.5, "loc_sigma must be in"), ("erasure.eraser.rank", 0, r"config\.erasure\.eraser: .*rank"),
    ("variants", "full,no masks", r"config\.variants: unknown row\(s\) \['no masks'\]"),
    ("variants", " , ", "no erasure row"),
    ("attacks", "concept_vector,jailbreak", r"config\.attacks: unknown attack\(s\) \['jailbreak'\]"),
    ("attacks", "soft_prompt", r"config\.attacks: attacks measure one concept per erasure"),  # the a+b group
    ("erasure.attack.soft_steps", "0,1.5", r"config\.erasure\.attack: .*soft_steps must be integers"),
])
def test_bad_experiments_configs_are_refused_before_any_model_loads(field, value, message):
  config = toy_experiments.get_config()
  config.concepts = "colour:red,colour:blue+shape:cross"
  *groups, name = field.split(".")
  node = config
  for g in groups:
    node = node[g]
  node[name] = value
  with pytest.raises(ValueError, match=message):
    experiments.validate(config)


def test_experiments_config_defaults_and_quick():
  config = toy_experiments.get_config()
  groups, variants = experiments.validate(config)
  assert groups == ((("colour", "red"),), (("shape", "circle"),))  # one erasure each
  assert variants == tuple(experiments.VARIANTS.values())  # every row by default
  sizes = experiments.PromptSetSizes()
  assert {f.name: config[f.name] for f in dataclasses.fields(sizes)} == dataclasses.asdict(sizes)
  assert config.erasure.stages == "load,encode,erase"
  quick = toy_experiments.get_config("quick")
  assert experiments.validate(quick)[0] == ((("colour", "red"),), (("colour", "blue"), ("shape", "cross")))
  assert quick.erasure.optim.total_steps == 1
  with pytest.raises(ValueError, match="'quick'"):
    toy_experiments.get_config("fast")


def test_robustness_config_attacks_a_colour_a_shape_and_a_motion_with_every_method():
  from configs import toy_robustness
  from t2vu_jax.attack import ATTACKS
  from t2vu_jax.toy import robustness
  config = toy_robustness.get_config()
  groups, variants = experiments.validate(config)
  assert sorted(kind for (kind, _), in groups) == ["colour", "motion", "shape"]
  assert [v.name for v in variants] == ["paper target", "full", "RECE", "robust option"]
  assert [v.method for v in variants] == ["erasers", "erasers", "rece", "erasers"]
  assert robustness.attack_names(config) == ATTACKS
  assert config.out.endswith(os.path.join("docs", "robustness.md"))
  experiments.validate(toy_robustness.get_config("quick"))
  assert robustness.attack_names(toy_experiments.get_config()) == ()  # the experiments attack nothing by default


@pytest.mark.parametrize("field", ["erase", "preserve", "evaluate"])
def test_a_pool_the_loader_rejects_fails_validation_not_a_later_stage(tmp_path, field):
  from configs import toy
  line = '{"prompt": "a red circle moving left", "concept": "red"}\n'
  bad = tmp_path / "bad.jsonl"
  bad.write_text(line + line)  # a duplicate prompt
  config = toy.get_config()
  config.prompts[field] = str(bad)
  with pytest.raises(run_config.ConfigError, match=rf"(?s)config\.prompts\.{field}: .*duplicate prompt"):
    run_config.validate(config)


def test_a_resumed_run_logs_each_step_once(tmp_path):
  """After a kill, training resumes from the last checkpoint (step 4 here) and logs steps 5.. again."""
  import json
  from t2vu_jax.erase.loop import MetricsLog
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
  log = MetricsLog(str(tmp_path), enabled=True, resume_step=4)
  log.write(5, {"loss": 0.5})
  log.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == 0.5


RED = '{"prompt": "a red circle moving left", "concept": "red"}\n'


@pytest.mark.parametrize("field, content, message", [
    ("erase", "", "empty"),
    ("erase", '{"prompt": "a red circle"\n', "JSON"),
    ("erase", '{"prompt": "a blue circle moving left", "concept": "red"}\n', "does not occur"),
    ("preserve", RED, "does not fit prompts.erase"),
    ("evaluate", "prompt\n", "header but no prompts"),
    ("evaluate", "prompt,seed\na cat,-1\n", "is negative"),
    ("evaluate", f"prompt,seed\na cat,{2**70}\n", "does not fit a 32-bit seed"),
])
def test_every_prompt_file_is_checked_before_any_weights_load(tmp_path, field, content, message):
  from configs import toy
  path = tmp_path / ("p.csv" if content.startswith("prompt") else "p.jsonl")
  path.write_text(content)
  config = toy.get_config()
  if field == "preserve":  # the preservation pool is the erase pool itself
    (tmp_path / "e.jsonl").write_text(RED)
    config.prompts.erase = str(tmp_path / "e.jsonl")
  config.prompts[field] = str(path)
  with pytest.raises(run_config.ConfigError, match=rf"(?s)config\.prompts\.{field}: .*{message}"):
    run_config.validate(config)


def test_checkpoints_none_of_which_can_be_read_stop_the_run(tmp_path):
  """A run never starts over silently: when every saved step is unreadable, restoring is an error."""
  import jax.numpy as jnp
  from t2vu_jax.checkpoint import RunCheckpointError, TrainCheckpoints
  state = {"a": jnp.ones(3)}
  saved = TrainCheckpoints(str(tmp_path / "checkpoints"), {"rank": 4})
  saved.save(1, state)
  saved.wait()
  for f in (tmp_path / "checkpoints" / "1").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "manifest" not in f.name and "METADATA" not in f.name:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with pytest.warns(UserWarning, match="cannot be read"), \
       pytest.raises(RunCheckpointError, match=r"no checkpoint in .*checkpoints can be read \(steps \[1\]\)"):
    TrainCheckpoints(str(tmp_path / "checkpoints"), {"rank": 4}).restore_latest(state)
  assert TrainCheckpoints(str(tmp_path / "fresh"), {"rank": 4}).restore_latest(state) == (0, None)


def test_checkpoints_written_before_they_were_signed_still_restore(tmp_path):
  import jax.numpy as jnp
  import numpy as np
  import orbax.checkpoint as ocp
  from t2vu_jax.checkpoint import TrainCheckpoints
  state = {"a": jnp.arange(3.0)}
  old = ocp.CheckpointManager(str(tmp_path / "checkpoints"), options=ocp.CheckpointManagerOptions(create=True))
  old.save(3, args=ocp.args.StandardSave(state))  # the unsigned layout: the state alone
  old.wait_until_finished()
  step, restored = TrainCheckpoints(str(tmp_path / "checkpoints"), {"rank": 4}).restore_latest(state)
  assert step == 3 and np.array_equal(restored["a"], state["a"])


def test_records_of_alpha_zero_read_as_alpha_equal_to_rank(tmp_path):
  import json
  (tmp_path / "config.json").write_text(json.dumps({"eraser": {"kind": "lora", "alpha": 0.0, "rank": 4}}))
  assert run_config.read_record(str(tmp_path / "config.json"))["eraser"]["alpha"] is None


def test_a_two_expert_pipeline_is_checked_before_any_weights_load(tmp_path):
  from configs import toy
  (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline", "boundary_ratio": 0.875, '
                                             '"transformer_2": ["diffusers", "WanTransformer3DModel"]}')
  config = toy.get_config()
  config.model.path = str(tmp_path)
  with pytest.raises(run_config.ConfigError, match=r"config\.model\.path: .*missing pipeline subfolder"):
    run_config.validate(config)  # the pipeline's own checks, before any weights load
  for sub in ("transformer", "transformer_2", "text_encoder", "tokenizer", "vae", "scheduler"):
    (tmp_path / sub).mkdir()
  (tmp_path / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": 1000}')
  config.trajectory.update(dict(steps=2, shift=1.0))  # one training point, at timestep 500: low noise only
  with pytest.raises(run_config.ConfigError, match=r"config\.trajectory\.steps: .*transformer \(high noise\)"):
    run_config.validate(config)
  config.trajectory.update(dict(steps=40, shift=12.0, guidance_2=3.0))
  config.eval.guidance_2 = 3.0
  run_config.validate(config)  # both experts get training points


@pytest.mark.parametrize("field", ["trajectory.guidance_2", "eval.guidance_2"])
def test_a_second_guidance_needs_a_second_expert(field):
  from configs import toy
  config = toy.get_config()  # the toy model: one transformer
  group, name = field.split(".")
  config[group][name] = 3.0
  with pytest.raises(run_config.ConfigError, match=rf"config\.{group}\.{name}: is set, but .* one transformer"):
    run_config.validate(config)
