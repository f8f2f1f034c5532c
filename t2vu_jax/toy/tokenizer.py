"""The toy world's tokenizer: `text.word_tokenizer` over every word its prompts use, so each word
is one token and any other lower-case ASCII text still tokenizes (in more pieces)."""
from __future__ import annotations

import re

from t2vu_jax.toy.world import PATTERN_FORMS, TEMPLATES, WORDINGS

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
  from t2vu_jax.text import word_tokenizer
  return word_tokenizer(vocabulary(), TEXT_LENGTH)
