"""Shipped erasure configs and their prompt files; the prompt augmentation tool with tiny local LMs."""
import importlib
import importlib.util
import json
import os

import pytest

from builders import build_tokenizer
from t2vu_jax.erase import job
from t2vu_jax.erase import prompts as P
from t2vu_jax.erase import run_config
from t2vu_jax.text import clean_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
               if f.endswith(".py")
               and f not in ("__init__.py", "base.py", "toy.py", "toy_rece.py", "toy_experiments.py",
                             "toy_robustness.py"))  # the toy ones: tests of their own; experiments configs
spec = importlib.util.spec_from_file_location("augment_prompts", os.path.join(ROOT, "tools", "augment_prompts.py"))
A = importlib.util.module_from_spec(spec)
spec.loader.exec_module(A)


def load_config(name, model_dir):
  c = importlib.import_module(f"configs.{name}").get_config()
  c.model.path = str(model_dir)
  return c


def paths(value):
  return [p.strip() for p in str(value).split(",") if p.strip()]


def eval_prompts(c):
  out = []
  for path in paths(c.prompts.evaluate):
    if path.endswith(".csv"):
      from t2vu_jax.evaluate import read_prompt_csv
      out += [r.prompt for r in read_prompt_csv(path)]
    else:
      out += [e.prompt for e in P.load_pool(path).entries]
  return out


# Configs.

