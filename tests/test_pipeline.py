"""End to end: our pipeline vs diffusers' WanPipeline on the same tiny random weights and noise."""
import dataclasses
import json
import shutil
import types

import numpy as np
import pytest
import torch

from builders import UMT5_TINY, build_umt5
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax import generate
from t2vu_jax.pipeline import load_pipeline

HEIGHT, WIDTH, FRAMES = 32, 48, 5  # latents (16, 2, 4, 6)


def noise(batch=1, seed=0):
  return torch.randn((batch, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8),
                     generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheduler,shift,guidance", [("unipc", 3.0, 5.0), ("euler", 5.0, 5.0), ("unipc", 3.0, 1.0)])
def test_generate_matches_diffusers(wan_pipeline_dir, scheduler, shift, guidance):
  """guidance 1 runs only the conditional pass in both."""
  reference, path = wan_pipeline_dir(scheduler, shift)
  prompts, negative = ["a naked woman walking in the park", "a red car"], "blurry"
  latents = noise(batch=2)
  with torch.no_grad():
    expected = reference(prompts, negative, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4,
                         guidance_scale=guidance, latents=latents.clone(), output_type="np",
                         max_sequence_length=512).frames
  pipe = load_pipeline(path, "float32", progress=False)
  got = pipe.generate(prompts, negative, HEIGHT, WIDTH, FRAMES, steps=4, guidance=guidance,
                      latents=latents.numpy(), output="float", progress=False)
  assert got.shape == expected.shape == (2, FRAMES, HEIGHT, WIDTH, 3)
  err = np.abs(got - expected).max()
  print(f"{scheduler}, guidance {guidance}: max abs error on float frames {err:.2e}")
  assert err <= 1e-3, err
  as_uint8 = pipe.generate(prompts, negative, HEIGHT, WIDTH, FRAMES, steps=4, guidance=guidance,
                           latents=latents.numpy(), progress=False)
  assert as_uint8.dtype == np.uint8 and np.abs(as_uint8 / 255.0 - got).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("scheduler,guidance_2", [("unipc", 2.5), pytest.param("euler", None, marks=pytest.mark.slow)])
def test_two_expert_wan22_pipeline_matches_diffusers(wan_pipeline_dir, scheduler, guidance_2):
  """Wan2.2 A14B: transformer (high noise) above boundary_ratio x 1000, transformer_2 below, each with
  its own guidance (guidance_scale_2 defaults to guidance_scale)."""
  reference, path = wan_pipeline_dir(scheduler, 3.0, boundary_ratio=0.6, name="a14b")
  assert json.loads((path / "model_index.json").read_text())["boundary_ratio"] == 0.6
  prompts, negative, latents = ["a red car", "a person walking"], "blurry", noise(batch=2)
  with torch.no_grad():
    expected = reference(prompts, negative, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=5,
                         guidance_scale=5.0, guidance_scale_2=guidance_2, latents=latents.clone(), output_type="np",
                         max_sequence_length=512).frames
  pipe = load_pipeline(path, "float32", progress=False)
  assert pipe.transformer_2 is not None and pipe.boundary == 600.0
  sched = pipe.scheduler(5)
  assert 0 < int((sched.timesteps >= 600).sum()) < 5  # both experts sample some of the steps
  got = pipe.generate(prompts, negative, HEIGHT, WIDTH, FRAMES, steps=5, guidance=5.0, guidance_2=guidance_2,
                      latents=latents.numpy(), output="float", progress=False)
  err = np.abs(got - expected).max()
  print(f"two experts, {scheduler}: max abs error on float frames {err:.2e}")
  assert err <= 1e-3, err
  # The second expert really samples: without it the video differs.
  one = dataclasses.replace(pipe, transformer_2=None)
  alone = one.generate(prompts, negative, HEIGHT, WIDTH, FRAMES, steps=5, guidance=5.0, latents=latents.numpy(),
                       output="float", progress=False)
  assert np.abs(alone - got).max() > 1e-2


def test_ti2v_pipeline_text_to_video_matches_diffusers(wan_pipeline_dir):
  """Wan2.2 TI2V-5B's layout: the Wan2.2 VAE (residual blocks, 2x2 patches) and `expand_timesteps`, whose
  per-token timesteps are all the step's in text to video."""
  reference, path = wan_pipeline_dir(name="ti2v", ti2v=True)
  assert json.loads((path / "model_index.json").read_text())["expand_timesteps"] is True
  pipe = load_pipeline(path, "float32", progress=False)
  shape = pipe.latent_shape(1, HEIGHT, WIDTH, FRAMES)
  assert shape == (1, 8, (FRAMES - 1) // 2 + 1, HEIGHT // 8, WIDTH // 8)  # the tiny Wan2.2 VAE: 2x time, 8x space
  latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    expected = reference("a red car", "blurry", height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4,
                         guidance_scale=5.0, latents=latents.clone(), output_type="np", max_sequence_length=512).frames
  got = pipe.generate("a red car", "blurry", HEIGHT, WIDTH, FRAMES, steps=4, guidance=5.0, latents=latents.numpy(),
                      output="float", progress=False)
  err = np.abs(got - expected).max()
  print(f"TI2V layout: max abs error on float frames {err:.2e}")
  assert got.shape == expected.shape and err <= 1e-4, err
  # TI2V-5B's VAE has 16x latents, split into the DiT's 2x2 patches: sizes go in steps of 32.
  stride_16 = dataclasses.replace(pipe, vae=types.SimpleNamespace(config=dataclasses.replace(pipe.vae.config,
                                                                                          scale_factor_spatial=16)))
  with pytest.raises(ValueError, match="multiples of 32 for this pipeline, got 32x48"):
    stride_16.generate("a red car", height=32, width=48, num_frames=FRAMES, progress=False)


def test_bad_two_expert_pipelines_are_refused(wan_pipeline_dir):
  _, path = wan_pipeline_dir(boundary_ratio=0.5, name="a14b")
  index = path / "model_index.json"
  meta = json.loads(index.read_text())
  for change, message in (({"boundary_ratio": None}, "transformer_2 needs a boundary_ratio"),
                          ({"boundary_ratio": 1.5}, r"boundary_ratio must be a number in \(0, 1\)"),
                          ({"transformer_2": [None, None]}, "boundary_ratio 0.5 is set but there is no transformer_2")):
    index.write_text(json.dumps({**meta, **change}))
    with pytest.raises(CheckpointError, match=message):
      load_pipeline(path, progress=False)
  index.write_text(json.dumps(meta))
  shutil.rmtree(path / "transformer_2")
  with pytest.raises(CheckpointError, match="missing pipeline subfolder.*transformer_2"):
    load_pipeline(path, progress=False)


def test_seeded_noise_is_reproducible(wan_pipeline_dir):
  _, path = wan_pipeline_dir()
  pipe = load_pipeline(path, "float32", progress=False)
  kw = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, steps=2, progress=False, output="float")
  first, again = pipe.generate("a cat", seed=1, **kw), pipe.generate("a cat", seed=1, **kw)
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - pipe.generate("a cat", seed=2, **kw)).max() > 1e-3


