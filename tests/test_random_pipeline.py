"""Random-weight pipelines built in JAX: the real architectures, sharded at creation, end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from t2vu_jax.models.umt5 import UMT5Config, UMT5Encoder
from t2vu_jax.models.vae import WanVAEConfig
from t2vu_jax.models.wan import WanConfig, WanTransformer
from t2vu_jax.random_pipeline import SIZES, random_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(transformer=WanConfig(num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64, num_layers=2,
                                   freq_dim=32),
             text_encoder=UMT5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4),
             vae=WanVAEConfig(base_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1))
VIDEO = dict(height=32, width=32, num_frames=5, steps=2, progress=False, output="float")


def count(module) -> int:
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_full_size_architectures_are_the_real_ones(size):
  """Parameter counts of the configurations the helper builds equal diffusers' and transformers' models
  of the published configs (built on the meta device: no weights anywhere)."""
  from diffusers import WanTransformer3DModel
  from transformers import UMT5Config as HFConfig, UMT5EncoderModel
  ours = count(nnx.eval_shape(lambda: WanTransformer(SIZES[size](), rngs=nnx.Rngs(0))))
  heads, ffn, layers = {"1.3b": (12, 8960, 30), "14b": (40, 13824, 40)}[size]
  with torch.device("meta"):
    theirs = WanTransformer3DModel(num_attention_heads=heads, ffn_dim=ffn, num_layers=layers)
    encoder = UMT5EncoderModel(HFConfig(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                        num_heads=64, feed_forward_proj="gated-gelu"))
  assert ours == sum(p.numel() for p in theirs.parameters())
  assert count(nnx.eval_shape(lambda: UMT5Encoder(UMT5Config(), rngs=nnx.Rngs(0)))) == \
      sum(p.numel() for p in encoder.parameters())  # the tied embedding counted once, as ours


def params(pipe) -> dict:
  return {(name, *path): np.asarray(v[...]) for name in ("transformer", "text_encoder", "vae")
          for path, v in nnx.to_flat_state(nnx.state(getattr(pipe, name), nnx.Param))}


def test_a_small_random_pipeline_is_a_function_of_its_seed_and_generates():
  a, b, c = (params(random_pipeline(dtype="float32", seed=s, **SMALL)) for s in (3, 3, 4))
  assert sorted(a) == sorted(b) == sorted(c)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  kernels = [k for k in a if k[-1] in ("kernel", "embedding")]  # biases and norms start at 0 and 1 in both
  assert kernels and all(not np.array_equal(a[k], c[k]) for k in kernels)
  video = random_pipeline(dtype="float32", seed=3, **SMALL).generate(["a cat on the beach"], **VIDEO)
  assert video.shape == (1, 5, 32, 32, 3) and np.isfinite(video).all() and video.std() > 0.01


@pytest.mark.slow  # a fresh 8-device process (about 40 s)
def test_sharded_at_creation_on_eight_devices():
  """On 8 simulated devices the weights are created in their fsdp shards and sample the latents one
  device samples."""
  code = f"""
import numpy as np, jax
jax.config.update("jax_default_matmul_precision", "highest")
import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_random_pipeline import SMALL, VIDEO
from flax import nnx
from t2vu_jax.random_pipeline import random_pipeline
from t2vu_jax.sharding import MeshConfig, make_mesh
mesh = make_mesh(MeshConfig(), devices=jax.devices())
sharded = random_pipeline(dtype="float32", mesh=mesh, **SMALL)
kernel = sharded.transformer.blocks.attn1.to_q.kernel[...]
assert len(kernel.sharding.device_set) == 8 and "fsdp" in str(kernel.sharding.spec), kernel.sharding
assert kernel.addressable_shards[0].data.size * 8 == kernel.size
one = random_pipeline(dtype="float32", **SMALL)
for name in ("transformer", "text_encoder"):  # created in shards: the plain construction's values, up to rounding
  for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(getattr(sharded, name))),
                               nnx.to_flat_state(nnx.state(getattr(one, name)))):
    np.testing.assert_allclose(np.asarray(x[...]), np.asarray(y[...]), rtol=1e-6, atol=1e-7, err_msg=str(path))
kw = dict(height=32, width=32, num_frames=5, steps=2, progress=False)
latents = [np.asarray(p.generate_latents(["a red car"], **kw)) for p in (sharded, one)]
err = np.abs(latents[0] - latents[1]).max()
assert err < 1e-5, err
print("ok", err)
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_bad_random_pipeline_requests():
  with pytest.raises(ValueError, match="unknown Wan size '2b'"):
    random_pipeline("2b")
  with pytest.raises(ValueError, match="expects 64-wide text embeddings but the text encoder gives 32"):
    random_pipeline(**{**SMALL, "transformer": WanConfig(text_dim=64, num_layers=1)})
  with pytest.raises(ValueError, match="16 input channels but the VAE's latents have 8"):
    random_pipeline(**{**SMALL, "vae": WanVAEConfig(base_dim=8, z_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                                                    latents_mean=(0.0,) * 8, latents_std=(1.0,) * 8)})
