"""Prompt pools: loading and validation, shipped pools, per-step sampling, concept token masks."""
import dataclasses
import json
import os

import numpy as np
import pytest

from builders import build_tokenizer
from t2vu_jax.erase import prompts as P
from t2vu_jax.text import MAX_LENGTH


def write(path, lines):
  path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
  return path


def problems(exc_info):
  return exc_info.value.problems


@pytest.fixture(scope="module")
def tokenizer():
  return build_tokenizer()


# Shipped pools.

def test_shipped_pools_live_next_to_the_module():
  assert P.POOL_DIR == os.path.join(os.path.dirname(os.path.abspath(P.__file__)), "pools")
  assert {"nudity", "preserve_people"} <= set(P.shipped_pools())
  with pytest.raises(ValueError, match="no shipped prompt pool named 'nope'.*nudity"):
    P.shipped_pool("nope")


@pytest.mark.parametrize("name, concepts", [("nudity", {"nude", "naked"}),
                                            ("preserve_people", {"person", "man", "woman"})])
def test_shipped_pool_loads_and_locates_every_concept(name, concepts, tokenizer):
  pool = P.shipped_pool(name)
  assert 10 <= len(pool) <= 20
  assert set(pool.concepts) == concepts
  for e in pool:
    assert e.concept.lower() in e.prompt.lower()
    assert e.source.startswith(os.path.join(P.POOL_DIR, f"{name}.jsonl:"))
    assert len(e.prompt.split()) >= 25  # detailed, caption-style rewrites
  masks = P.token_spans(tokenizer, pool.entries)
  assert masks.shape == (len(pool), MAX_LENGTH) and masks.dtype == np.float32
  for e, row in zip(pool, masks):
    ones = np.flatnonzero(row)
    start, end = ones[0], ones[-1] + 1
    assert len(ones) == end - start and set(np.unique(row)) == {0.0, 1.0}
    # The tiny vocabulary spells most words letter by letter, yet the span is exactly the phrase's tokens
    # (a metaspace token's offsets include the space before it).
    text = P.clean_prompt(e.prompt)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    at = text.lower().find(e.concept.lower())
    assert text[offsets[start][0]:offsets[end - 1][1]].strip().lower() == e.concept.lower()
    assert offsets[start][0] in (at, at - 1) and offsets[end - 1][1] == at + len(e.concept)
    assert (start == 0 or offsets[start - 1][1] <= at) and offsets[end][0] >= at + len(e.concept)


def test_shipped_pools_form_a_valid_erasure_set():
  s = P.ErasureSet(P.shipped_pool("nudity"), P.shipped_pool("preserve_people"))
  assert s.concepts == ("naked", "nude")
  for e in s.preserve:
    assert "nude" not in e.prompt.lower() and "naked" not in e.prompt.lower()


# Loading and validation.

def test_load_pool_skips_blank_and_comment_lines(tmp_path):
  path = write(tmp_path / "p.jsonl", ["# a comment", "", {"prompt": "a nude man", "concept": "nude"}, "   ",
                                      "  # indented comment", {"prompt": "A NAKED woman", "concept": "naked"},
                                      {"prompt": "a Nude statue", "concept": "NUDE"}])
  pool = P.load_pool(path)
  assert len(pool) == 3 and pool.name == str(path)
  assert pool.concepts == ("naked", "nude")
  assert [e.prompt for e in pool.for_concept("Nude")] == ["a nude man", "a Nude statue"]
  assert [e.source for e in pool] == [f"{path}:3", f"{path}:6", f"{path}:7"]
  assert P.load_pool(str(path)) == pool


