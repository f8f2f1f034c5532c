"""Attention backends: selection on the wrong platform fails clearly; splash matches the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t2vu_jax.attention import check_backend, dot_product_attention, splash_attention
from t2vu_jax.models.wan import WanConfig, WanTransformer


@pytest.mark.parametrize("backend,device", [("cudnn", "GPU"), ("splash", "TPU")])
def test_accelerator_backends_refuse_cpu(backend, device):
  with pytest.raises(ValueError, match=f"needs a {device}.*use 'xla'"):
    check_backend(backend)
  with pytest.raises(ValueError, match=f"needs a {device}"):
    WanTransformer(WanConfig(num_layers=1, num_attention_heads=1, attention_head_dim=12, ffn_dim=8, text_dim=8,
                             freq_dim=8), dtype=jnp.float32, rngs=nnx.Rngs(0), attention=backend)


def test_unknown_backend():
  with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
    check_backend("flash")


@pytest.mark.parametrize("s,length", [(200, 77), (128, 512), (5, 3)])
def test_splash_kernel_matches_the_reference(s, length):
  """The TPU kernel run in interpret mode, with lengths that need padding to its 128 block."""
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (2, s, 2, 32))
  k, v = (jax.random.normal(key, (2, length, 2, 32)) for key in ks[1:])
  ref = dot_product_attention(q, k, v, "xla")
  np.testing.assert_allclose(np.asarray(splash_attention(q, k, v, interpret=True)), np.asarray(ref), atol=2e-6)