def test_bfloat16_generation_stays_close_to_float32(wan_pipeline_dir):
  import t2vu_jax
  _, path = wan_pipeline_dir()
  kw = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, steps=3, seed=3, progress=False, output="float")
  full = t2vu_jax.load_pipeline(path, "float32", progress=False).generate("a red car", **kw)
  half = t2vu_jax.load_pipeline(path, "bfloat16", progress=False).generate("a red car", **kw)
  assert half.dtype == np.float32 and np.isfinite(half).all()
  assert np.abs(half - full).mean() < 0.02, np.abs(half - full).mean()


def test_bad_generation_inputs(wan_pipeline_dir, tmp_path):
  _, path = wan_pipeline_dir()
  pipe = load_pipeline(path, "float32", progress=False)
  kw = dict(steps=1, progress=False)
  with pytest.raises(ValueError, match="multiples of 16"):
    pipe.generate("a cat", height=40, width=WIDTH, num_frames=FRAMES, **kw)
  with pytest.raises(ValueError, match="4k\\+1"):
    pipe.generate("a cat", height=HEIGHT, width=WIDTH, num_frames=4, **kw)
  with pytest.raises(ValueError, match="at least one prompt"):
    pipe.generate([], height=HEIGHT, width=WIDTH, num_frames=FRAMES, **kw)
  with pytest.raises(ValueError, match="initial latents have shape"):
    pipe.generate("a cat", height=HEIGHT, width=WIDTH, num_frames=FRAMES, latents=np.zeros((1, 16, 1, 4, 6)), **kw)

  broken = tmp_path / "broken"
  shutil.copytree(path, broken)
  shutil.rmtree(broken / "vae")
  with pytest.raises(CheckpointError, match="missing pipeline subfolder.*vae"):
    load_pipeline(broken)
  with pytest.raises(CheckpointError, match="no model_index.json"):
    load_pipeline(tmp_path)

  big_vocab = tmp_path / "big_vocab"
  shutil.copytree(path, big_vocab)
  shutil.rmtree(big_vocab / "text_encoder")
  build_umt5(dict(UMT5_TINY, vocab_size=30)).save_pretrained(big_vocab / "text_encoder")
  with pytest.raises(ValueError, match="tokenizer has .* tokens but the text encoder's embedding table has only 30"):
    load_pipeline(big_vocab, progress=False)

  index = json.loads((path / "model_index.json").read_text())
  (broken / "model_index.json").write_text(json.dumps(dict(index, _class_name="WanImageToVideoPipeline")))
  with pytest.raises(CheckpointError, match="WanImageToVideoPipeline"):
    load_pipeline(broken)