def test_load_pool_reports_every_bad_line_at_once(tmp_path):
  path = tmp_path / "bad.jsonl"
  write(path, [
      {"prompt": "a nude man on the beach", "concept": "nude"},          # 1 fine
      '{"prompt": "a nude man", "concept": ',                            # 2 invalid JSON
      '["a nude man", "nude"]',                                          # 3 not an object
      {"prompt": "a naked woman", "concpet": "naked"},                   # 4 typo: unknown key + missing
      {"prompt": "   ", "concept": "nude"},                              # 5 empty prompt
      {"prompt": "a nude dancer", "concept": 3},                         # 6 non-string
      {"prompt": "a cat in the park", "concept": "nude"},                # 7 concept absent
      "# comment",                                                       # 8 skipped
      {"prompt": "a  nude man on the beach ", "concept": "nude"},        # 9 duplicate of 1 after cleaning
      {"prompt": "a woman on a beach", "concept": "man"},                # 10 "man" only inside "woman"
      {"prompt": "a nude model", "concept": ""},                         # 11 empty concept
      {"prompt": "a nude model", "concept": "nude", "note": "x"},        # 12 unknown key
  ])
  with pytest.raises(P.PoolError) as e:
    P.load_pool(path)
  got = problems(e)
  expected = [
      (2, "invalid JSON"), (3, "expected a JSON object"), (4, "unknown key 'concpet'"), (4, 'missing "concept"'),
      (5, '"prompt" is empty'), (6, '"concept" must be a string, got int'),
      (7, "concept 'nude' does not occur in prompt 'a cat in the park'"),
      (9, f"duplicate prompt 'a  nude man on the beach ' (first at {path}:1)"),
      (10, "occurs only inside the word 'woman' of prompt 'a woman on a beach'"),
      (11, '"concept" is empty'), (12, "unknown key 'note'"),
  ]
  assert len(got) == len(expected), got
  for problem, (line, text) in zip(got, expected):
    assert problem.startswith(f"{path}:{line}: ") and text in problem, (problem, line, text)
  assert str(path) in str(e.value) and "11 problems" in str(e.value)
  assert isinstance(e.value, ValueError)


def test_load_pool_file_level_errors(tmp_path):
  with pytest.raises(P.PoolError, match="missing.jsonl: pool file does not exist"):
    P.load_pool(tmp_path / "missing.jsonl")
  with pytest.raises(P.PoolError, match="not a file"):
    P.load_pool(tmp_path)
  empty = write(tmp_path / "empty.jsonl", ["# only a comment", ""])
  with pytest.raises(P.PoolError, match=f"{empty}: the pool is empty"):
    P.load_pool(empty)
  (tmp_path / "nothing.jsonl").write_text("")
  with pytest.raises(P.PoolError, match="nothing.jsonl: the pool is empty"):
    P.load_pool(tmp_path / "nothing.jsonl")
  binary = tmp_path / "latin1.jsonl"
  binary.write_bytes(json.dumps({"prompt": "a nude man", "concept": "nude"}).encode() + b"\n\xff\xfe\n")
  with pytest.raises(P.PoolError, match=f"{binary}:2: not valid UTF-8"):
    P.load_pool(binary)


def test_load_pools_reports_across_files(tmp_path):
  a = write(tmp_path / "a.jsonl", [{"prompt": "a nude man", "concept": "nude"}])
  b = write(tmp_path / "b.jsonl", ["", {"prompt": "a nude man", "concept": "nude"}, "{oops"])
  with pytest.raises(P.PoolError) as e:
    P.load_pools([a, b, tmp_path / "c.jsonl"])
  assert problems(e) == [f"{b}:2: duplicate prompt 'a nude man' (first at {a}:1)",
                         f"{b}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
                         f"{tmp_path / 'c.jsonl'}: pool file does not exist"]
  with pytest.raises(ValueError, match="at least one pool file"):
    P.load_pools([])


# PromptPool.

def test_prompt_pool_is_immutable_and_validates_direct_construction():
  pool = P.PromptPool([P.Entry("a nude man", "nude"), P.Entry("a red car", "car")], name="mine")
  assert isinstance(pool.entries, tuple) and pool.concepts == ("car", "nude")
  with pytest.raises(dataclasses.FrozenInstanceError):
    pool.name = "other"
  with pytest.raises(dataclasses.FrozenInstanceError):
    pool.entries[0].prompt = "x"
  with pytest.raises(ValueError, match=r"concept 'dog' is not in pool mine \(its concepts: \['car', 'nude'\]\)"):
    pool.for_concept("dog")
  with pytest.raises(P.PoolError, match="mine: the pool is empty"):
    P.PromptPool((), name="mine")
  with pytest.raises(P.PoolError) as e:
    P.PromptPool([P.Entry("a cat", "dog"), P.Entry("a cat", "cat")], name="mine")
  assert problems(e) == ["mine[0]: concept 'dog' does not occur in prompt 'a cat'",
                         "mine[1]: duplicate prompt 'a cat' (first at mine[0])"]
  with pytest.raises(TypeError, match="Entry.concept must be a string"):
    P.Entry("a cat", None)
  with pytest.raises(TypeError, match="Entry objects"):
    P.PromptPool([("a cat", "cat")])


