"""Prompt pools for erasure training: loading, validation, per-step sampling, concept token masks.

A pool file is JSONL, one `{"prompt": ..., "concept": ...}` object a line; blank lines and lines
starting with `#` are skipped. The concept phrase must occur in its prompt as a whole word (or words),
matched the way `text.concept_token_span` matches: after `clean_prompt`, exactly, else
case-insensitively, at its first occurrence. Concepts are grouped case-insensitively: "Nude" and
"nude" are one concept, whose name is the lower-cased cleaned phrase.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from types import MappingProxyType
from typing import Iterable, Sequence

import numpy as np

from t2vu_jax.text import MAX_LENGTH, clean_prompt, concept_token_span, find_phrase

POOL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pools")
FIELDS = ("concept", "prompt")


class PoolError(ValueError):
  """Invalid prompt pool(s); `problems` lists every problem found, each naming where it is."""

  def __init__(self, what: str, problems: list[str]):
    self.problems = list(problems)
    n = len(self.problems)
    super().__init__(f"{what}: {n} problem{'s' if n != 1 else ''}:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One prompt and the concept phrase it contains; `source` ("file:line") only locates it in messages."""
  prompt: str
  concept: str
  source: str = dataclasses.field(default="", compare=False, repr=False)

  def __post_init__(self):
    for key in ("prompt", "concept"):
      if not isinstance(getattr(self, key), str):
        raise TypeError(f"Entry.{key} must be a string, got {type(getattr(self, key)).__name__}")


def concept_key(concept: str) -> str:
  """The name a concept phrase is grouped under: cleaned and lower-cased."""
  return clean_prompt(concept).lower()


def _entry_problems(prompt: str, concept: str) -> list[str]:
  text, needle = clean_prompt(prompt), clean_prompt(concept)
  problems = []
  if not text:
    problems.append('"prompt" is empty')
  if not needle:
    problems.append('"concept" is empty')
  if problems:
    return problems
  at = find_phrase(text, needle)
  if at < 0:
    return [f"concept {concept!r} does not occur in prompt {prompt!r}"]
  end = at + len(needle)
  inside = ((needle[0].isalnum() and at > 0 and text[at - 1].isalnum())
            or (needle[-1].isalnum() and end < len(text) and text[end].isalnum()))
  if inside:
    lo, hi = at, end
    while lo > 0 and text[lo - 1].isalnum():
      lo -= 1
    while hi < len(text) and text[hi].isalnum():
      hi += 1
    return [f"concept {concept!r} occurs only inside the word {text[lo:hi]!r} of prompt {prompt!r}, so its "
            "token span would be wrong: reword the prompt or the concept"]
  return []


class _Checker:
  """Per-entry checks plus duplicate detection (by cleaned prompt) across everything it has seen."""

  def __init__(self):
    self.seen: dict[str, str] = {}

  def __call__(self, prompt: str, concept: str, label: str) -> list[str]:
    out = [f"{label}: {m}" for m in _entry_problems(prompt, concept)]
    key = clean_prompt(prompt)
    if key in self.seen:
      out.append(f"{label}: duplicate prompt {prompt!r} (first at {self.seen[key]})")
    else:
      self.seen[key] = label
    return out


@dataclasses.dataclass(frozen=True)
class PromptPool:
  """An immutable, validated set of (prompt, concept) entries, grouped by concept."""
  entries: tuple[Entry, ...]
  name: str = "<prompt pool>"

  def __post_init__(self):
    entries = tuple(self.entries)
    object.__setattr__(self, "entries", entries)
    if not all(isinstance(e, Entry) for e in entries):
      raise TypeError(f"{self.name}: entries must be Entry objects")
    if not entries:
      raise PoolError(self.name, [f"{self.name}: the pool is empty"])
    check = _Checker()
    problems = [p for i, e in enumerate(entries) for p in check(e.prompt, e.concept, e.source or f"{self.name}[{i}]")]
    if problems:
      raise PoolError(self.name, problems)
    groups: dict[str, list[Entry]] = {}
    for e in entries:
      groups.setdefault(concept_key(e.concept), []).append(e)
    object.__setattr__(self, "_groups", MappingProxyType({k: tuple(groups[k]) for k in sorted(groups)}))

  @property
  def concepts(self) -> tuple[str, ...]:
    """Sorted unique concept names (see `concept_key`)."""
    return tuple(self._groups)

  def for_concept(self, concept: str) -> tuple[Entry, ...]:
    """The entries of one concept, in file order (matched case-insensitively)."""
    key = concept_key(concept)
    if key not in self._groups:
      raise ValueError(f"concept {concept!r} is not in pool {self.name} (its concepts: {list(self._groups)})")
    return self._groups[key]

  def __len__(self) -> int:
    return len(self.entries)

  def __iter__(self):
    return iter(self.entries)

  @classmethod
  def merge(cls, pools: Iterable["PromptPool"], name: str | None = None) -> "PromptPool":
    """One pool holding every entry of `pools` (duplicates across them are an error)."""
    pools = list(pools)
    entries = [e if e.source else dataclasses.replace(e, source=f"{p.name}[{i}]")
               for p in pools for i, e in enumerate(p.entries)]
    return cls(tuple(entries), name or " + ".join(p.name for p in pools))


