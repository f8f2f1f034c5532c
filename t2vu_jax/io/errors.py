"""Error types of weight I/O."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or converted; the message names the files and tensors at fault."""
