"""Grow a prompt pool with a local transformers causal LM acting as a video prompt extender.

  python tools/augment_prompts.py --model PATH --pool IN.jsonl --out OUT.jsonl --per-prompt 4

Each seed prompt is rewritten `--per-prompt` times into a detailed video caption that keeps its
concept phrase (the tokenizer's chat template is used when it has one, else a plain instruction). A
rewrite is kept only if it passes the pool validation: non-empty, one line, complete (not cut off by
`--max-new-tokens`), the concept present as whole word(s), and not a duplicate. The output holds the
original entries then the accepted rewrites, is checked with `load_pool` and written atomically.
Sampling is seeded per seed prompt (`--temperature 0` is greedy), so a seed gives the same file.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2vu_jax.erase.prompts import Entry, PoolError, PromptPool, load_pool  # noqa: E402
from t2vu_jax.text import clean_prompt  # noqa: E402

INSTRUCTION = (
    "You are a prompt extender for a text-to-video model. Rewrite the short video prompt below into one "
    "detailed video caption of 2 to 4 sentences (about 50 to 100 words): describe the subject, the action, "
    "the setting, the lighting and the camera movement. Keep the meaning of the original prompt and keep "
    'the exact phrase "{concept}" in your caption. Write a single paragraph on one line and answer with the '
    "caption only.\n\nPrompt: {prompt}")
QUOTES = "\"'`“”‘’"


class AugmentError(Exception):
  """A bad argument or input; the message says which and why."""


def check_candidate(text: str, concept: str, seen: set[str]) -> tuple[str | None, str | None]:
  """(the rewrite to keep, None) or (None, why it is rejected); a kept rewrite is added to `seen`."""
  text = text.strip()
  if len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
    text = text[1:-1].strip()
  if not text:
    return None, "empty"
  if any(c in text for c in "\r\n\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85"):
    return None, "more than one line"
  try:
    PromptPool((Entry(text, concept),))
  except PoolError as e:
    return None, "concept missing" if "does not occur" in e.problems[0] else "concept inside a word"
  key = clean_prompt(text)
  if key in seen:
    return None, "duplicate"
  seen.add(key)
  return text, None


def build_prompt(tokenizer, prompt: str, concept: str) -> str:
  """The LM's input text: the instruction in the tokenizer's chat template, or as plain text."""
  message = INSTRUCTION.format(concept=concept, prompt=prompt)
  if getattr(tokenizer, "chat_template", None):
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
  return f"{message}\n\nDetailed video caption:"


def load_model(path: str, allow_pickle: bool = False):
  """A local causal LM and its tokenizer; safetensors weights only unless `allow_pickle` (pickles can run
  arbitrary code), as the converters do."""
  if not os.path.isdir(path):
    raise AugmentError(f"--model: directory does not exist: {path}")
  try:
    import torch
    import transformers
  except ImportError as e:
    raise AugmentError(f"the augment tool needs torch and transformers ({e})") from None
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto",
                                                              use_safetensors=not allow_pickle)
  except (OSError, ValueError, KeyError) as e:
    raise AugmentError(f"--model: cannot load a causal LM and its tokenizer from {path}: {e}") from None
  if torch.cuda.is_available():
    model = model.to("cuda")
  return tokenizer, model.eval()


def _seed(seed: int, index: int) -> int:
  import numpy as np
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate(tokenizer, model, text: str, n: int, seed: int, max_new_tokens: int,
             temperature: float) -> list[tuple[str, bool]]:
  """`n` continuations of `text`, each as (decoded text, whether it ended before `max_new_tokens`)."""
  import torch
  eos = model.generation_config.eos_token_id
  if eos is None:
    eos = tokenizer.eos_token_id
  eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
  inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not getattr(tokenizer, "chat_template", None))
  inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
  sample = dict(do_sample=True, temperature=temperature, num_return_sequences=n) if temperature > 0 else \
      dict(do_sample=False, temperature=None, top_p=None, top_k=None)
  torch.manual_seed(seed)
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **sample)
  results = []
  for row in out[:, inputs["input_ids"].shape[1]:].tolist():
    ends = [i for i, t in enumerate(row) if t in eos]
    done = bool(ends)
    row = row[:ends[0]] if ends else row
    results.append((tokenizer.decode(row, skip_special_tokens=True), done))
  return results


def augment(pool_path: str, out_path: str, model_path: str, per_prompt: int, seed: int = 0,
            max_new_tokens: int = 200, temperature: float = 0.8, overwrite: bool = False,
            progress: bool = True, allow_pickle: bool = False) -> dict:
  """Write `out_path` (original entries + accepted rewrites); returns the counts."""
  if per_prompt < 1:
    raise AugmentError(f"--per-prompt must be >= 1, got {per_prompt}")
  if max_new_tokens < 1:
    raise AugmentError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise AugmentError(f"--temperature must be >= 0, got {temperature}")
  if temperature == 0 and per_prompt > 1:
    raise AugmentError(f"--temperature 0 is greedy and gives one rewrite per prompt; use --per-prompt 1 "
                       f"or a temperature > 0 (got --per-prompt {per_prompt})")
  if os.path.exists(out_path) and not overwrite:
    raise AugmentError(f"--out: {out_path} already exists (pass --overwrite to replace it)")
  if os.path.isdir(out_path):
    raise AugmentError(f"--out: {out_path} is a directory")
  try:
    pool = load_pool(pool_path)
  except PoolError as e:
    raise AugmentError(f"--pool: {e}") from None
  tokenizer, model = load_model(model_path, allow_pickle)
  from tqdm.auto import tqdm

  seen = {clean_prompt(e.prompt) for e in pool.entries}
  accepted: list[Entry] = []
  rejected = collections.Counter()
  bar = tqdm(pool.entries, desc="augmenting", unit="prompt", disable=not progress)
  for i, e in enumerate(bar):
    outputs = generate(tokenizer, model, build_prompt(tokenizer, e.prompt, e.concept), per_prompt,
                       _seed(seed, i), max_new_tokens, temperature)
    for text, done in outputs:
      keep, why = check_candidate(text, e.concept, seen) if done else (None, "cut off at --max-new-tokens")
      if keep is None:
        rejected[why] += 1
      else:
        accepted.append(Entry(keep, e.concept))
    bar.set_postfix(accepted=len(accepted), rejected=sum(rejected.values()))
  bar.close()

  directory = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".augment-", suffix=".jsonl", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for entry in list(pool.entries) + accepted:
        f.write(json.dumps({"prompt": entry.prompt, "concept": entry.concept}, ensure_ascii=False) + "\n")
    load_pool(tmp)
    os.replace(tmp, out_path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return {"original": len(pool), "accepted": len(accepted), "rejected": sum(rejected.values()),
          "rejected_by_reason": dict(sorted(rejected.items())), "out": out_path}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", required=True, help="directory of a transformers causal LM and its tokenizer")
  p.add_argument("--pool", required=True, help="JSONL pool to grow")
  p.add_argument("--out", required=True, help="JSONL to write (original entries + accepted rewrites)")
  p.add_argument("--per-prompt", type=int, required=True, help="rewrites generated per seed prompt")
  p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
  p.add_argument("--max-new-tokens", type=int, default=200, help="longest rewrite in tokens (default 200)")
  p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  p.add_argument("--allow-pickle", action="store_true",
                 help="also load pickled (.bin) LM weights; they can run arbitrary code (default: safetensors only)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    result = augment(args.pool, args.out, args.model, args.per_prompt, args.seed, args.max_new_tokens,
                     args.temperature, args.overwrite, allow_pickle=args.allow_pickle)
  except AugmentError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  reasons = ", ".join(f"{k}: {v}" for k, v in result["rejected_by_reason"].items())
  print(f"accepted {result['accepted']}, rejected {result['rejected']}" + (f" ({reasons})" if reasons else ""))
  print(f"wrote {result['out']}: {result['original']} original + {result['accepted']} new prompts")
  return 0


if __name__ == "__main__":
  sys.exit(main())
