"""Attention backends.

All backends take and return `(B, S, H, D)` tensors and compute softmax(q k^T / sqrt(d)) v with no
mask (Wan masks nothing). "xla" is the reference: it runs everywhere and the parity tests use it.
"cudnn" is cuDNN's fused attention through `jax.nn.dot_product_attention` (GPU); "splash" is the
Pallas splash-attention kernel (TPU), with sequences padded to its block size and the padding kept
out by segment ids.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ("xla", "cudnn", "splash")
PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}
SPLASH_BLOCK = 128


def check_backend(backend: str) -> str:
  """`backend` if it exists and runs on this process's platform, else a ValueError saying what to use."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")
  needed = PLATFORMS.get(backend)
  if needed and jax.default_backend() != needed:
    raise ValueError(f"attention backend {backend!r} needs a {needed.upper()}, but JAX runs on "
                     f"{jax.default_backend()!r} here; use 'xla' (runs everywhere)")
  return backend


def heads_first(t):
  """(B, S, H, D) -> (B, H, S, D). XLA's CPU matmuls run the attention products 2-3x faster with the
  batch and head dimensions leading than on the (B, S, H, D) layout directly."""
  return jnp.swapaxes(t, 1, 2)


def _probabilities(q, k, bias=None):
  """softmax(q k^T / sqrt(d) + bias) in fp32, (B, H, S, L); `bias` (L,) is added to every query's logits."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bhqd,bhkd->bhqk", heads_first(q), heads_first(k), preferred_element_type=jnp.float32)
  logits = logits * scale
  return jax.nn.softmax(logits if bias is None else logits + bias.astype(jnp.float32), axis=-1)


def _xla_only(backend: str, bias) -> None:
  if bias is not None and backend != "xla":
    raise ValueError(f"a key bias (collapsed text padding) runs with the 'xla' attention backend, not {backend!r}")


def _weighted_values(probs, v):
  """probs (B, H, S, L) applied to v (B, L, H, D): (B, S, H, D)."""
  return heads_first(jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), heads_first(v)))


def _concept_mass(probs, concept_mask):
  """(B, S): mean over heads of `probs` summed over the keys marked in `concept_mask` (B, L)."""
  return jnp.einsum("bhqk,bk->bq", probs, concept_mask.astype(jnp.float32)) / probs.shape[1]


def dot_product_attention(q, k, v, backend: str = "xla", bias=None):
  """softmax(q k^T / sqrt(d) + bias) v with the softmax in fp32 (`bias` (L,) per key, XLA backend)."""
  _xla_only(backend, bias)
  if backend == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  if backend == "splash":
    return splash_attention(q, k, v)
  if backend != "xla":
    raise ValueError(f"unknown attention backend {backend!r}; available: {BACKENDS}")
  return _weighted_values(_probabilities(q, k, bias), v)


def concept_attention(q, k, concept_mask, bias=None):
  """Cross-attention mass on a concept's tokens: mean over heads of softmax(q k^T / sqrt(d)),
  summed over the text tokens marked in `concept_mask` (B, L). Returns (B, S) in fp32.

  Only this (B, S) reduction leaves the function; the (B, H, S, L) probabilities stay inside it.
  """
  return _concept_mass(_probabilities(q, k, bias), concept_mask)


def attention_with_concept(q, k, v, concept_mask, backend: str = "xla", bias=None):
  """(attention output, concept attention (B, S)). The XLA backend reads the concept attention off the
  probabilities it computes anyway; the fused kernels keep theirs, so it is computed beside them."""
  if backend != "xla":
    return dot_product_attention(q, k, v, backend, bias), concept_attention(q, k, concept_mask)
  probs = _probabilities(q, k, bias)
  return _weighted_values(probs, v), _concept_mass(probs, concept_mask)


def splash_attention(q, k, v, interpret: bool = False):
  """Pallas splash attention (TPU; `interpret=True` runs the same kernel anywhere, slowly)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  b, s, h, d = q.shape
  length = k.shape[1]
  s_pad, l_pad = (SPLASH_BLOCK * math.ceil(n / SPLASH_BLOCK) for n in (s, length))
  kernel = splash.make_splash_mha(splash.MultiHeadMask([splash.FullMask((s_pad, l_pad))] * h), head_shards=1,
                                  q_seq_shards=1, interpret=interpret)
  # Padded queries and keys get segment 1, real ones 0: real queries never see padded keys.
  segments = splash.SegmentIds(q=jnp.asarray(np.arange(s_pad) >= s, jnp.int32),
                               kv=jnp.asarray(np.arange(l_pad) >= length, jnp.int32))
  pad = lambda t, n: jnp.pad(t, ((0, 0), (0, n - t.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  qp, kp, vp = pad(q * d ** -0.5, s_pad), pad(k, l_pad), pad(v, l_pad)  # (B, H, S, D)
  out = jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1, segment_ids=segments))(qp, kp, vp)
  return out.transpose(0, 2, 1, 3)[:, :s].astype(v.dtype)
