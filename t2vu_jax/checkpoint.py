"""Train checkpoints (Orbax) and preemption handling.

A checkpoint holds what training changes: the step, the eraser parameters and the optimizer state.
Everything else a step depends on is a function of (seed, step): its prompts and its RNG key, so
resuming at step k replays exactly the run that was interrupted. Saves are asynchronous; the
newest `keep` are kept. On restore, a latest checkpoint that cannot be read (a save cut short) is
skipped with a warning for the one before it; one written for another eraser configuration or model
is an error that names the differing fields.
"""
from __future__ import annotations

import contextlib
import os
import signal
import warnings

import orbax.checkpoint as ocp


class RunCheckpointError(ValueError):
  """Checkpoints a run cannot go on from; the message names the directory and what to do."""


class CheckpointMismatch(RunCheckpointError):
  """A checkpoint written for another model or eraser configuration."""


class TrainCheckpoints:
  """Orbax checkpoints of a run's training state, each beside its `signature`: a JSON dict of what the
  state was made for (the eraser configuration and the model's dimensions). A checkpoint whose
  signature differs from this run's is refused, naming the differing fields, before any array is read."""

  def __init__(self, directory: str, signature: dict | None = None, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.signature = signature or {}
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def save(self, step: int, trainable) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(trainable),
                                                    signature=ocp.args.JsonSave(self.signature)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def _check_signature(self, step: int) -> None:
    """CheckpointMismatch when the step's signature differs from ours; an unreadable signature (a save cut
    short) raises whatever reading it raised."""
    saved = self.manager.restore(step, args=ocp.args.Composite(signature=ocp.args.JsonRestore())).signature
    differ = sorted(k for k in set(saved) | set(self.signature) if saved.get(k) != self.signature.get(k))
    if differ:
      fields = ", ".join(f"{k}: {saved.get(k)!r} there, {self.signature.get(k)!r} here" for k in differ)
      raise CheckpointMismatch(f"checkpoint {self.directory}/{step} was written for another model or eraser "
                               f"configuration ({fields}); use a new run directory (--config.workdir) or the "
                               "config that wrote it")

  def latest_step(self) -> int | None:
    """The newest saved step, readable or not."""
    return self.manager.latest_step()

  def _unsigned(self, step: int) -> bool:
    """A checkpoint written before checkpoints were signed: the state alone, not in a `state/` item."""
    return not os.path.isdir(os.path.join(self.directory, str(step), "state"))

  def restore_latest(self, target):
    """(step, restored) from the newest readable checkpoint, or (0, None) when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        if self._unsigned(step):  # no signature to compare: the restore itself checks the shapes
          return step, self.manager.restore(step, args=ocp.args.StandardRestore(target))
        self._check_signature(step)
        return step, self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target))).state
      except CheckpointMismatch:
        raise
      except Exception as e:  # a save cut short: fall back to the previous one
        warnings.warn(f"checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e}); "
                      "falling back to the previous one")
    if self.manager.all_steps():  # never start over silently from checkpoints that exist
      raise RunCheckpointError(f"no checkpoint in {self.directory} can be read (steps "
                               f"{sorted(self.manager.all_steps())}); move the directory away to start over")
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
