"""Toy pretraining: it learns, it is a function of the seed, and its output loads as a Wan pipeline."""
import jax
import numpy as np
import pytest
from flax import nnx

from t2vu_jax.pipeline import load_pipeline
from t2vu_jax.toy import pretrain as P

CFG = P.TrainConfig(steps=3, batch=4, warmup=1)


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("frame_noise", [0.0, 1.0])
def test_loss_decreases_on_a_fixed_batch(frame_noise):
  tokenizer = P.build_toy_tokenizer()
  model = P.ToyModel(0)
  opt = P.make_optimizer(model, CFG)  # the same optimizer object as `pretrain`: one compilation
  x0, ids, mask = P.batch(tokenizer, 0, 0, CFG)
  key = jax.random.key(0)  # same noise every step: the loss is a function of the parameters only
  losses = [float(P.train_step(model, opt, x0, ids, mask, key, CFG.sigma_shift, frame_noise)) for _ in range(8)]
  assert losses[-1] < 0.8 * losses[0], losses


def test_frame_noise_gives_each_frame_its_own_noise_level(monkeypatch):
  """With frame_noise = 1 every video's frames are noised to distinct levels, and the DiT gets each
  frame's timestep on that frame's tokens; with 0 one timestep per video, as sampling gives it."""
  tokenizer = P.build_toy_tokenizer()
  model = P.ToyModel(0)
  x0, ids, mask = P.batch(tokenizer, 0, 0, CFG)
  seen = []
  call = type(model.transformer).__call__

  def spy(self, x, t, context, **kw):
    seen.append((np.asarray(x), np.asarray(t)))
    return call(self, x, t, context, **kw)

  monkeypatch.setattr(type(model.transformer), "__call__", spy)
  for frame_noise in (0.0, 1.0):
    P.flow_loss(model, x0, ids, mask, jax.random.key(1), CFG.sigma_shift, frame_noise)
  (_, t_video), (x_t, t_frames) = seen
  assert t_video.shape == (len(x0),)
  tokens = t_frames.reshape(len(x0), x0.shape[2], -1)  # (B, F, tokens of a frame)
  assert (tokens == tokens[..., :1]).all() and (np.ptp(tokens[..., 0], axis=1) > 0).all()
  sigma = tokens[..., 0] / 1000  # x_t = (1 - s) x0 + s e frame by frame: the clean part scales with 1 - s
  e = (x_t - (1 - sigma)[:, None, :, None, None] * x0) / sigma[:, None, :, None, None]
  assert abs(float(e.std()) - 1.0) < 0.05


def test_same_seed_same_parameters_and_saved_pipeline_loads(tmp_path):
  a, tokenizer, losses_a = P.pretrain(0, CFG, log=None)
  b, _, losses_b = P.pretrain(0, CFG, log=None)
  assert losses_a == losses_b and len(losses_a) == CFG.steps
  for x, y in zip(_params(a), _params(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c, _, _ = P.pretrain(1, CFG, log=None)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(_params(a), _params(c)))

  P.save_pipeline(a, tokenizer, tmp_path / "toy")
  pipe = load_pipeline(tmp_path / "toy", progress=False)
  assert pipe.vae is None and pipe.transformer.config == P.TOY_WAN and pipe.text_encoder.config == P.TOY_UMT5
  for x, y in zip(_params(a.transformer), _params(pipe.transformer)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  frames = pipe.generate(["a red square moving left", "a blue circle rising"], height=16, width=16, num_frames=5,
                         steps=2, guidance=4.0, output="float", progress=False)
  assert frames.shape == (2, 5, 16, 16, 3) and 0 <= frames.min() and frames.max() <= 1
  size = sum(f.stat().st_size for f in (tmp_path / "toy").rglob("*") if f.is_file())
  assert size < 10 * 2**20, size

  # The time-reversal diagnostic: still videos are their own reversal (time is the reversed axis).
  from t2vu_jax.toy.direction import reversal_losses
  still = reversal_losses(pipe, n=3, sigmas=(0.5,), motions=("still",))[0.5]
  assert still["cond_true"] == still["cond_reversed"] and still["uncond_true"] == still["uncond_reversed"]
  moving = reversal_losses(pipe, n=3, sigmas=(0.5,))[0.5]
  assert moving["cond_true"] != moving["cond_reversed"] and all(np.isfinite(list(moving.values())))
