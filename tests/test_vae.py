"""Wan VAE parity with diffusers' AutoencoderKLWan (fp32), through our converter."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

from builders import VAE_TINY, VAE_WAN22_TINY, build_wan_pipeline, perturb_
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models.vae_params import key_table, read_vae
from t2vu_jax.models.vae import WanVAE, WanVAEConfig, denormalize_latents

# A second architecture: separate decoder width, three stages, num_res_blocks=2 (three per decoder stage),
# temporal resampling only in the outer stage (so the decoder upsamples time after space), 8 latent
# channels with their own statistics.
VAE_WIDE = dict(base_dim=4, decoder_base_dim=6, z_dim=8, dim_mult=[1, 2, 3], num_res_blocks=2,
                temperal_downsample=[True, False], latents_mean=[0.3, -1.2, 0.05, 2.0, -0.4, 0.9, -2.5, 1.1],
                latents_std=[1.7, 0.6, 2.9, 1.2, 0.35, 3.1, 1.05, 2.2], scale_factor_temporal=2,
                scale_factor_spatial=4)
CONFIGS = {"tiny": VAE_TINY, "wide": VAE_WIDE, "wan22": VAE_WAN22_TINY}
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOLERANCE = 1e-4

decode_jit = nnx.jit(lambda model, z: model.decode(z))
encode_jit = nnx.jit(lambda model, x: model.encode(x))


def build_vae(config, seed=0):
  from diffusers import AutoencoderKLWan
  torch.manual_seed(seed)
  return perturb_(AutoencoderKLWan(**config), seed + 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (diffusers model, ours read from its save); "wide" is sharded, "tiny" sits in a pipeline's vae/."""
  out = {}
  for name, config in CONFIGS.items():
    reference = build_vae(config)
    root = tmp_path_factory.mktemp(name)
    if name == "wide":
      reference.save_pretrained(root, max_shard_size="40KB")
      assert (root / f"{WEIGHTS}.index.json").exists()
    else:
      reference.save_pretrained(root / "vae")
    out[name] = reference, read_vae(root, progress=False)
  return out


def latents(cfg, frames):
  return torch.randn(2, cfg.z_dim, frames, 3, 5, generator=torch.Generator().manual_seed(frames))


def max_error(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_matches_diffusers(name, models):
  reference, model = models[name]
  cfg = model.config
  for frames in (1, 4):
    z = latents(cfg, frames)
    with torch.no_grad():
      expected = reference.decode(z).sample.numpy()
    got = decode_jit(model, z.numpy())
    s = cfg.spatial_compression
    assert got.shape == (2, 3, 1 + cfg.temporal_compression * (frames - 1), 3 * s, 5 * s)
    assert np.mean(np.abs(expected) < 1) > 0.9  # the clip to [-1, 1] hides little
    err = max_error(got, expected)
    print(f"{name}: {frames} latent frame(s) -> {got.shape[2]} frames, max abs error {err:.2e}")
    assert err <= TOLERANCE, (name, frames, err)


def test_jitted_decode_equals_eager(models):
  model = models["tiny"][1]
  z = latents(model.config, 4).numpy()
  err = max_error(decode_jit(model, z), model.decode(z))
  print(f"jit vs eager: max abs difference {err:.2e}")
  assert err <= 5e-6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_matches_diffusers(name, models):
  reference, model = models[name]
  s = model.config.spatial_compression
  video = torch.rand(1, 3, 9, 3 * s, 5 * s, generator=torch.Generator().manual_seed(0)) * 2 - 1
  with torch.no_grad():
    posterior = reference.encode(video).latent_dist
  mean, logvar = encode_jit(model, video.numpy())
  err = max(max_error(mean, posterior.mean), max_error(logvar, posterior.logvar))
  print(f"{name}: encode 9 frames -> {mean.shape[2]} latent frames, max abs error {err:.2e}")
  assert err <= TOLERANCE, (name, err)
  with pytest.raises(ValueError, match="8 frames; the Wan VAE encodes 1 \\+ 4k frames"):
    model.encode(video.numpy()[:, :, :8])


def test_denormalize_latents_matches_wan_pipeline():
  """The latents the pipeline hands to `vae.decode`, from the latents its denoising loop produced."""
  pipe = build_wan_pipeline(scheduler="euler")
  pipe.set_progress_bar_config(disable=True)
  call = dict(prompt="a cat", height=32, width=48, num_frames=5, num_inference_steps=1, max_sequence_length=16)
  latents = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="latent").frames
  seen = []
  decode = pipe.vae.decode
  pipe.vae.decode = lambda z, **kw: seen.append(z.clone()) or decode(z, **kw)
  pipe(**call, generator=torch.Generator().manual_seed(0), output_type="np")
  cfg = WanVAEConfig.from_dict(dict(pipe.vae.config))
  expected = seen[0].numpy()
  got = np.asarray(denormalize_latents(latents.numpy(), cfg))
  # XLA's fp32 division on CPU may differ from IEEE division in the last bit.
  np.testing.assert_allclose(got, expected, rtol=0, atol=2 * np.finfo(np.float32).eps * np.abs(expected).max())
  assert np.abs(expected - latents.numpy()).max() > 1  # the statistics are not a no-op here