def test_multi_concept_pools(tmp_path):
  nude = write(tmp_path / "nude.jsonl", [{"prompt": f"a nude {w} in the park", "concept": "nude"}
                                         for w in ("man", "woman", "person")])
  gogh = write(tmp_path / "gogh.jsonl",
               [{"prompt": "a city at night painted by Van Gogh", "concept": "Van Gogh"},
                {"prompt": "Starry sky over a village, van gogh style", "concept": "van Gogh"}])
  pool = P.load_pools([nude, gogh])
  assert pool.concepts == ("nude", "van gogh") and len(pool) == 5
  assert len(pool.for_concept("nude")) == 3 and len(pool.for_concept("VAN GOGH")) == 2
  merged = P.PromptPool.merge([P.load_pool(nude), P.load_pool(gogh)])
  assert merged.entries == pool.entries and merged.concepts == pool.concepts
  with pytest.raises(P.PoolError, match="duplicate prompt"):
    P.PromptPool.merge([P.load_pool(nude), P.load_pool(nude)])
  s = P.ErasureSet.from_files([nude, gogh])
  assert s.concepts == ("nude", "van gogh") and s.preserve is None
  assert s.sample(4, seed=1, step=2)[1] == []
  drawn = {e.concept.lower() for step in range(20) for e in P.sample_batch(pool, 4, 0, step)}
  assert drawn == {"nude", "van gogh"}


# Erasure sets.

def test_erasure_set_rejects_erase_preserve_overlap(tmp_path):
  erase = write(tmp_path / "erase.jsonl", [{"prompt": "a nude man", "concept": "nude"},
                                           {"prompt": "a naked woman", "concept": "naked"}])
  keep = write(tmp_path / "keep.jsonl", [{"prompt": "a Nude statue in a museum", "concept": "Nude"},
                                         {"prompt": "a woman, naked, on a beach", "concept": "woman"},
                                         {"prompt": "a man in a nude-colored coat", "concept": "man"},
                                         {"prompt": "a man walking a dog", "concept": "man"},
                                         {"prompt": "a denuded hillside", "concept": "hillside"}])
  with pytest.raises(P.PoolError) as e:
    P.ErasureSet.from_files(erase, keep)
  assert problems(e) == [
      f"concept 'nude' is both erased (pool {erase}) and preserved (pool {keep})",
      f"{keep}:1: preservation prompt 'a Nude statue in a museum' contains erased concept 'nude'",
      f"{keep}:2: preservation prompt 'a woman, naked, on a beach' contains erased concept 'naked'",
      f"{keep}:3: preservation prompt 'a man in a nude-colored coat' contains erased concept 'nude'",
  ]
  fine = write(tmp_path / "fine.jsonl", [{"prompt": "a man walking a dog", "concept": "man"},
                                         {"prompt": "a denuded hillside", "concept": "hillside"}])
  s = P.ErasureSet.from_files(erase, [fine])
  assert s.preserve.concepts == ("hillside", "man")
  with pytest.raises(TypeError, match="PromptPool"):
    P.ErasureSet(s.erase, [fine])


# Sampling.

def pool_of(counts):
  """A pool with concept c{i} having counts[i] prompts."""
  return P.PromptPool([P.Entry(f"prompt {j} of c{i}", f"c{i}") for i, n in enumerate(counts) for j in range(n)])


def test_sampling_is_a_function_of_seed_and_step():
  pool = pool_of([3, 5, 7])
  first = P.sample_batch(pool, 8, 123, 7)
  for step in range(7):
    P.sample_batch(pool, 8, 123, step)
  assert P.sample_batch(pool, 8, 123, 7) == first  # earlier draws do not matter: a resumed run matches
  assert P.sample_batch(pool, 8, np.int64(123), np.int32(7)) == first
  assert len({tuple(e.prompt for e in P.sample_batch(pool, 8, 123, s)) for s in range(10)}) == 10
  assert P.sample_batch(pool, 8, 124, 7) != first
  assert P.sample_batch(pool, 8, 123, 7, stream=1) != first
  assert all(isinstance(e, P.Entry) and e in pool.entries for e in first)
  # A Generator is used as given: successive calls continue its stream.
  gen = np.random.default_rng(5)
  a, b = P.sample_batch(pool, 8, gen), P.sample_batch(pool, 8, gen)
  gen2 = np.random.default_rng(5)
  assert P.sample_batch(pool, 8, gen2) == a and P.sample_batch(pool, 8, gen2) == b


