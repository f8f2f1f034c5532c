"""Prompts to UMT5 embeddings with Wan's semantics, an on-disk embedding cache, concept token spans.

Wan (and diffusers' WanPipeline) cleans each prompt, tokenizes it padded to 512 tokens with an
attention mask, encodes, then keeps each sequence's real tokens and zero-pads back to 512: padded
positions of the embedding are exactly zero.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.io.streaming import component_dir
from t2vu_jax.models.umt5 import UMT5Encoder
from t2vu_jax.sharding import to_host

MAX_LENGTH = 512


SPECIALS = ("<pad>", "</s>", "<unk>")
PUNCTUATION = ",.:;!?'-"


def word_tokenizer(words, model_max_length: int = MAX_LENGTH):
  """A T5-style fast tokenizer over a closed word list (`transformers.PreTrainedTokenizerFast`).

  Unigram model over metaspace pieces like T5/UMT5: `<pad>` = 0, `</s>` = 1 (appended to every
  sequence), `<unk>` = 2. Every word is one piece "▁word"; single characters and a bare "▁" are
  low-scoring fallbacks, so any lower-case ASCII text (after the lower-casing normalizer) still
  tokenizes without `<unk>`, just in more pieces.
  """
  import string
  import transformers
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
  fallback = ["▁"] + list(PUNCTUATION) + list(string.ascii_lowercase + string.digits)
  pieces = [(p, 0.0) for p in SPECIALS] + [(f"▁{w}", -2.0) for w in words] + [(c, -10.0) for c in fallback]
  tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIALS.index("<unk>")))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                              unk_token="<unk>", model_max_length=model_max_length)


def text_length(tokenizer) -> int:
  """Tokens every prompt is padded to: Wan's 512, or fewer when the tokenizer declares a shorter
  `model_max_length` (the toy world's 16-token prompts need no 512-token context)."""
  return min(MAX_LENGTH, int(getattr(tokenizer, "model_max_length", MAX_LENGTH)))


def clean_prompt(text: str) -> str:
  """Wan's prompt cleaning: ftfy, double HTML unescape, collapsed whitespace."""
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str):
  """A fast tokenizer from a `tokenizer/` directory (or a pipeline directory holding one)."""
  import transformers
  directory = component_dir(path, "tokenizer")
  if not os.path.isdir(directory):
    raise CheckpointError(f"tokenizer directory does not exist: {directory}")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot load a tokenizer from {directory}: {e}") from None
  if not tokenizer.is_fast:
    raise CheckpointError(f"{directory}: a fast tokenizer (tokenizer.json) is needed for token offsets")
  return tokenizer


def check_vocab(tokenizer, encoder: UMT5Encoder) -> None:
  if len(tokenizer) > encoder.config.vocab_size:
    raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder's embedding table "
                     f"has only {encoder.config.vocab_size} rows: they do not belong together")


def tokenize(tokenizer, prompts: list[str], max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
  """Cleaned prompts to (ids, mask), each (B, max_length) int32, truncated and padded like Wan."""
  cleaned = [clean_prompt(p) for p in prompts]
  out = tokenizer(cleaned, padding="max_length", max_length=max_length,
                  truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="np")
  lengths = [len(ids) for ids in tokenizer(cleaned, add_special_tokens=True)["input_ids"]]
  if cut := [(p, n) for p, n in zip(cleaned, lengths) if n > max_length]:
    warnings.warn(f"{len(cut)} prompt(s) longer than the text length {max_length} are cut to it (Wan does the "
                  f"same), e.g. {cut[0][0][:60]!r}... has {cut[0][1]} tokens", stacklevel=2)
  return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)


@nnx.jit
def _encode(encoder: UMT5Encoder, ids, mask):
  hidden = encoder(ids, mask)
  return jnp.where(mask[..., None].astype(bool), hidden, 0.0)  # real tokens kept, padding zeroed


def _sha256_files(paths) -> str:
  h = hashlib.sha256()
  for path in sorted(paths):
    h.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      while chunk := f.read(1 << 24):
        h.update(chunk)
  return h.hexdigest()


