"""Attention backends.

All backends take and return `(B, S, H, D)` tensors. The XLA reference runs everywhere and is the
one the parity tests use; accelerator kernels are selected by name.
"""
import jax
import jax.numpy as jnp

BACKENDS = ("xla",)


def dot_product_attention(q, k, v, backend: str = "xla"):
  """softmax(q k^T / sqrt(d)) v with the softmax in fp32, no mask (Wan masks nothing)."""
  if backend != "xla":
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def concept_attention(q, k, concept_mask):
  """Cross-attention mass on a concept's tokens: mean over heads of softmax(q k^T / sqrt(d)),
  summed over the text tokens marked in `concept_mask` (B, L). Returns (B, S) in fp32.

  Only this (B, S) reduction leaves the function; the (B, H, S, L) probabilities stay inside it.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bk->bq", probs, concept_mask.astype(jnp.float32)) / q.shape[2]
