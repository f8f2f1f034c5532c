"""Atomic writes: build the output in a temporary sibling, then rename it into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def check_writable(out: str, overwrite: bool = False, sources=()) -> str:
  """`out` as an absolute path; FileExistsError when it exists and may not be replaced, ValueError when
  it is, contains or lies inside one of the `sources` it is made from (replacing it would delete them)."""
  out = os.path.realpath(os.fspath(out))
  for source in sources:
    source = os.path.realpath(os.fspath(source))
    if os.path.commonpath([out, source]) in (out, source):
      raise ValueError(f"output {out} is, contains or lies inside the source {source}; "
                       "write it somewhere else (replacing it would delete the source)")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} already exists; choose another output path or allow overwriting (--overwrite)")
  return out


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _as_created(path: str, directory: bool) -> None:
  """Give a temporary file or directory (made 0600/0700) the mode a plain create would have: colleagues on
  a shared filesystem can read what the umask lets them."""
  os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def remove_stale(out: str) -> list[str]:
  """Delete the temporary siblings of `out` that an interrupted atomic write left behind; returns them.
  Only for outputs a single writer owns (such as a run directory's exports)."""
  out = os.path.abspath(os.fspath(out))
  parent, name = os.path.dirname(out), os.path.basename(out)
  if not os.path.isdir(parent):
    return []
  stale = [os.path.join(parent, f) for f in os.listdir(parent)
           if f.startswith(f".{name}.tmp-") or f.startswith(f".{name}.old-")]
  for path in stale:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return stale


def write_text(path: str, text: str) -> None:
  """Replace the file `path` with `text` atomically: a reader sees the old file or the new, never half."""
  with atomic_file(path, overwrite=True) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


@contextlib.contextmanager
def atomic_directory(out: str, overwrite: bool = False):
  """Yield a temporary directory that becomes `out` only if the block finishes without error."""
  out = check_writable(out, overwrite)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  _as_created(tmp, directory=True)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
    os.replace(out, os.path.join(old, "x"))
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str, overwrite: bool = False, suffix: str = ""):
  """Yield a temporary file path (ending in `suffix`, for writers that pick the format by extension)
  that becomes the file `out` only if the block finishes without error."""
  out = check_writable(out, overwrite)
  if os.path.isdir(out):
    raise IsADirectoryError(f"{out} is a directory; cannot replace it with a file")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.tmp-", suffix=suffix, dir=os.path.dirname(out))
  os.close(fd)
  _as_created(tmp, directory=False)
  try:
    yield tmp
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