class EmbeddingCache:
  """Prompt embeddings on disk, keyed by the encoder weights, the tokenizer, the length and the prompt.

  Each entry stores only the prompt's real tokens (float32 .npy); padding is restored on read.
  """

  def __init__(self, directory: str, encoder_id: str, tokenizer_id: str):
    self.directory = directory
    self.prefix = hashlib.sha256(f"{encoder_id}|{tokenizer_id}".encode()).hexdigest()[:16]
    os.makedirs(directory, exist_ok=True)

  @classmethod
  def for_files(cls, directory: str, encoder_files: list[str], tokenizer_path: str) -> "EmbeddingCache":
    """Identify the encoder and tokenizer by the contents of their files (hashed once per file version)."""
    tok = component_dir(tokenizer_path, "tokenizer")
    tok_files = [os.path.join(tok, f) for f in os.listdir(tok) if os.path.isfile(os.path.join(tok, f))]
    return cls(directory, _file_digest(directory, encoder_files), _sha256_files(tok_files))

  def _path(self, prompt: str, max_length: int) -> str:
    key = hashlib.sha256(f"{max_length}|{prompt}".encode()).hexdigest()
    return os.path.join(self.directory, f"{self.prefix}-{key[:32]}.npy")

  def get(self, prompt: str, max_length: int) -> np.ndarray | None:
    path = self._path(prompt, max_length)
    if not os.path.exists(path):
      return None
    real = np.load(path)
    return np.concatenate([real, np.zeros((max_length - len(real), real.shape[1]), real.dtype)])

  def put(self, prompt: str, max_length: int, embedding: np.ndarray, length: int) -> None:
    path = self._path(prompt, max_length)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(embedding[:length], np.float32))
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