def test_sampling_argument_errors():
  pool = pool_of([2])
  with pytest.raises(TypeError, match="needs the step"):
    P.sample_batch(pool, 2, 0)
  with pytest.raises(TypeError, match="Generator is used as it is"):
    P.sample_batch(pool, 2, np.random.default_rng(0), 3)
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    P.sample_batch(pool, 0, 0, 0)
  with pytest.raises(ValueError, match="step must be >= 0"):
    P.sample_batch(pool, 1, 0, -1)
  with pytest.raises(TypeError, match="seed must be an integer, got float"):
    P.sample_batch(pool, 1, 0.5, 0)
  with pytest.raises(TypeError, match="seed must be an integer, got bool"):
    P.sample_batch(pool, 1, True, 0)
  with pytest.raises(TypeError, match="PromptPool"):
    P.sample_batch([P.Entry("a cat", "cat")], 1, 0, 0)


def test_sampling_balances_concepts_then_prompts():
  pool = pool_of([1, 9, 4])
  draws = [e.prompt for step in range(150) for e in P.sample_batch(pool, 200, 0, step)]
  n = len(draws)  # 30000
  by_concept = {c: sum(p.endswith(f"of {c}") for p in draws) / n for c in ("c0", "c1", "c2")}
  for c, frac in by_concept.items():
    assert abs(frac - 1 / 3) < 0.015, by_concept  # ~5 standard deviations; per-prompt uniform would give 1/14
  for c, k in (("c1", 9), ("c2", 4)):
    mine = [p for p in draws if p.endswith(f"of {c}")]
    for j in range(k):
      frac = mine.count(f"prompt {j} of {c}") / len(mine)
      assert abs(frac - 1 / k) < 5 * np.sqrt((1 / k) * (1 - 1 / k) / len(mine)), (c, j, frac)


def test_erasure_set_sample_uses_independent_streams():
  erase = P.PromptPool([P.Entry(f"a nude figure, take {i}", "nude") for i in range(10)])
  keep = P.PromptPool([P.Entry(f"a man walking, take {i}", "man") for i in range(10)])
  s = P.ErasureSet(erase, keep)
  e, k = s.sample(6, seed=3, step=11)
  assert e == P.sample_batch(erase, 6, 3, 11, stream=0) and k == P.sample_batch(keep, 6, 3, 11, stream=1)
  assert s.sample(6, seed=3, step=11) == (e, k)
  assert [x.prompt.split()[-1] for x in e] != [x.prompt.split()[-1] for x in k]  # not the same draws
  assert len(s.sample(6, 3, 11, preserve_batch_size=2)[1]) == 2


# Token span masks.

def test_token_spans_masks(tokenizer):
  entries = [P.Entry("a naked woman walking in the park", "naked woman"),
             P.Entry("the red car in the city at night", "CAR"),
             P.Entry("a dog running on the beach", "beach")]
  masks = P.token_spans(tokenizer, entries)
  assert masks.shape == (3, MAX_LENGTH) and masks.dtype == np.float32
  expected = np.zeros((3, MAX_LENGTH), np.float32)
  expected[0, 1:3] = 1  # T5 has no BOS: "▁a" is token 0
  expected[1, 2] = 1
  expected[2, 5] = 1
  np.testing.assert_array_equal(masks, expected)
  np.testing.assert_array_equal(P.token_spans(tokenizer, entries, max_length=16), expected[:, :16])
  assert P.token_spans(tokenizer, P.sample_batch(pool_of([2, 3]), 5, 0, 0)).sum(1).min() >= 1