def test_config_round_trip_and_refusals():
  from diffusers import AutoencoderKLWan
  with torch.device("meta"):
    config = dict(AutoencoderKLWan(**VAE_WIDE).config)
  cfg = WanVAEConfig.from_dict(config)
  assert cfg.decoder_base_dim == 6 and cfg.temperal_downsample == (True, False)
  assert {k: v for k, v in config.items() if not k.startswith("_")} == cfg.to_dict()
  refusals = {"in_channels": (12, "in_channels=12 does not fit RGB video in 1x1 patches: it must be 3"),
              "patch_size": (0, "patch_size must be a positive integer or null"),
              "attn_scales": ([0.5], "attn_scales=\\[0.5\\] is not supported"),
              "latents_std": ([1.0] * 7, "latents_std has 7 entries, expected z_dim = 8"),
              "temperal_downsample": ([True], "temperal_downsample has 1 entries.*len\\(dim_mult\\) - 1 = 2"),
              "clip_output": (True, "does not know: clip_output")}
  for field, (value, message) in refusals.items():
    with pytest.raises(ValueError, match=message):
      WanVAEConfig.from_dict(dict(config, **{field: value}))


# The Wan2.2 VAE of TI2V-5B as diffusers configures it (latent statistics aside).
WAN22_FULL = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2, in_channels=12,
                  out_channels=12, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)


@pytest.mark.parametrize("config, latent, video_shape", [
    ({}, (1, 16, 21, 60, 104), (1, 3, 81, 480, 832)),          # Wan2.1: 81 frames at 480x832
    (WAN22_FULL, (1, 48, 31, 44, 80), (1, 3, 121, 704, 1280)),  # Wan2.2 TI2V-5B: 121 frames at 704x1280
], ids=["wan21", "wan22"])
def test_full_size_key_table_matches_diffusers(config, latent, video_shape):
  from diffusers import AutoencoderKLWan
  with torch.device("meta"):
    reference = {k: tuple(v.shape) for k, v in AutoencoderKLWan(**config).state_dict().items()}
  model = nnx.eval_shape(lambda: WanVAE(WanVAEConfig.from_dict(config), rngs=nnx.Rngs(0)))
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  ours = {p.torch_key: p.torch_shape(params[p.path].shape) for p in key_table(model)}
  assert ours == reference

  # Traced at full size without computing: video <-> latents.
  graphdef, state = nnx.split(model)
  latent = jax.ShapeDtypeStruct(latent, jnp.float32)
  video = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode(z), state, latent)
  assert video.shape == video_shape
  mean, logvar = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s).encode(v), state, video)
  assert mean.shape == logvar.shape == latent.shape