def _file_digest(cache_dir: str, files: list[str]) -> str:
  """sha256 of the files' contents, memoised in `cache_dir` by (path, size, mtime)."""
  stats = [(os.path.realpath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in sorted(files)]
  os.makedirs(cache_dir, exist_ok=True)
  memo = os.path.join(cache_dir, "file_digests.json")
  key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
  table = {}
  if os.path.exists(memo):
    with open(memo) as f:
      table = json.load(f)
  if key not in table:
    table[key] = _sha256_files(files)
    tmp = f"{memo}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(table, f)
    os.replace(tmp, memo)
  return table[key]


def encode_prompts(encoder: UMT5Encoder, tokenizer, prompts: list[str] | str, max_length: int = MAX_LENGTH,
                   batch_size: int = 8, cache: EmbeddingCache | None = None,
                   progress: bool = False) -> jax.Array:
  """(B, max_length, d_model) float32 embeddings of `prompts`, zero after each prompt's real tokens."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if not prompts:
    raise ValueError("encode_prompts needs at least one prompt (got an empty list)")
  if not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
  check_vocab(tokenizer, encoder)
  cleaned = [clean_prompt(p) for p in prompts]
  out = [cache.get(p, max_length) if cache else None for p in cleaned]
  todo = [i for i, e in enumerate(out) if e is None]
  ids, mask = tokenize(tokenizer, [prompts[i] for i in todo], max_length) if todo else (None, None)
  for start in tqdm(range(0, len(todo), batch_size), desc="encoding prompts", disable=not progress):
    rows = slice(start, start + batch_size)
    n = len(todo[rows])
    pad = batch_size - n if len(todo) > batch_size else 0  # one compiled shape for every batch
    batch_ids, batch_mask = (np.pad(a[rows], ((0, pad), (0, 0))) for a in (ids, mask))
    # gathered when split across processes
    hidden = to_host(_encode(encoder, jnp.asarray(batch_ids), jnp.asarray(batch_mask)))[:n]
    for j, i in enumerate(todo[rows]):
      out[i] = hidden[j]
      if cache:
        cache.put(cleaned[i], max_length, hidden[j], int(mask[start + j].sum()))
  return jnp.asarray(np.stack(out).astype(np.float32))


def find_phrase(text: str, needle: str) -> int:
  """Character index of the first occurrence of `needle` in `text`, -1 if none: as whole words where it
  occurs so ("red" in "chequered, red" is the second word, "man" in "a woman and a man" the last), else
  inside a word; each matched exactly before case-insensitively."""
  whole = rf"(?<!\w){re.escape(needle)}(?!\w)"
  for found in (re.search(whole, text), re.search(whole, text, re.IGNORECASE)):
    if found:
      return found.start()
  at = text.find(needle)
  return at if at >= 0 else text.lower().find(needle.lower())


def concept_token_span(tokenizer, prompt: str, phrase: str) -> tuple[int, int]:
  """Token positions [start, end) of `phrase` inside the tokenized (cleaned) `prompt`.

  The first occurrence (`find_phrase`: whole words first) is used; every token whose character span
  overlaps the phrase belongs to it.
  """
  text = clean_prompt(prompt)
  needle = clean_prompt(phrase)
  if not needle:
    raise ValueError("concept phrase is empty")
  at = find_phrase(text, needle)
  if at < 0:
    raise ValueError(f"concept phrase {phrase!r} does not occur in prompt {prompt!r}")
  end = at + len(needle)
  enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
  tokens = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > at]
  if not tokens:
    raise ValueError(f"concept phrase {phrase!r} maps to no token of prompt {prompt!r}")
  if tokens[-1] >= MAX_LENGTH:
    raise ValueError(f"concept phrase {phrase!r} lies beyond the first {MAX_LENGTH} tokens of the prompt")
  return tokens[0], tokens[-1] + 1


def insert_tokens(embeddings, tokens):
  """Prompt embeddings (B, L, D) with `tokens` (k, D) right after each prompt's tokens (its first zero
  rows), or over its last tokens where the text length leaves no room after them: learned tokens in the
  encoder's output space (soft prompts)."""
  embeddings = jnp.asarray(embeddings)
  n = jnp.sum(jnp.any(embeddings != 0, axis=-1), axis=1)  # each prompt's token count
  start = jnp.minimum(n, embeddings.shape[1] - tokens.shape[0])
  positions = start[:, None] + jnp.arange(tokens.shape[0])[None]
  rows = jnp.arange(embeddings.shape[0])[:, None]
  return embeddings.at[rows, positions].set(jnp.broadcast_to(tokens.astype(embeddings.dtype),
                                                            (*positions.shape, tokens.shape[1])))


def collapse_padding(embeddings: dict, masks: dict | None = None, room: int = 0) -> tuple[dict, dict, int | None]:
  """Cut the zero padding every context of `embeddings` (name -> (..., L, D)) ends in down to one row.

  All padded rows of Wan's contexts are zero, so all their keys and values are equal, and attention
  over n + 1 equal keys is attention over one of them with its logit raised by log(n + 1)
  (`WanTransformer`'s `text_padding=n`). Keeps the rows any context uses, `room` more (for tokens
  inserted after a prompt's, `insert_tokens`) and one padding row. Returns (embeddings, `masks`
  (name -> (..., L), cut alike), n), or the inputs and None where there is nothing to cut.
  """
  masks = dict(masks or {})
  length = next(iter(embeddings.values())).shape[-2]
  used = 0
  for e in embeddings.values():
    rows = np.nonzero(np.any(np.asarray(e) != 0, axis=tuple(i for i in range(e.ndim) if i != e.ndim - 2)))[0]
    used = max(used, int(rows[-1]) + 1 if len(rows) else 0)
  keep = used + room + 1
  if keep >= length:
    return dict(embeddings), masks, None
  if any(np.any(np.asarray(m)[..., keep - 1:]) for m in masks.values()):
    raise ValueError("a mask marks text rows past the ones the contexts use")
  return ({k: np.asarray(e)[..., :keep, :] for k, e in embeddings.items()},
          {k: np.asarray(m)[..., :keep] for k, m in masks.items()}, length - keep)
