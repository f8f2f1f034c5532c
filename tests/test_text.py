"""Prompt encoding with Wan semantics (vs diffusers' WanPipeline), the embedding cache, concept spans."""
import numpy as np
import pytest
import torch
import jax.numpy as jnp

from builders import build_tokenizer, build_umt5
from t2vu_jax.models.umt5_params import read_umt5
from t2vu_jax import text

PROMPTS = ["a naked woman walking in the park", "red car", "  a  dog &amp;amp; a cat at night  "]


@pytest.fixture
def pipeline(wan_pipeline_dir):
  pipe, path = wan_pipeline_dir()
  return pipe, path, text.load_tokenizer(path), read_umt5(path, jnp.float32, progress=False)


def test_encode_prompts_matches_wan_pipeline(pipeline):
  pipe, _, tokenizer, encoder = pipeline
  with torch.no_grad():
    expected, negative = pipe.encode_prompt(PROMPTS, ["", "blurry", "a cat"], max_sequence_length=512)
  got = np.asarray(text.encode_prompts(encoder, tokenizer, PROMPTS))
  got_negative = np.asarray(text.encode_prompts(encoder, tokenizer, ["", "blurry", "a cat"]))
  assert got.shape == (3, 512, 32)
  for ours, theirs in ((got, expected), (got_negative, negative)):
    err = np.abs(ours - theirs.numpy()).max()
    assert err <= 1e-5, err
  _, mask = text.tokenize(tokenizer, PROMPTS)
  assert (got[mask == 0] == 0).all() and (np.abs(got[mask == 1]).sum(-1) > 0).all()


def test_batching_and_cache_give_identical_embeddings(pipeline, tmp_path):
  _, path, tokenizer, encoder = pipeline
  prompts = PROMPTS + ["a man running on the beach", "a blue car in the city"]
  whole = np.asarray(text.encode_prompts(encoder, tokenizer, prompts))
  batched = np.asarray(text.encode_prompts(encoder, tokenizer, prompts, batch_size=2))
  np.testing.assert_allclose(batched, whole, atol=1e-6)

  files = [str(f) for f in (path / "text_encoder").glob("*.safetensors")]
  cache = text.EmbeddingCache.for_files(str(tmp_path / "cache"), files, str(path))
  first = np.asarray(text.encode_prompts(encoder, tokenizer, prompts[:3], cache=cache))
  entries = sorted((tmp_path / "cache").glob("*.npy"))
  assert len(entries) == 3
  mixed = np.asarray(text.encode_prompts(encoder, tokenizer, prompts, cache=cache))  # 3 hits, 2 misses
  np.testing.assert_array_equal(mixed[:3], first)
  np.testing.assert_allclose(mixed, whole, atol=1e-6)
  assert len(list((tmp_path / "cache").glob("*.npy"))) == 5

  # A cache for other encoder weights does not see these entries.
  other = text.EmbeddingCache(str(tmp_path / "cache"), "other-weights", "same-tokenizer")
  assert other.get(text.clean_prompt(prompts[0]), 512) is None


def test_concept_token_span():
  tokenizer = build_tokenizer()
  prompt = "a naked woman walking in the park"
  ids = tokenizer(prompt)["input_ids"]
  start, end = text.concept_token_span(tokenizer, prompt, "naked woman")
  assert tokenizer.convert_ids_to_tokens(ids[start:end]) == ["\u2581naked", "\u2581woman"]
  assert text.concept_token_span(tokenizer, " a  naked woman", "NAKED") == (1, 2)  # case, whitespace
  # A word the vocabulary spells letter by letter maps to all its pieces (not the bare word boundary).
  start, end = text.concept_token_span(tokenizer, "a zebra in the park", "zebra")
  pieces = tokenizer.convert_ids_to_tokens(tokenizer("a zebra")["input_ids"][start:end])
  assert pieces == list("zebra"), pieces
  # Whole words before parts of words: "man" is the last word, not the end of "woman".
  start, end = text.concept_token_span(tokenizer, "a woman and a man", "man")
  assert tokenizer.convert_ids_to_tokens(tokenizer("a woman and a man")["input_ids"][start:end]) == ["\u2581man"]
  assert text.find_phrase("a woman and a man", "man") == 14 and text.find_phrase("a woman and a Man", "man") == 14
  assert text.find_phrase("chequered, red", "red") == 11 and text.find_phrase("nudes", "nude") == 0
  with pytest.raises(ValueError, match="'nude' does not occur in prompt"):
    text.concept_token_span(tokenizer, prompt, "nude")
  with pytest.raises(ValueError, match="empty"):
    text.concept_token_span(tokenizer, prompt, "  ")


def test_bad_prompt_inputs(tmp_path):
  tokenizer = build_tokenizer()
  encoder_dir = tmp_path / "text_encoder"
  build_umt5().save_pretrained(encoder_dir)
  encoder = read_umt5(encoder_dir, progress=False)
  with pytest.raises(ValueError, match="at least one prompt"):
    text.encode_prompts(encoder, tokenizer, [])
  with pytest.raises(TypeError, match="prompts must be strings"):
    text.encode_prompts(encoder, tokenizer, ["ok", None])
  small = build_umt5(dict(build_umt5().config.to_dict(), vocab_size=20))
  small.save_pretrained(tmp_path / "small")
  with pytest.raises(ValueError, match="tokenizer has .* tokens but the text encoder's embedding table has only 20"):
    text.encode_prompts(read_umt5(tmp_path / "small", progress=False), tokenizer, ["a cat"])
  with pytest.raises(Exception, match="tokenizer directory does not exist"):
    text.load_tokenizer(tmp_path / "missing")
