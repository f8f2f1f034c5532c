"""Toy erasure experiments: the prompt sets, and a --quick run end to end on a tiny pretrained pipeline."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import toy_experiments
from t2vu_jax.erase.prompts import ErasureSet, PromptPool
from t2vu_jax.evaluate.sheet import sheet_size
from t2vu_jax.toy import experiments as E
from t2vu_jax.toy import pretrain as P
from t2vu_jax.toy import world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = toy_experiments.get_config()
SMALL.eval_videos = 12
QUICK = toy_experiments.get_config("quick")


@pytest.mark.parametrize("kind, value", [("colour", "red"), ("shape", "cross"), ("motion", "still"),
                                         ("pattern", "dots")])
def test_prompt_sets(kind, value):
  sets = E.concept_sets(kind, value, SMALL)
  train = world.wordings(kind, value, held_out=False)
  assert len(sets.erase) == len(world.TEMPLATES) * len(train) * SMALL.erase_per_wording
  assert {e.concept for e in sets.erase} == set(train)  # every training wording, no held-out one
  assert {world.value_of(kind, e.concept) for e in sets.preserve} == set(world.VALUES[kind]) - {value}
  assert len({e.concept for e in sets.erase_single}) == 1
  ErasureSet(PromptPool(sets.erase), PromptPool(sets.preserve))  # valid pools, no conflict
  ErasureSet(PromptPool(sets.erase_single), PromptPool(sets.preserve))
  training = {e.prompt for e in sets.erase + sets.erase_single + sets.preserve}
  for name, ev in sets.evaluation.items():
    assert len(ev.prompts) == len(ev.scenes) == SMALL.eval_videos
    assert not training & set(ev.texts), name
    for p, s in zip(ev.prompts, ev.scenes):
      assert all(world.value_of(k, p.phrase(k)) == s.value(k) for k in s.kinds)  # the prompt describes its scene
      assert world.read_prompt(p.text) == {k: s.value(k) for k in world.KINDS}
      world.object_mask(s)  # inside the frame throughout
    two = np.mean([s.pattern is not None for s in ev.scenes])  # two-element scenes to measure the other element
    assert two == (1.0 if kind == "pattern" else 0.5), (name, two)
  phrases = lambda name: [p.phrase(kind) for p in sets.evaluation[name].prompts]
  assert all(world.value_of(kind, x) == value and not world.is_held_out(kind, x) for x in phrases("train"))
  assert all(world.value_of(kind, x) == value and world.is_held_out(kind, x) for x in phrases("held_out"))
  others = [s.value(kind) for s in sets.evaluation["others"].scenes]
  assert value not in others and len(set(others)) == len(world.VALUES[kind]) - 1
  assert sets.negative_prompt == train[0]
  again = E.concept_sets(kind, value, SMALL)
  assert again == sets  # a function of the settings
  other_seed = toy_experiments.get_config()
  other_seed.eval_videos, other_seed.seed = 12, 1
  assert E.concept_sets(kind, value, other_seed).evaluation != sets.evaluation


def test_variant_configs():
  experiments = toy_experiments.get_config()
  config = E.erasure_config(experiments, E.VARIANTS["no localization"], "/m", "/w/run", "/w/e.jsonl", None,
                            "unipc", 1.0)
  assert config.objective.lambda_loc == 0.0 and config.objective.lambda_pre == 1.0
  for field in ("anchor", "eta", "guidance_sigma_min", "threshold"):  # the rest is the config's method
    assert config.objective[field] == experiments.erasure.objective[field], field
  paper = E.erasure_config(experiments, E.VARIANTS["paper target"], "/m", "/w/run", "/w/e.jsonl", "/w/p.jsonl",
                           "unipc", 1.0).objective  # the paper's ∅ target at every noise level, whatever the default
  assert (paper.anchor, paper.eta, paper.guidance_sigma_min) == ("empty", 1.0, 0.0)
  assert paper.lambda_loc == paper.lambda_pre == 1.0
  # The replacement anchor names, for each concept phrase of its prompts, the other values of its kind.
  group = [E.concept_sets("colour", "red", SMALL), E.concept_sets("motion", "left", SMALL)]
  spec = E.replacements(group, [e for sets in group for e in sets.erase_single])
  assert spec == "red: green, blue, yellow, white; moving left: moving right, moving up, moving down, standing still"
  replaced = E.erasure_config(experiments, E.VARIANTS["replacement anchor"], "/m", "/w/run", "/w/e.jsonl", None,
                              "unipc", 1.0, spec).objective  # the config's guidance, the concepts' replacements
  assert (replaced.anchor, replaced.replacements) == ("replace", spec)
  for field in ("eta", "guidance_sigma_min"):
    assert replaced[field] == experiments.erasure.objective[field], field
  assert E.replacement_values("colour", "white", 1) == ("red",)  # the next values, cyclic
  assert E.replacement_values("motion", "up", 2) == ("down", "still")
  assert E.replacements(group[:1], group[0].erase, 1) == "red: green; crimson: green; ruby: green"
  assert config.prompts.preserve == "" and config.stages == "load,encode,erase"
  assert (config.video.frames, config.video.height, config.video.width) == (world.FRAMES, world.SIZE, world.SIZE)
  assert E.parse_concepts("colour:red, shape:circle") == (("colour", "red"), ("shape", "circle"))
  with pytest.raises(ValueError):
    E.parse_concepts("colour=red")
  assert E.parse_groups("colour:red, shape:circle+motion:left") == ((("colour", "red"),),
                                                                  (("shape", "circle"), ("motion", "left")))
  with pytest.raises(ValueError, match="twice"):
    E.parse_groups("colour:red+colour:red")
  # Erased together: no prompt of one concept's sets names the other (its erasure would change them).
  red = E.concept_sets("colour", "red", SMALL, exclude={("shape", "circle")})
  prompts = [e.prompt for e in red.erase + red.erase_single + red.preserve]
  prompts += [t for ev in red.evaluation.values() for t in ev.texts]
  assert prompts and not any(world.read_prompt(t)["shape"] == "circle" for t in prompts)
  assert E.concept_sets("colour", "red", SMALL).erase != red.erase
  with pytest.raises(ValueError, match="erased and excluded"):
    E.concept_sets("colour", "red", SMALL, exclude={("colour", "red")})


def quick_run(tmp_path, config: str, out_name: str):
  """The experiments command with `config` on a toy pipeline pretrained for 3 steps, both in fresh
  processes as the user runs them (XLA optimises less, which only shortens compilation, most of the
  time): (completed process, out file, model dir, job dir, environment)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip())
  model = tmp_path / "toy"
  pretrain = ("from t2vu_jax.toy import pretrain as P\n"
              "model, tokenizer, _ = P.pretrain(0, P.TrainConfig(steps=3, batch=4, warmup=1), log=None)\n"
              f"P.save_pipeline(model, tokenizer, {str(model)!r})\n")
  subprocess.run([sys.executable, "-c", pretrain], env=env, cwd=ROOT, check=True)
  out, jobs = tmp_path / "docs" / out_name, tmp_path / "jobs"
  run = subprocess.run([sys.executable, "-m", "t2vu_jax.toy.experiments", f"--config={config}",
                        f"--config.model={model}", f"--config.out={out}", f"--config.workdir={jobs}"], env=env,
                       cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  return run, out, model, jobs, env


def test_quick_run_on_a_tiny_pretrained_pipeline(tmp_path):
  """The command line in --quick mode on a toy pipeline pretrained for 3 steps."""
  run, out, model, jobs, env = quick_run(tmp_path, "configs/toy_experiments.py:quick", "toy_results.md")
  text = out.read_text()
  assert run.stdout == text
  assert f"python -m t2vu_jax.toy.experiments --config=configs/toy_experiments.py:quick --config.model={model}" \
      in text.splitlines()[2]
  # One erasure of red per chosen variant; blue and cross erased together, by the method alone.
  assert E.parse_groups(QUICK.concepts) == ((("colour", "red"),), (("colour", "blue"), ("shape", "cross")))
  variants = QUICK.variants.split(",")
  for row in E.ROWS:
    expected = 3 if row in ("base", "negative prompting", "full") else 1 if row in variants else 0
    assert text.count(f"\n| {row} |") == expected, row
  assert "## shape: cross (erased with colour: blue)" in text
  _, ph, pw = P.TOY_WAN.patch_size
  assert "loc IoU at σ 0.3 " in text and f"ceiling on the {ph}x{pw} token grid 0." in text
  for variant in variants:  # every erasure ran its job to the end (names with spaces as underscores)
    assert (jobs / f"colour_red_{variant.replace(' ', '_')}" / "stages" / "erase").exists()
  assert (jobs / "colour_blue_shape_cross_full" / "stages" / "erase").exists()
  rows = len(E.SETS) * (len(E.SHEET_ROWS) + 2 * (len(E.SHEET_ROWS) - 1))  # no paper-target row for blue, cross
  assert Image.open(out.with_suffix(".png")).size == sheet_size([(5, 16, 16, 3)] * rows, QUICK.sheet_scale)
  # Rerun in the kept workdir: the finished erasures are read back, not redone.
  again = subprocess.run(run.args, env=env, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "[erase] already done, skipping" in again.stderr
  assert again.stdout.count("\n| full |") == 3


@pytest.mark.parametrize("kind, value", [(k, v) for k in world.KINDS for v in world.VALUES[k]])
def test_pool_writer_writes_valid_pools_for_every_concept(tmp_path, kind, value):
  """Every concept's three pools load: no duplicate prompt within or across them, every concept phrase
  locatable, evaluation disjoint from training (the loader's own checks)."""
  from t2vu_jax.erase.prompts import load_pool
  from t2vu_jax.toy.pools import write_run_pools
  paths = write_run_pools(kind, value, tmp_path, tmp_path)
  prompts = ErasureSet.from_files([paths["erase"]], [paths["preserve"]])
  evaluation = load_pool(paths["evaluate"])
  assert len(evaluation) == len(E.SETS) * E.PromptSetSizes().eval_videos
  assert not {e.prompt for e in evaluation} & {e.prompt for pool in (prompts.erase, prompts.preserve) for e in pool}


def test_robustness_quick_run_attacks_every_row_and_plots_the_budgets(tmp_path):
  """The robustness study in --quick mode on a toy pipeline pretrained for 3 steps: an attack table with
  every row and budget point, the goals line only where the robust option ran, and the plot."""
  from configs import toy_robustness
  _, out, _, jobs, _ = quick_run(tmp_path, "configs/toy_robustness.py:quick", "robustness.md")
  text = out.read_text()
  assert text.startswith("# Robustness of toy-world erasures")
  quick = toy_robustness.get_config("quick")
  attack = quick.erasure.attack
  header = next(line for line in text.splitlines() if line.startswith("| model | PSR (c) |"))
  points = [f"concept_vector strength {s}" for s in attack.strengths.split(",")] + \
           [f"soft_prompt {s} steps x {attack.soft_tokens}" for s in attack.soft_steps.split(",")] + \
           [f"resurgence {s} steps" for s in attack.resurgence_steps.split(",")]
  assert header == "| model | PSR (c) | " + " | ".join(points) + " |"
  for row in ("base", "negative prompting", *quick.variants.split(",")):
    assert text.count(f"\n| {row} |") == 2, row  # the erasure table and the attack table
  assert "Robust option against the goals" not in text  # no robust-option row in the quick study
  for row in quick.variants.split(","):  # each row's attacks kept in its job directory
    for name in quick.attacks.split(","):
      assert (jobs / f"colour_red_{row}" / "attacks" / f"{name}.json").exists()
  assert Image.open(out.parent / "robustness_attacks.png").size[0] > 0


def test_robustness_attacks_are_read_back_from_a_kept_job_directory(tmp_path):
  """A finished attack is read from `attacks/<name>.json`: nothing is loaded or sampled again."""
  import json
  from configs import toy_robustness
  from t2vu_jax.toy import robustness
  config = toy_robustness.get_config()
  settings = {**config.erasure.attack.to_dict(), "negative_prompt": "red"}
  result = {"attack": "soft_prompt", "budget": {"name": "steps (x tokens)", "tokens": 4},
            "rates": {"erased": {"0": 0.0, "50": 0.25}}, "settings": settings}
  (tmp_path / "attacks").mkdir()
  (tmp_path / "attacks" / "soft_prompt.json").write_text(json.dumps(result))
  got = robustness.attack(None, None, config.erasure, ("soft_prompt",), ("erased",), str(tmp_path), "red")
  assert got == {"rates": {"soft_prompt": result["rates"]}, "budget": {"soft_prompt": result["budget"]}}
  with pytest.raises(AttributeError, match="encode"):  # other settings: the attack runs again (on no model here)
    robustness.attack(None, None, config.erasure, ("soft_prompt",), ("erased",), str(tmp_path), "crimson")


def test_the_printed_config_and_command_do_not_depend_on_where_the_project_lies():
  shown = E.portable({**SMALL.to_dict(), "workdir": ""})
  assert shown["model"] == os.path.join("t2vu_jax", "toy", "pretrained")
  assert shown["erasure"]["prompts"]["erase"] == os.path.join("t2vu_jax", "erase", "pools", "toy_red.jsonl")
  assert E.portable("/elsewhere/model") == "/elsewhere/model"  # outside the project: as given
  for argv in (["--config=configs/toy_robustness.py", "--config.workdir=/tmp/jobs"],
               ["--config=configs/toy_robustness.py", "--config.workdir", "/tmp/jobs"]):
    assert E.printed_command(argv) == "python -m t2vu_jax.toy.experiments --config=configs/toy_robustness.py"
