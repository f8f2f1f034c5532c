"""Atomic directory writes: build the output in a temporary sibling, then rename it into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_directory(out: str, overwrite: bool = False):
  """Yield a temporary directory that becomes `out` only if the block finishes without error."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} already exists; choose another output path or allow overwriting")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
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
