"""Toy pretraining: it learns, it is a function of the seed, and its output loads as a Wan pipeline."""
import jax
import numpy as np
from flax import nnx

from t2vu_jax.pipeline import load_pipeline
from t2vu_jax.toy import pretrain as P

CFG = P.TrainConfig(steps=3, batch=4, warmup=1)


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_loss_decreases_on_a_fixed_batch():
  tokenizer = P.build_toy_tokenizer()
  model = P.ToyModel(0)
  opt = P.make_optimizer(model, CFG)  # the same optimizer object as `pretrain`: one compilation
  x0, ids, mask = P.batch(tokenizer, 0, 0, CFG)
  key = jax.random.key(0)  # same noise every step: the loss is a function of the parameters only
  losses = [float(P.train_step(model, opt, x0, ids, mask, key, CFG.sigma_shift)) for _ in range(8)]
  assert losses[-1] < 0.8 * losses[0], losses


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
