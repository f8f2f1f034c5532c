"""Random-weight Wan pipelines built directly in JAX, for benchmarks and planning at full size.

No checkpoint and no torch: the DiT, UMT5-XXL and the VAE are initialised by a jitted constructor whose
outputs land in their shardings on the mesh (`sharding.param_shardings`), so a 14B model is never held
on one device, and the tokenizer is a small word tokenizer (`text.word_tokenizer`) of a few prompt words.
The weights are meaningless; shapes, FLOPs, memory and time are those of the real models.

  from t2vu_jax.random_pipeline import random_pipeline
  pipe = random_pipeline("1.3b", "bfloat16", mesh=mesh)
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from t2vu_jax import text
from t2vu_jax.models.umt5 import UMT5Config, UMT5Encoder
from t2vu_jax.models.vae import WanVAE, WanVAEConfig
from t2vu_jax.models.wan import WanConfig, WanTransformer
from t2vu_jax.pipeline import WanPipeline
from t2vu_jax.schedulers import unipc_flow_config
from t2vu_jax.sharding import param_shardings

SIZES = {"1.3b": WanConfig.wan_1_3b, "14b": WanConfig.wan_14b}
WORDS = "a the cat dog person woman man walking running in on at park beach street city night red blue car video"


def random_module(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0, mesh=None) -> nnx.Module:
  """`make(rngs)` with random weights. On `mesh` they come from one jitted program whose outputs are
  created in their shardings (`sharding.param_shardings`), never whole on one device; the values are
  the plain construction's up to float rounding (XLA fuses the initialisers' scaling differently)."""
  if mesh is None:
    return make(nnx.Rngs(seed))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(seed))))
  init = jax.jit(lambda: nnx.split(make(nnx.Rngs(seed)))[1], out_shardings=param_shardings(abstract_state, mesh))
  return nnx.merge(graphdef, init())


def random_pipeline(size: str = "1.3b", dtype="bfloat16", text_dtype=None, vae_dtype="float32", mesh=None,
                    seed: int = 0, transformer: WanConfig | None = None, text_encoder: UMT5Config | None = None,
                    vae: WanVAEConfig | None = None, words: str = WORDS) -> WanPipeline:
  """A Wan2.1 T2V pipeline of `size` ("1.3b" or "14b") with random weights: the DiT in `dtype`, UMT5-XXL
  in `text_dtype` (default `dtype`), the Wan2.1 VAE in `vae_dtype`. `transformer`, `text_encoder` and
  `vae` replace the full-size configurations (small ones for tests); the DiT's text width follows the
  encoder's."""
  if transformer is None:
    if size not in SIZES:
      raise ValueError(f"unknown Wan size {size!r}; choose one of {sorted(SIZES)}")
    transformer = SIZES[size]()
  text_encoder = text_encoder or UMT5Config()
  if transformer.text_dim != text_encoder.d_model:
    raise ValueError(f"the transformer expects {transformer.text_dim}-wide text embeddings but the text "
                     f"encoder gives {text_encoder.d_model}")
  vae = vae or WanVAEConfig()
  if transformer.in_channels != vae.z_dim:
    raise ValueError(f"the transformer has {transformer.in_channels} input channels but the VAE's latents have "
                     f"{vae.z_dim}")
  dtype, text_dtype = jnp.dtype(dtype), jnp.dtype(text_dtype or dtype)
  tokenizer = text.word_tokenizer(words.split())
  if len(tokenizer) > text_encoder.vocab_size:
    raise ValueError(f"{len(tokenizer)} tokenizer pieces do not fit a vocabulary of {text_encoder.vocab_size}")
  dit = random_module(lambda rngs: WanTransformer(transformer, dtype=dtype, rngs=rngs), seed, mesh)
  encoder = random_module(lambda rngs: UMT5Encoder(text_encoder, dtype=text_dtype, rngs=rngs), seed + 1, mesh)
  decoder = random_module(lambda rngs: WanVAE(vae, dtype=jnp.dtype(vae_dtype), rngs=rngs), seed + 2)
  return WanPipeline(dit, encoder, tokenizer, decoder, unipc_flow_config(3.0))  # Wan2.1's 480p flow shift