def test_bad_vae_checkpoints(tmp_path):
  with pytest.raises(CheckpointError, match="VAE directory does not exist: .*nowhere"):
    read_vae(tmp_path / "nowhere")
  build_vae(VAE_TINY).save_pretrained(tmp_path)
  tensors = safetensors.torch.load_file(str(tmp_path / WEIGHTS))
  config = json.loads((tmp_path / "config.json").read_text())

  (tmp_path / "config.json").write_text(json.dumps(dict(config, attn_scales=[1.0])))
  with pytest.raises(CheckpointError, match=r"config.json: config attn_scales=\[1.0\] is not supported"):
    read_vae(tmp_path, progress=False)
  (tmp_path / "config.json").write_text(json.dumps(dict(config, base_dim=4)))
  with pytest.raises(CheckpointError,
                     match=r"base_dim 4.*tensor\(s\) with the wrong shape: .*"
                           r"decoder.conv_in.weight has shape \(3, 16, 3, 3, 3\), expected \(4, 16, 3, 3, 3\)"):
    read_vae(tmp_path, progress=False)
  (tmp_path / "config.json").write_text(json.dumps(config))

  key = "decoder.up_blocks.1.upsamplers.0.time_conv.weight"
  safetensors.torch.save_file({k: v for k, v in tensors.items() if k != key}, str(tmp_path / WEIGHTS))
  with pytest.raises(CheckpointError, match=rf"1 missing tensor\(s\): {key}"):
    read_vae(tmp_path, progress=False)
  safetensors.torch.save_file(dict(tensors, **{"decoder.head.0.gamma": tensors["decoder.norm_out.gamma"].clone()}),
                              str(tmp_path / WEIGHTS))
  with pytest.raises(CheckpointError, match=r"1 unexpected tensor\(s\): decoder.head.0.gamma"):
    read_vae(tmp_path, progress=False)
  poisoned = dict(tensors)
  poisoned["decoder.mid_block.attentions.0.norm.gamma"] = torch.full_like(poisoned["decoder.norm_out.gamma"][:, :, 0],
                                                                          float("nan"))
  safetensors.torch.save_file(poisoned, str(tmp_path / WEIGHTS))
  with pytest.raises(CheckpointError, match=r"NaN or Inf: decoder.mid_block.attentions.0.norm.gamma"):
    read_vae(tmp_path, progress=False)

  (tmp_path / "config.json").unlink()
  with pytest.raises(CheckpointError, match="VAE: no config.json in"):
    read_vae(tmp_path)


def test_chunked_decode(models):
  """Any number of latent frames per decode step gives the same video (up to fp32 rounding: XLA's
  1x1-conv GEMM blocks by the number of positions, so rounding depends on the frames per call), and
  with one frame per step the working memory beyond the output does not grow with the video."""
  model = models["wide"][1]
  z = latents(model.config, 8).numpy()
  decode = nnx.jit(lambda m, z, chunk: m.decode(z, chunk), static_argnums=2)
  one = np.asarray(decode(model, z, 1))
  for chunk in (2, 3, 7):  # 3 leaves a shorter last chunk; 7 is the whole video after the first frame
    err = max_error(decode(model, z, chunk), one)
    print(f"chunk {chunk} vs 1: max abs difference {err:.2e}")
    assert err <= 2e-5, (chunk, err)

  def working_memory(frames, chunk):
    z = jax.ShapeDtypeStruct((1, model.config.z_dim, frames, 8, 8), jnp.float32)
    graphdef, state = nnx.split(model)
    compiled = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z, chunk)).lower(state, z).compile()
    memory = compiled.memory_analysis()
    return memory.temp_size_in_bytes - memory.output_size_in_bytes

  short, long = working_memory(3, 1), working_memory(17, 1)
  whole = working_memory(17, 16)
  print(f"working memory: 3 frames {short / 1e6:.1f} MB, 17 frames {long / 1e6:.1f} MB, "
        f"17 frames in one chunk {whole / 1e6:.1f} MB")
  assert long <= 1.15 * short
  assert whole >= 2 * short  # the measurement sees a decode whose memory does grow
  with pytest.raises(ValueError, match="decode chunk"):
    model.decode(z, 0)