def split_paths(value: str) -> list[str]:
  """The paths of a comma-separated config field ("a.jsonl, b.jsonl" -> ["a.jsonl", "b.jsonl"])."""
  return [p.strip() for p in str(value).split(",") if p.strip()]


def _as_paths(paths) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    return [os.fspath(paths)]
  return [os.fspath(p) for p in paths]


def load_pools(paths: Sequence[str | os.PathLike]) -> PromptPool:
  """Load and validate one or more JSONL pool files as one pool; every problem is reported at once."""
  paths = _as_paths(paths)
  if not paths:
    raise ValueError("load_pools needs at least one pool file")
  problems: list[str] = []
  entries: list[Entry] = []
  check = _Checker()
  for path in paths:
    if not os.path.exists(path):
      problems.append(f"{path}: pool file does not exist")
      continue
    if not os.path.isfile(path):
      problems.append(f"{path}: not a file")
      continue
    with open(path, "rb") as f:
      data = f.read()
    count = 0
    for n, raw in enumerate(data.splitlines(), 1):
      where = f"{path}:{n}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        problems.append(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})")
        count += 1
        continue
      line = line.removeprefix("\ufeff").strip() if n == 1 else line.strip()
      if not line or line.startswith("#"):
        continue
      count += 1
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
        continue
      if not isinstance(obj, dict):
        problems.append(f'{where}: expected a JSON object {{"prompt": ..., "concept": ...}}, got {type(obj).__name__}')
        continue
      line_problems = []
      unknown = sorted(set(obj) - set(FIELDS))
      if unknown:
        line_problems.append(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))} (allowed: 'prompt', 'concept')")
      for key in ("prompt", "concept"):
        if key not in obj:
          line_problems.append(f'{where}: missing "{key}"')
        elif not isinstance(obj[key], str):
          line_problems.append(f'{where}: "{key}" must be a string, got {type(obj[key]).__name__}')
      if not line_problems:
        line_problems = check(obj["prompt"], obj["concept"], where)
        if not line_problems:
          entries.append(Entry(obj["prompt"], obj["concept"], source=where))
      problems.extend(line_problems)
    if count == 0:
      problems.append(f"{path}: the pool is empty (no prompt lines)")
  name = ", ".join(paths)
  if problems:
    raise PoolError(f"invalid prompt pool {name}", problems)
  return PromptPool(tuple(entries), name)


def load_pool(path: str | os.PathLike) -> PromptPool:
  """Load and validate one JSONL pool file; every problem is reported at once, as file:line."""
  return load_pools([path])


def shipped_pools() -> list[str]:
  """Names of the pools that ship with the package (files in `POOL_DIR`)."""
  return sorted(f[:-len(".jsonl")] for f in os.listdir(POOL_DIR) if f.endswith(".jsonl"))


def shipped_pool(name: str) -> PromptPool:
  """A pool shipped with the package, by name (e.g. "nudity", "preserve_people")."""
  name = name.removesuffix(".jsonl")
  if name not in shipped_pools():
    raise ValueError(f"no shipped prompt pool named {name!r} (available: {shipped_pools()})")
  return load_pool(os.path.join(POOL_DIR, f"{name}.jsonl"))


def contains_phrase(text: str, phrase: str) -> bool:
  """Whether `phrase` occurs in `text` as whole word(s), case-insensitively, after cleaning."""
  needle = re.escape(clean_prompt(phrase))
  return re.search(rf"(?<!\w){needle}(?!\w)", clean_prompt(text), re.IGNORECASE) is not None


