"""T2VUnlearning for Wan2.1 in JAX/Flax NNX."""


def load_transformer(path, dtype="float32", **kwargs):
  """Load a Wan2.1 T2V transformer from any supported checkpoint format (see `convert.load`)."""
  from convert.load import load_transformer as _load
  return _load(path, dtype=dtype, **kwargs)