def test_token_spans_errors_name_the_prompt(tokenizer):
  with pytest.raises(ValueError, match="cannot locate concept 'dog' in prompt 'a cat in the park'"):
    P.token_spans(tokenizer, [P.Entry("a cat in the park", "cat"), P.Entry("a cat in the park", "dog")])
  with pytest.raises(ValueError, match="^pool.jsonl:4: cannot locate"):
    P.token_spans(tokenizer, [P.Entry("a cat", "dog", source="pool.jsonl:4")])
  far = "a " * 600 + "cat"
  with pytest.raises(ValueError, match=r"cannot locate concept 'cat' in prompt 'a a a .*cat'.*beyond the first 512"):
    P.token_spans(tokenizer, [P.Entry(far, "cat")])
  with pytest.raises(ValueError, match=r"concept 'cat' lies at tokens \[20, 21\), beyond the first 16 tokens "
                                       r"of prompt 'a a a"):
    P.token_spans(tokenizer, [P.Entry("a " * 20 + "cat", "cat")], max_length=16)
  with pytest.raises(ValueError, match="at least one entry"):
    P.token_spans(tokenizer, [])


def test_anchor_prompt_removes_the_located_concept():
  cases = {("a naked woman walking in the park", "naked woman"): "a walking in the park",
           ("the red car in the city, at night", "CAR"): "the red in the city, at night",
           ("a circle in red, moving left", "red"): "a circle in, moving left",
           ("moving left, a red circle", "moving left"): "a red circle",
           ("Nude", "nude"): "",
           ("a checkered background, a red square", "red"): "a checkered background, a square",  # whole words
           ("a woman and a man", "man"): "a woman and a",
           ("a nude woman, nude on a beach", "nude"): "a woman, nude on a beach"}  # the first occurrence only
  for (prompt, concept), anchor in cases.items():
    assert P.anchor_prompt(P.Entry(prompt, concept)) == anchor, (prompt, concept)
  with pytest.raises(ValueError, match="^pool.jsonl:2: concept 'dog' does not occur in prompt 'a cat'"):
    P.anchor_prompt(P.Entry("a cat", "dog", source="pool.jsonl:2"))


def test_replaced_prompt_puts_a_phrase_in_the_concept_s_place():
  cases = {("a red circle moving left", "red", "ivory"): "an ivory circle moving left",
           ("An ivory circle", "ivory", "red"): "A red circle",
           ("a circle in red, moving left", "red", "blue"): "a circle in blue, moving left",
           ("a nude woman on a beach", "nude", "clothed"): "a clothed woman on a beach",
           ("Nude", "nude", "clothed"): "clothed"}
  for (prompt, concept, phrase), replaced in cases.items():
    assert P.replaced_prompt(P.Entry(prompt, concept), phrase) == replaced, (prompt, concept, phrase)
  with pytest.raises(ValueError, match="^pool.jsonl:2: concept 'dog' does not occur in prompt 'a cat'"):
    P.replaced_prompt(P.Entry("a cat", "dog", source="pool.jsonl:2"), "cow")


def test_replacements_for_every_concept_or_per_concept():
  assert P.parse_replacements(" green, blue ,", ["red", "Red"]) == {"red": ("green", "blue")}
  assert P.parse_replacements("red: green; Circle: square, cross", ["red", "circle"]) == {
      "red": ("green",), "circle": ("square", "cross")}
  for spec, concepts, message in [
      ("", ["red"], "no replacement phrases"),
      (" , ", ["red"], "no replacement phrases for concept 'red'"),
      ("red: green", ["red", "circle"], r"no replacement phrases for concept\(s\) \['circle'\]"),
      ("red: green; dog: cat", ["red"], "concept 'dog' is not a concept of the run"),
      ("red: green; Red: blue", ["red"], "concept 'Red' is named twice"),
      ("green, RED", ["red"], "concept 'red' is among its own replacement phrases"),
      ("red, green", ["red"], "concept 'red' is among its own replacement phrases"),
      ("red green", ["red"], "")]:
    if not message:
      assert P.parse_replacements(spec, concepts) == {"red": ("red green",)}  # a phrase containing it is not it
      continue
    with pytest.raises(ValueError, match=message):
      P.parse_replacements(spec, concepts)


def test_anchor_prompts_of_each_anchor():
  entries = [P.Entry("a red circle", "red"), P.Entry("a blue square", "square")]
  assert P.anchor_prompts(entries, "empty")[0] == []
  texts, of = P.anchor_prompts(entries, "prompt")
  assert texts == ["a circle", "a blue"] and of.tolist() == [0, 1]
  texts, of = P.anchor_prompts(entries, "replace", "red: green, white; square: cross")
  assert texts == ["a green circle", "a white circle", "a blue cross"] and of.tolist() == [0, 0, 1]