def test_every_erasure_config_is_found():
  assert {"wan_nudity", "wan14b_nudity", "wan_object", "wan_celebrity"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_its_prompt_files_load(name, tmp_path):
  c = load_config(name, tmp_path)
  assert job.validate(c) == list(run_config.DEFAULT_STAGES)
  prompts = P.ErasureSet.from_files(paths(c.prompts.erase), paths(c.prompts.preserve) or None)
  assert prompts.preserve is not None and len(prompts.erase) >= 16
  P.token_spans(build_tokenizer(), prompts.erase.entries)  # every concept is locatable in its prompt
  held_out = eval_prompts(c)
  assert len(held_out) >= 8 and len(held_out) >= c.eval.num_prompts
  training = {clean_prompt(e.prompt) for pool in (prompts.erase, prompts.preserve) for e in pool}
  assert not training & {clean_prompt(p) for p in held_out}, "evaluation prompts overlap training prompts"
  for path in paths(c.prompts.evaluate):
    if path.endswith(".jsonl"):
      assert set(P.load_pool(path).concepts) <= set(prompts.concepts)


def test_config_names_are_distinct(tmp_path):
  configs = [load_config(n, tmp_path) for n in NAMES]
  assert len({c.name for c in configs}) == len(configs)


def test_config_without_model_path_is_rejected():
  c = importlib.import_module("configs.wan_object").get_config()
  with pytest.raises(job.ConfigError, match="model.path"):
    job.validate(c)


# The candidate filter.

def test_check_candidate_keeps_valid_rewrites_and_names_each_rejection():
  seen = {clean_prompt("A red car drives along a coast road.")}
  ok = "A dusty car rolls through a desert town at noon, heat shimmering as the camera tracks beside it."
  assert A.check_candidate(f"  {ok} \n", "car", seen) == (ok, None)
  assert clean_prompt(ok) in seen
  assert A.check_candidate(f'"{ok.replace("dusty", "muddy")}"', "car", seen)[0] == ok.replace("dusty", "muddy")
  assert A.check_candidate("A Car parks outside.", "car", seen) == ("A Car parks outside.", None)
  assert A.check_candidate(f"{ok}", "car", seen) == (None, "duplicate")
  assert A.check_candidate("A  red car drives along a coast road. ", "car", seen) == (None, "duplicate")
  assert A.check_candidate("   ", "car", seen) == (None, "empty")
  assert A.check_candidate('""', "car", seen) == (None, "empty")
  assert A.check_candidate("A blue car waits.\nThe camera pans.", "car", seen) == (None, "more than one line")
  assert A.check_candidate("A bus waits at the stop.", "car", seen) == (None, "concept missing")
  assert A.check_candidate("A man in a scarf drives a van.", "car", seen) == (None, "concept inside a word")
  # The whole word is found past "scarf", so the candidate is kept.
  assert A.check_candidate("A man in a scarf drives a car.", "car", seen) == ("A man in a scarf drives a car.", None)
  assert A.check_candidate("Taylor Swift reads in a cafe.", "Taylor Swift", seen)[1] is None
  assert A.check_candidate("Taylor sings swiftly.", "Taylor Swift", seen) == (None, "concept missing")


def test_build_prompt_uses_the_chat_template_when_there_is_one():
  tok = build_tokenizer()
  plain = A.build_prompt(tok, "A red car at night.", "car")
  assert plain.endswith("Detailed video caption:") and '"car"' in plain and "A red car at night." in plain
  tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
  chat = A.build_prompt(tok, "A red car at night.", "car")
  assert chat.startswith("<user>") and chat.endswith("</user><bot>") and "A red car at night." in chat


# The tool end to end.

CAPTION = " A red car drives slowly along a quiet road at night."


def seed_pool(path, n=3):
  lines = [l for l in open(os.path.join(P.POOL_DIR, "car.jsonl")) if l.strip() and not l.startswith("#")][:n]
  path.write_text("".join(lines))
  return path


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
  """Two tiny GPT-2 LMs with a byte-level BPE tokenizer: one random (plain prompts), and one trained
  here to answer every instruction of the seed pool with CAPTION (chat template)."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield build_lms(tmp_path_factory.mktemp("lms"))
  finally:
    torch.set_num_threads(threads)


def build_lms(root):
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  pool = P.load_pool(seed_pool(root / "pool.jsonl"))
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([A.INSTRUCTION, CAPTION] + [e.prompt for e in pool], trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
  config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                                   bos_token_id=0, eos_token_id=0)
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(root / "random")
  tokenizer.save_pretrained(root / "random")

  tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|bot|>"
  model = transformers.GPT2LMHeadModel(config)
  opt = torch.optim.Adam(model.parameters(), lr=1e-2)
  answer = tokenizer(CAPTION, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
  batch = []
  for e in pool:
    prompt = tokenizer(A.build_prompt(tokenizer, e.prompt, e.concept), add_special_tokens=False)["input_ids"]
    batch.append((torch.tensor([prompt + answer]), len(prompt)))
  for step in range(150):
    ids, n = batch[step % len(batch)]
    labels = ids.clone()
    labels[:, :n] = -100
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
  model.save_pretrained(root / "trained")
  tokenizer.save_pretrained(root / "trained")
  return root


def entries(path):
  return [(e.prompt, e.concept) for e in P.load_pool(path).entries]


def test_random_lm_output_is_valid_counted_and_deterministic(lms, tmp_path, capsys):
  pool = seed_pool(tmp_path / "pool.jsonl")
  args = ["--model", str(lms / "random"), "--pool", str(pool), "--per-prompt", "3", "--seed", "7",
          "--max-new-tokens", "16"]
  assert A.main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
  report = capsys.readouterr().out
  assert A.main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
  assert capsys.readouterr().out.replace("b.jsonl", "a.jsonl") == report
  assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
  out = entries(tmp_path / "a.jsonl")
  assert out[:3] == entries(pool)
  accepted = len(out) - 3
  assert f"accepted {accepted}, rejected {9 - accepted}" in report
  assert accepted < 9 and "cut off at --max-new-tokens" in report
  assert not list(tmp_path.glob(".augment-*"))


def test_sampling_follows_the_seed_and_greedy_ignores_it(lms):
  tokenizer, model = A.load_model(str(lms / "random"))
  text = A.build_prompt(tokenizer, "A red car at night.", "car")
  first = A.generate(tokenizer, model, text, 3, 1, 12, 0.9)
  assert first == A.generate(tokenizer, model, text, 3, 1, 12, 0.9)
  assert first != A.generate(tokenizer, model, text, 3, 2, 12, 0.9)
  assert len({t for t, _ in first}) == 3
  assert A.generate(tokenizer, model, text, 1, 1, 12, 0.0) == A.generate(tokenizer, model, text, 1, 2, 12, 0.0)


def test_trained_lm_rewrite_is_accepted_once_then_rejected_as_duplicate(lms, tmp_path, capsys):
  pool = seed_pool(tmp_path / "pool.jsonl")
  out = tmp_path / "out.jsonl"
  assert A.main(["--model", str(lms / "trained"), "--pool", str(pool), "--out", str(out), "--per-prompt", "1",
                 "--temperature", "0", "--max-new-tokens", "40"]) == 0
  assert "accepted 1, rejected 2 (duplicate: 2)" in capsys.readouterr().out
  assert entries(out) == entries(pool) + [(CAPTION.strip(), "car")]


def test_bad_inputs_are_clear_errors(lms, tmp_path, capsys):
  pool = seed_pool(tmp_path / "pool.jsonl")
  model = str(lms / "random")

  def error(*args):
    assert A.main(list(args)) == 2
    return capsys.readouterr().err

  base = ["--pool", str(pool), "--out", str(tmp_path / "out.jsonl")]
  assert "--model: directory does not exist" in error("--model", str(tmp_path / "nope"), *base, "--per-prompt", "1")
  assert "--per-prompt must be >= 1, got 0" in error("--model", model, *base, "--per-prompt", "0")
  assert "greedy" in error("--model", model, *base, "--per-prompt", "2", "--temperature", "0")
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "cannot load a causal LM" in error("--model", str(empty), *base, "--per-prompt", "1")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"prompt": "A bus at night.", "concept": "car"}) + "\n")
  msg = error("--model", model, "--pool", str(bad), "--out", str(tmp_path / "out.jsonl"), "--per-prompt", "1")
  assert "--pool" in msg and "bad.jsonl:1" in msg and "does not occur" in msg
  assert "does not exist" in error("--model", model, "--pool", str(tmp_path / "none.jsonl"),
                                   "--out", str(tmp_path / "out.jsonl"), "--per-prompt", "1")
  existing = tmp_path / "existing.jsonl"
  existing.write_text("keep me\n")
  assert "already exists" in error("--model", model, "--pool", str(pool), "--out", str(existing), "--per-prompt", "1")
  assert existing.read_text() == "keep me\n"
  assert not (tmp_path / "out.jsonl").exists()
  assert A.main(["--model", model, "--pool", str(pool), "--out", str(existing), "--per-prompt", "1",
                 "--max-new-tokens", "4", "--overwrite"]) == 0
  assert entries(existing)[:3] == entries(pool)


def test_the_augment_tool_refuses_pickled_lm_weights_unless_asked(lms, tmp_path):
  import shutil
  import torch
  import transformers
  pickled = tmp_path / "pickled"
  shutil.copytree(lms / "random", pickled)
  model = transformers.GPT2LMHeadModel.from_pretrained(pickled)
  (pickled / "model.safetensors").unlink()
  torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # pickled weights only
  with pytest.raises(A.AugmentError, match="cannot load a causal LM"):
    A.load_model(str(pickled))
  tokenizer, loaded = A.load_model(str(pickled), allow_pickle=True)
  assert loaded.config.n_embd == model.config.n_embd
