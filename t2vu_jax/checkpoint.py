"""Train checkpoints (Orbax) and preemption handling.

A checkpoint holds what training changes: the step, the eraser parameters and the optimizer state.
Everything else a step depends on is a function of (seed, step): its prompts and its RNG key, so
resuming at step k replays exactly the run that was interrupted. Saves are asynchronous; the
newest `keep` are kept. On restore, a latest checkpoint that cannot be read (a save cut short) is
skipped with a warning for the one before it; one that does not fit the model is an error.
"""
from __future__ import annotations

import contextlib
import os
import signal
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """A checkpoint written for another model or eraser configuration."""


class TrainCheckpoints:

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def save(self, step: int, trainable) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(trainable))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def _check_shapes(self, step: int, target) -> None:
    saved = self.manager.item_metadata(step)
    if saved is None:
      return
    # Compared as multisets of shapes: Orbax metadata names containers differently from the live pytree.
    want = sorted(tuple(np.shape(a)) for a in jax.tree.leaves(target))
    got = sorted(tuple(m.shape) for m in jax.tree.leaves(saved) if hasattr(m, "shape"))
    if want != got:
      extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
      raise CheckpointMismatch(f"checkpoint {self.directory}/{step} was written for another model or eraser "
                               f"configuration (array shapes only in the checkpoint: {extra[:4]}, only in this "
                               f"model: {missing[:4]}); use a new run directory or the config that wrote it")

  def restore_latest(self, target):
    """(step, restored) from the newest readable checkpoint, or (0, None) when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        self._check_shapes(step, target)
        return step, self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except CheckpointMismatch:
        raise
      except Exception as e:  # a save cut short: fall back to the previous one
        warnings.warn(f"checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e}); "
                      "falling back to the previous one")
    return 0, None


class Preempted(SystemExit):
  """Raised after the state was saved on SIGTERM/SIGINT; exit status 75 (try again)."""

  def __init__(self, step: int):
    super().__init__(75)
    self.step = step


@contextlib.contextmanager
def preemption_guard():
  """Within the block, SIGTERM and SIGINT only set `flag["requested"]`; the loop saves and stops."""
  flag = {"requested": False}

  def handler(signum, frame):
    flag["requested"] = True

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