@dataclasses.dataclass(frozen=True)
class ErasureSet:
  """What one run erases (every concept of `erase`, with one eraser set) and what it keeps (`preserve`).

  A concept both erased and preserved is an error, and so is a preservation prompt that contains an
  erased concept phrase: the two losses would pull the erasers opposite ways on it.
  """
  erase: PromptPool
  preserve: PromptPool | None = None

  def __post_init__(self):
    if not isinstance(self.erase, PromptPool):
      raise TypeError(f"ErasureSet.erase must be a PromptPool, got {type(self.erase).__name__}")
    if self.preserve is None:
      return
    if not isinstance(self.preserve, PromptPool):
      raise TypeError(f"ErasureSet.preserve must be a PromptPool or None, got {type(self.preserve).__name__}")
    problems = [f"concept {c!r} is both erased (pool {self.erase.name}) and preserved (pool {self.preserve.name})"
                for c in sorted(set(self.erase.concepts) & set(self.preserve.concepts))]
    for i, e in enumerate(self.preserve.entries):
      hits = [c for c in self.erase.concepts if contains_phrase(e.prompt, c)]
      if hits:
        problems.append(f"{e.source or f'{self.preserve.name}[{i}]'}: preservation prompt {e.prompt!r} contains "
                        f"erased concept{'s' if len(hits) > 1 else ''} {', '.join(map(repr, hits))}")
    if problems:
      raise PoolError("erased and preserved prompts conflict", problems)

  @classmethod
  def from_files(cls, erase: str | os.PathLike | Sequence[str | os.PathLike],
                 preserve: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> "ErasureSet":
    """Load the erase pool file(s) and the optional preservation pool file(s)."""
    keep = _as_paths(preserve) if preserve is not None else []
    return cls(load_pools(erase), load_pools(keep) if keep else None)

  @property
  def concepts(self) -> tuple[str, ...]:
    """The concepts this run erases."""
    return self.erase.concepts

  def sample(self, batch_size: int, seed: int, step: int,
             preserve_batch_size: int | None = None) -> tuple[list[Entry], list[Entry]]:
    """(erase entries, preservation entries) for one step; independent streams of (seed, step).

    The preservation list is empty without a preservation pool; its size defaults to `batch_size`.
    """
    erase = sample_batch(self.erase, batch_size, seed, step, stream=0)
    if self.preserve is None:
      return erase, []
    n = batch_size if preserve_batch_size is None else preserve_batch_size
    return erase, sample_batch(self.preserve, n, seed, step, stream=1)


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def sample_batch(pool: PromptPool, batch_size: int, rng: np.random.Generator | int, step: int | None = None,
                 *, stream: int = 0) -> list[Entry]:
  """`batch_size` entries drawn with replacement: a concept uniformly, then one of its prompts uniformly.

  Drawing the concept first keeps concepts balanced in multi-concept runs whatever the number of
  rewrites each has. With an integer seed the generator is `np.random.default_rng([seed, step, stream])`,
  so a step's draw depends only on (seed, step, stream), never on earlier draws: a resumed run draws the
  same prompts. A Generator is used as given (then `step` must be None).
  """
  if not isinstance(pool, PromptPool):
    raise TypeError(f"sample_batch needs a PromptPool, got {type(pool).__name__}")
  batch_size = _check_int("batch_size", batch_size, 1)
  if isinstance(rng, np.random.Generator):
    if step is not None:
      raise TypeError("step is only used with an integer seed; a Generator is used as it is")
    gen = rng
  else:
    seed = _check_int("seed", rng, 0)
    if step is None:
      raise TypeError("sample_batch with an integer seed needs the step it draws for")
    gen = np.random.default_rng([seed, _check_int("step", step, 0), _check_int("stream", stream, 0)])
  concepts = pool.concepts
  which = gen.integers(len(concepts), size=batch_size)
  u = gen.random(batch_size)
  out = []
  for c, x in zip(which, u):
    group = pool.for_concept(concepts[c])
    out.append(group[min(int(x * len(group)), len(group) - 1)])
  return out


def _concept_at(entry: Entry) -> tuple[str, int, int]:
  """(cleaned prompt, start, end) of the entry's concept phrase: the occurrence its token span covers."""
  text, needle = clean_prompt(entry.prompt), clean_prompt(entry.concept)
  at = find_phrase(text, needle)
  if at < 0:
    where = f"{entry.source}: " if entry.source else ""
    raise ValueError(f"{where}concept {entry.concept!r} does not occur in prompt {entry.prompt!r}")
  return text, at, at + len(needle)


def anchor_prompt(entry: Entry) -> str:
  """The entry's prompt without its concept phrase (the occurrence its token span covers), tidied:
  "a nude woman on a beach" -> "a woman on a beach". A prompt that is only the concept gives ""."""
  text, at, end = _concept_at(entry)
  rest = " ".join((text[:at] + " " + text[end:]).split())
  rest = re.sub(r"\s+([,.;:!?])", r"\1", rest)      # no space before punctuation
  rest = re.sub(r"([,;:])(?=[,.;:!?])", "", rest)     # "in red, moving" minus "red" leaves no ",,"
  return rest.strip(" ,;:")


def replaced_prompt(entry: Entry, phrase: str) -> str:
  """The entry's prompt with `phrase` in place of its concept phrase: "a red circle" with "ivory" is
  "an ivory circle" (an article right before the phrase follows its first letter)."""
  text, at, end = _concept_at(entry)
  article = "an" if re.match(r"[aeiou]", phrase, re.IGNORECASE) else "a"
  head = re.sub(r"(^|\s)([aA])n?(\s+)$", lambda m: m[1] + m[2] + article[1:] + m[3], text[:at])
  return head + phrase + text[end:]


def parse_replacements(spec: str, concepts: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """concept name -> the phrases that take its place (`objective.anchor="replace"`), from `spec`:
  "p1, p2" for every concept, or "concept: p1, p2; other: p3" per concept (every concept named once).
  A phrase that is its own concept is refused: it would keep what is erased."""
  spec = spec.strip()
  if not spec:
    raise ValueError("no replacement phrases")
  names = [concept_key(c) for c in concepts]
  if ":" in spec:
    table = {}
    for group in filter(str.strip, spec.split(";")):
      concept, sep, phrases = group.partition(":")
      if not sep:
        raise ValueError(f"group {group.strip()!r} is not 'concept: phrase, ...'")
      key = concept_key(concept)
      if key not in names or key in table:
        what = "named twice" if key in table else "not a concept of the run"
        raise ValueError(f"concept {concept.strip()!r} is {what} (concepts: {sorted(set(names))})")
      table[key] = phrases
    if missing := [n for n in names if n not in table]:
      raise ValueError(f"no replacement phrases for concept(s) {missing}")
  else:
    table = dict.fromkeys(names, spec)
  out = {}
  for name, phrases in table.items():
    out[name] = tuple(clean_prompt(p) for p in phrases.split(",") if clean_prompt(p))
    if not out[name]:
      raise ValueError(f"no replacement phrases for concept {name!r}")
    if name in {concept_key(p) for p in out[name]}:
      raise ValueError(f"concept {name!r} is among its own replacement phrases")
  return out


def anchor_prompts(entries: Sequence[Entry], anchor: str, replacements: str = "") -> tuple[list[str], np.ndarray]:
  """(anchor prompts, the entry each belongs to) of an objective anchor: none for "empty", one per
  entry for "prompt" (`anchor_prompt`), one per entry and replacement phrase of its concept for
  "replace" (`replaced_prompt`, `parse_replacements`)."""
  entries = list(entries)
  if anchor == "empty":
    return [], np.zeros(0, np.int32)
  if anchor == "prompt":
    return [anchor_prompt(e) for e in entries], np.arange(len(entries), dtype=np.int32)
  if anchor != "replace":
    raise ValueError(f"unknown anchor {anchor!r}")
  table = parse_replacements(replacements, [e.concept for e in entries])
  pairs = [(replaced_prompt(e, r), i) for i, e in enumerate(entries) for r in table[concept_key(e.concept)]]
  return [text for text, _ in pairs], np.array([i for _, i in pairs], np.int32)


def token_spans(tokenizer, entries: Sequence[Entry], max_length: int = MAX_LENGTH) -> np.ndarray:
  """(B, max_length) float32 masks: 1 on each entry's concept tokens (`text.concept_token_span`), else 0."""
  entries = list(entries)
  if not entries:
    raise ValueError("token_spans needs at least one entry (got none)")
  mask = np.zeros((len(entries), max_length), np.float32)
  for i, e in enumerate(entries):
    where = f"{e.source}: " if e.source else ""
    try:
      start, end = concept_token_span(tokenizer, e.prompt, e.concept)
    except ValueError as err:
      raise ValueError(f"{where}cannot locate concept {e.concept!r} in prompt {e.prompt!r}: {err}") from None
    if end > max_length:
      raise ValueError(f"{where}concept {e.concept!r} lies at tokens [{start}, {end}), beyond the first "
                       f"{max_length} tokens of prompt {e.prompt!r}")
    mask[i, start:end] = 1.0
  return mask
