"""A T5-style fast tokenizer for the toy world's closed vocabulary, built with `tokenizers`.

Unigram model over metaspace pieces like T5/UMT5: `<pad>` = 0, `</s>` = 1 (appended to every
sequence), `<unk>` = 2. Every word of every template and wording is one piece "▁word"; single
characters and a bare "▁" are low-scoring fallbacks, so any lower-case ASCII text (after the
lower-casing normalizer) still tokenizes without `<unk>`, just in more pieces.
"""
from __future__ import annotations

import re
import string

from t2vu_jax.toy.world import PATTERN_FORMS, TEMPLATES, WORDINGS

SPECIALS = ("<pad>", "</s>", "<unk>")
PUNCTUATION = ",.:;!?'-"
MAX_PROMPT_TOKENS = 19  # the longest toy-world prompt, </s> included
TEXT_LENGTH = 20  # the tokenizer's model_max_length: what pipelines pad the toy prompts to


def vocabulary() -> list[str]:
  """Every word the toy world's prompts use, sorted (articles "a" and "an" included)."""
  words = {"a", "an"}
  for template in TEMPLATES + PATTERN_FORMS:
    words.update(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", template)))
  for values in WORDINGS.values():
    for train, held in values.values():
      for phrase in train + held:
        words.update(phrase.split())
  return sorted(words)


def build_toy_tokenizer():
  """The toy tokenizer as a `transformers.PreTrainedTokenizerFast` (`save_pretrained` writes it)."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
  words = [f"▁{w}" for w in vocabulary()]
  fallback = ["▁"] + list(PUNCTUATION) + list(string.ascii_lowercase + string.digits)
  pieces = [(p, 0.0) for p in SPECIALS] + [(w, -2.0) for w in words] + [(c, -10.0) for c in fallback]
  tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIALS.index("<unk>")))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                              unk_token="<unk>", model_max_length=TEXT_LENGTH)