def test_generate_cli_writes_a_playable_video(wan_pipeline_dir, tmp_path):
  import imageio.v3 as iio
  _, path = wan_pipeline_dir()
  latents = noise().numpy()
  np.save(tmp_path / "noise.npy", latents)
  args = ["--model", str(path), "--prompt", "a dog running on the beach", "--frames", str(FRAMES),
          "--height", str(HEIGHT), "--width", str(WIDTH), "--steps", "2", "--dtype", "float32",
          "--latents", str(tmp_path / "noise.npy"), "--save-array", str(tmp_path / "frames.npy")]
  assert generate.main(args + ["--out", str(tmp_path / "dog.mp4")]) == 0
  video = read_mp4(tmp_path / "dog.mp4")
  assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
  frames = np.load(tmp_path / "frames.npy")
  assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
  # Same noise, same frames; the mp4 is lossy, so only close.
  assert np.abs(video.astype(float) - frames).mean() < 20
  assert generate.main(args + ["--out", str(tmp_path / "dog.gif")]) == 0
  assert iio.imread(tmp_path / "dog.gif").shape[0] == FRAMES

  assert generate.main(args + ["--out", str(tmp_path / "dog.avi")]) == 2
  assert generate.main(args[:4] + ["--frames", "6", "--out", str(tmp_path / "x.mp4")]) == 2
  assert generate.main(args + ["--guidance-2", "3", "--out", str(tmp_path / "x.mp4")]) == 2  # one transformer
  assert not (tmp_path / "x.mp4").exists()

  # A two-expert pipeline takes --guidance-2: the CLI's frames are the Python API's.
  _, a14b = wan_pipeline_dir(boundary_ratio=0.6, name="a14b")
  two = ["--model", str(a14b)] + args[2:-1] + [str(tmp_path / "two.npy"), "--guidance-2", "2.5"]
  assert generate.main(two + ["--out", str(tmp_path / "two.mp4")]) == 0
  expected = load_pipeline(a14b, "float32", progress=False).generate(
      "a dog running on the beach", "", HEIGHT, WIDTH, FRAMES, steps=2, latents=latents, progress=False,
      guidance_2=2.5)[0]
  np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), expected)


def read_mp4(path):
  """Decode every frame with ffmpeg (uint8, (F, H, W, 3))."""
  import imageio_ffmpeg
  reader = imageio_ffmpeg.read_frames(str(path))
  meta = next(reader)
  w, h = meta["size"]
  return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def test_pipeline_without_vae_samples_pixels(tmp_path):
  """The toy world's layout: model_index declares no VAE, the transformer works on RGB frames."""
  from diffusers import UniPCMultistepScheduler, WanPipeline
  from builders import PIPELINE_TRANSFORMER, build_diffusers_transformer, build_tokenizer
  pipe = WanPipeline(tokenizer=build_tokenizer(), text_encoder=build_umt5(seed=1),
                     transformer=build_diffusers_transformer(dict(PIPELINE_TRANSFORMER, in_channels=3, out_channels=3)),
                     vae=None, scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction",
                                                                 use_flow_sigmas=True, flow_shift=3.0))
  pipe.save_pretrained(tmp_path / "pixels")
  assert not (tmp_path / "pixels" / "vae").exists()
  ours = load_pipeline(tmp_path / "pixels", progress=False)
  assert ours.vae is None and ours.latent_shape(2, 16, 32, 5) == (2, 3, 5, 16, 32)
  frames = ours.generate(["a cat", "a dog"], height=16, width=32, num_frames=5, steps=2, output="float", progress=False)
  assert frames.shape == (2, 5, 16, 32, 3) and 0 <= frames.min() and frames.max() <= 1
  latents = ours.generate_latents(["a cat", "a dog"], height=16, width=32, num_frames=5, steps=2, progress=False)
  np.testing.assert_allclose(frames, np.clip(np.transpose(np.asarray(latents), (0, 2, 3, 4, 1)) / 2 + 0.5, 0, 1),
                             atol=1e-6)
