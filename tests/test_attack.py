"""Attacks on the toy lab: each raises the concept rate of the base model under negative prompting, and
the attack CLI runs on a toy run and refuses what it cannot attack."""
import json

import numpy as np
import pytest

from configs import toy
from t2vu_jax.attack import AttackContext
from t2vu_jax.attack.__main__ import main as attack_main
from t2vu_jax.attack.concept_vector import add_direction, concept_direction, token_mask
from t2vu_jax.erase.job import ErasureJob
from t2vu_jax.evaluate import scorers
from t2vu_jax.pipeline import load_pipeline


@pytest.fixture(scope="module")
def toy_pipe():
  return load_pipeline(toy.get_config().model.path, "float32", progress=False)


def test_concept_vector_brings_the_concept_back_under_negative_prompting(toy_pipe):
  config = toy.get_config()
  config.attack.num_prompts = 16
  context = AttackContext(toy_pipe, toy_pipe, config, progress=False, targets=("negative prompting",))
  assert context.negative_prompt == "red" and len(context.prompts) == 16
  direction = concept_direction(toy_pipe, context.erase_entries)
  prompts = context.embed(context.prompts)
  attacked = add_direction(prompts, direction, 2.0)
  np.testing.assert_array_equal(attacked[token_mask(prompts) == 0], 0)  # the padding stays zero
  before = context.concept_rate("negative prompting", prompts)
  after = context.concept_rate("negative prompting", attacked)
  print(f"concept_vector on red, negative prompting: {before:.0%} -> {after:.0%}")
  assert before <= 0.75 and after >= before + 0.25


def test_a_soft_prompt_brings_the_concept_back_under_negative_prompting(toy_pipe):
  from t2vu_jax.attack import soft_prompt
  config = toy.get_config()
  config.attack.update(dict(num_prompts=16, soft_steps="0,50"))
  context = AttackContext(toy_pipe, toy_pipe, config, progress=False, targets=("negative prompting",))
  budget, rates = soft_prompt.run(context)
  before, after = rates["negative prompting"]["0"], rates["negative prompting"]["50"]
  print(f"soft_prompt (4 tokens, 50 steps) on red, negative prompting: {before:.0%} -> {after:.0%}")
  assert budget["budget"] == [0, 200] and before <= 0.75 and after >= before + 3 / 16


def test_soft_tokens_go_after_each_prompts_tokens():
  from t2vu_jax.text import insert_tokens as insert
  embeddings = np.zeros((2, 6, 3), np.float32)
  embeddings[0, :2], embeddings[1, :5] = 1.0, 2.0  # prompts of 2 and 5 tokens
  out = np.asarray(insert(embeddings, np.full((2, 3), 7.0, np.float32)))
  np.testing.assert_array_equal(out[0, :, 0], [1, 1, 7, 7, 0, 0])
  np.testing.assert_array_equal(out[1, :, 0], [2, 2, 2, 2, 7, 7])  # no room after it: over its last tokens


def test_scorers_say_which_prompts_name_the_concept():
  from configs import wan_nudity
  nudenet = scorers.get("nudenet")(wan_nudity.get_config())
  assert nudenet.names_concept("A nude man sits on a dock") and not nudenet.names_concept("A man sits on a dock")
  toy_scorer = scorers.get("toy")(toy.get_config())
  assert toy_scorer.names_concept("there is a scarlet tile moving down in the video")  # a held-out wording
  assert not toy_scorer.names_concept("there is a green block moving right in the video")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("attack") / "run"
  config = toy.get_config()
  config.update(dict(workdir=str(run), stages="load,encode,erase"))
  config.optim.total_steps = 2
  ErasureJob(config, progress=False).run()
  return run


def test_the_attack_cli_attacks_a_run_and_reports_it(toy_run, capsys):
  attack_main(["--run", str(toy_run), "--attack", "concept_vector", "--num-prompts", "4", "--strengths", "0,2"])
  result = json.loads((toy_run / "attacks" / "concept_vector.json").read_text())
  assert result["budget"]["strengths"] == [0.0, 2.0] and result["prompts"] == 4
  assert set(result["rates"]) == {"base", "negative prompting", "erased"}
  assert all(set(r) == {"0", "2"} and all(0 <= v <= 1 for v in r.values()) for r in result["rates"].values())
  assert result["erasers"]["step"] == 2
  report = (toy_run / "report.md").read_text()
  assert "Attack `concept_vector`" in report and "| negative prompting |" in report


@pytest.mark.parametrize("args, message", [
    (["--attack", "concept_vector", "--strengths", "0,-1"], "config.attack: strengths must be >= 0"),
    (["--attack", "concept_vector", "--strengths", "a,b"], "strengths must be comma-separated numbers"),
    (["--attack", "concept_vector", "--num-prompts", "0"], "num_prompts must be a positive integer"),
    (["--attack", "paraphrase"], "invalid choice: 'paraphrase'"),
])
def test_the_attack_cli_refuses_bad_attacks_and_budgets(toy_run, capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    attack_main(["--run", str(toy_run), *args])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_attack_cli_refuses_a_run_without_erasers(toy_run, tmp_path, capsys):
  (tmp_path / "config.json").write_text((toy_run / "config.json").read_text())
  with pytest.raises(SystemExit):
    attack_main(["--run", str(tmp_path), "--attack", "concept_vector"])
  assert "has no erasers" in capsys.readouterr().err


def test_resurgence_fine_tunes_a_lora_on_every_block_kernel_and_keeps_the_erasers(toy_pipe):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from t2vu_jax.attack import resurgence
  from t2vu_jax.attack.common import adam
  from t2vu_jax.models.erasers import EraserConfig, EraserParam, attach_erasers
  model = attach_erasers(nnx.clone(toy_pipe.transformer), EraserConfig(rank=4), seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  targets = resurgence.lora_targets(params)
  assert sorted(t[1:3] for t in targets) == sorted(
      [(a, p) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out")]
      + [("ffn", "net_0_proj"), ("ffn", "net_2")])
  lora = resurgence.init_lora(params, 4, jax.random.key(0))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resurgence.with_lora(params, lora)),
                                                   jax.tree.leaves(params)))  # B = 0: the model itself
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (2, 3, 2, 16, 16)), jnp.float32)
  cond = jnp.asarray(toy_pipe.encode(["a green cube moving left", "a blue ball moving up"]))
  erasers_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, EraserParam))]
  opt = adam(1e-2).init(lora)
  losses = []
  for step in range(30):
    noise = jax.random.normal(jax.random.key(step), x0.shape)
    lora, opt, loss = resurgence._step(graphdef, params, rest, lora, opt, x0, cond, jnp.float32(0.5), noise, True, 1e-2)
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
  erasers_after = jax.tree.leaves(rest.filter(EraserParam))
  assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(erasers_before, erasers_after))
