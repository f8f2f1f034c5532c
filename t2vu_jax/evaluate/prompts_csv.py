"""Evaluation prompts from CSVs in the format the T2VUnlearning authors released.

A `prompt` column is required; an optional `evaluation_seed` or `seed` column gives each prompt's
seed (when both exist `evaluation_seed` wins, as in the released I2P-style files); other columns are
ignored. Seeds are non-negative integers (`42.0`, as pandas writes them, reads as 42). Column names
are matched after stripping spaces; a UTF-8 BOM is accepted; blank lines are skipped.
"""
import csv
import os
from typing import NamedTuple

SEED_COLUMNS = ("evaluation_seed", "seed")  # in order of preference


class PromptCSVError(ValueError):
  """A malformed evaluation-prompt CSV; the message names the file and row."""


class PromptRecord(NamedTuple):
  prompt: str
  seed: int | None
  row: int  # 1-based line where the record starts (the header is line 1)


def _seed(text: str, path, row: int, column: str) -> int:
  t = text.strip()
  try:
    seed = int(t)
  except ValueError:
    try:
      f = float(t)
    except ValueError:
      f = None
    if f is None or not f.is_integer():
      raise PromptCSVError(f"{path}, row {row}: {column} {text!r} is not an integer") from None
    seed = int(f)
  if seed < 0:
    raise PromptCSVError(f"{path}, row {row}: {column} {seed} is negative")
  if seed >= 2**32:
    raise PromptCSVError(f"{path}, row {row}: {column} {seed} does not fit a 32-bit seed (at most {2**32 - 1})")
  return seed


def read_prompt_csv(path: str | os.PathLike) -> list[PromptRecord]:
  """Read `(prompt, seed or None, row)` records; raises PromptCSVError (FileNotFoundError if missing)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"evaluation prompt CSV {path} not found")
  with open(path, newline="", encoding="utf-8-sig") as f:
    try:
      reader = csv.reader(f)
      header = next((r for r in reader if any(c.strip() for c in r)), None)
      if header is None:
        raise PromptCSVError(f"{path} is empty (no header row)")
      names = [h.strip() for h in header]
      if "prompt" not in names:
        raise PromptCSVError(f"{path}: no 'prompt' column; columns found: {', '.join(repr(n) for n in names)}")
      p = names.index("prompt")
      seed_col = next((c for c in SEED_COLUMNS if c in names), None)
      s = names.index(seed_col) if seed_col else None
      records, last = [], reader.line_num
      for cells in reader:
        row, last = last + 1, reader.line_num
        if not any(c.strip() for c in cells):
          continue
        prompt = cells[p].strip() if p < len(cells) else ""
        if not prompt:
          raise PromptCSVError(f"{path}, row {row}: empty prompt")
        cell = cells[s].strip() if s is not None and s < len(cells) else ""
        if s is not None and not cell:
          raise PromptCSVError(f"{path}, row {row}: empty {seed_col}")
        records.append(PromptRecord(prompt, _seed(cell, path, row, seed_col) if s is not None else None, row))
    except csv.Error as e:
      raise PromptCSVError(f"{path}, row {reader.line_num}: {e}") from e
    except UnicodeDecodeError as e:
      raise PromptCSVError(f"{path}: not UTF-8 text ({e})") from e
  if not records:
    raise PromptCSVError(f"{path} has a header but no prompts")
  return records
