"""T2VUnlearning for Wan2.1 in JAX/Flax NNX. Importing the package loads no framework; the two
loaders below import what they need."""


def load_transformer(path, dtype="float32", **kwargs):
  """Load a Wan2.1 T2V transformer from any supported checkpoint format (see `t2vu_jax.models.wan_params`)."""
  from t2vu_jax.models.wan_params import load_transformer as _load
  return _load(path, dtype=dtype, **kwargs)


def load_pipeline(path, dtype="float32", **kwargs):
  """Load a diffusers Wan2.1 T2V pipeline directory for generation (see `t2vu_jax.pipeline`)."""
  from t2vu_jax.pipeline import load_pipeline as _load
  return _load(path, dtype=dtype, **kwargs)
