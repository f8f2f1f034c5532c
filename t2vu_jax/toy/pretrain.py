"""Pretrain the toy world's text-to-video model and save it as a diffusers Wan pipeline without a VAE.

A tiny Wan-architecture DiT in pixel space (RGB in [-1, 1], patch (1, 2, 2)) learns jointly with a tiny
UMT5-architecture encoder under the rectified-flow loss: x_t = (1 - s) x0 + s e, target e - x0,
t = 1000 s, s logit-normal then shifted toward noise (s -> k s / (1 + (k - 1) s), k = `sigma_shift`:
shape and motion are decided at high noise, colour is learned anyway). Every batch is fresh data from
`world.dataset` with all wordings (held-out ones included); a share of prompts leaves one attribute
unnamed (the form of the erasure anchors, `objective.anchor="prompt"`), and a share is replaced by ""
so that classifier-free guidance works. Prompts are padded to the tokenizer's 16 tokens with zero
embeddings after each prompt, as Wan does at inference, so training sees exactly the context that
`pipeline.generate` gives. Everything is a function of the seed.

  python -m t2vu_jax.toy.pretrain --out DIR --seed 0

The shipped checkpoint `t2vu_jax/toy/pretrained` is `--out t2vu_jax/toy/pretrained` with the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from t2vu_jax import text
from t2vu_jax.schedulers import unipc_flow_config
from t2vu_jax.cli import usage_error
from t2vu_jax.io.atomic import atomic_directory, check_writable
from t2vu_jax.models.umt5 import UMT5Config, UMT5Encoder
from t2vu_jax.models.umt5_params import read_umt5, save_umt5
from t2vu_jax.models.wan import WanConfig, WanTransformer
from t2vu_jax.models.wan_params import DIFFUSERS_VERSION, load_transformer, save_diffusers
from t2vu_jax.toy import world
from t2vu_jax.toy.tokenizer import MAX_PROMPT_TOKENS, TEXT_LENGTH, build_toy_tokenizer

# Patches of 2x2 pixels (320 tokens per video): a 7x7 object spans whole tokens closely enough for the
# localization masks and shape details; a 4-layer, 64-wide DiT keeps that trainable on a CPU.
TOY_WAN = WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=3,
                    out_channels=3, text_dim=64, freq_dim=64, ffn_dim=256, num_layers=4)
TOY_UMT5 = UMT5Config(vocab_size=160, d_model=64, d_kv=32, d_ff=128, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
FLOW_SHIFT = 1.0
EVAL_SEED = 2**31 - 1  # scenes and noise far from the training batches (`batch_seed`)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 5000
  batch: int = 32
  lr: float = 2e-3
  warmup: int = 100
  weight_decay: float = 0.01
  text_dropout: float = 0.1
  omit_attribute: float = 0.2  # prompts that leave one attribute unnamed (`world.dataset` omit)
  sigma_shift: float = 3.0
  frame_noise: float = 0.0  # share of videos whose frames get independent noise levels (per-token timesteps)


class ToyModel(nnx.Module):
  """The DiT and its text encoder, trained together."""

  def __init__(self, seed: int, wan: WanConfig = TOY_WAN, umt5: UMT5Config = TOY_UMT5):
    rngs = nnx.Rngs(seed)
    self.transformer = WanTransformer(wan, dtype=jnp.float32, rngs=rngs)
    self.text_encoder = UMT5Encoder(umt5, dtype=jnp.float32, rngs=rngs)

  def embed(self, ids, mask):
    """(B, L, d) embeddings, zero after each prompt's tokens (Wan's convention)."""
    return jnp.where(mask[..., None].astype(bool), self.text_encoder(ids, mask), 0.0)


def flow_loss(model: ToyModel, x0, ids, mask, key, sigma_shift: float, frame_noise: float = 0.0):
  """Rectified-flow velocity loss of a batch (x0 (B, 3, F, H, W) in [-1, 1]).

  With `frame_noise` > 0 that share of the videos draws one noise level per frame (diffusion forcing):
  a frame is then denoised from less noisy neighbours, which only the prompt's motion and the clock say
  how to follow. The timesteps go to the DiT per token, which every Wan DiT takes; sampling keeps one."""
  k_s, k_e = jax.random.split(key)
  b, _, f, h, w = x0.shape
  if frame_noise:
    k_s, k_f = jax.random.split(k_s)
    u = jax.nn.sigmoid(jax.random.normal(k_s, (b, f)))
    u = jnp.where((jax.random.uniform(k_f, (b,)) < frame_noise)[:, None], u, u[:, :1])
  else:
    u = jax.nn.sigmoid(jax.random.normal(k_s, (b, 1)))
  s = sigma_shift * u / (1 + (sigma_shift - 1) * u)  # (B, F) or (B, 1)
  e = jax.random.normal(k_e, x0.shape)
  sb = s[:, None, :, None, None]
  xt = (1 - sb) * x0 + sb * e
  if frame_noise:
    _, ph, pw = model.transformer.config.patch_size
    t = jnp.repeat(1000.0 * s, (h // ph) * (w // pw), axis=1)  # (B, tokens), tokens in (frame, row, column) order
  else:
    t = 1000.0 * s[:, 0]
  v = model.transformer(xt, t, model.embed(ids, mask))
  return jnp.mean((v - (e - x0)) ** 2)


@nnx.jit(static_argnums=(6, 7))
def train_step(model: ToyModel, opt: nnx.Optimizer, x0, ids, mask, key, sigma_shift: float,
               frame_noise: float = 0.0):
  loss, grads = nnx.value_and_grad(flow_loss)(model, x0, ids, mask, key, sigma_shift, frame_noise)
  opt.update(model, grads)
  return loss


@functools.lru_cache
def _transform(cfg: TrainConfig) -> optax.GradientTransformation:
  """One object per config, so that jitted steps of equal configs share their compilation."""
  lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1), cfg.lr * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=cfg.weight_decay))


def make_optimizer(model: ToyModel, cfg: TrainConfig) -> nnx.Optimizer:
  return nnx.Optimizer(model, _transform(cfg), wrt=nnx.Param)


def batch_seed(seed: int, step: int) -> int:
  """The scene seed of training step `step` of the run seeded `seed`."""
  return seed * 1_000_003 + step


def batch(tokenizer, seed: int, step: int, cfg: TrainConfig):
  """(x0 (B, 3, F, H, W), ids, mask) of training step `step`: fresh scenes, some prompts dropped."""
  videos, prompts, _ = world.dataset(batch_seed(seed, step), cfg.batch, omit=cfg.omit_attribute)
  drop = np.random.default_rng([seed, step]).random(cfg.batch) < cfg.text_dropout
  prompts = ["" if d else p for p, d in zip(prompts, drop)]
  ids, mask = text.tokenize(tokenizer, prompts, TEXT_LENGTH)
  return np.transpose(videos, (0, 4, 1, 2, 3)), ids, mask


def load_model(path: str) -> ToyModel:
  """A `ToyModel` holding the weights of a saved toy pipeline (to continue its training)."""
  model = ToyModel(0)
  model.transformer = load_transformer(os.path.join(path, "transformer"), "float32", progress=False)
  model.text_encoder = read_umt5(path, jnp.float32, progress=False)
  return model


def pretrain(seed: int = 0, cfg: TrainConfig = TrainConfig(), log_every: int = 100, log=print,
             model: ToyModel | None = None):
  """Train from `seed` (or continue `model` on the batches of `seed`); returns (model, tokenizer, losses)."""
  tokenizer = build_toy_tokenizer()
  assert TEXT_LENGTH >= MAX_PROMPT_TOKENS and len(tokenizer) <= TOY_UMT5.vocab_size
  model = ToyModel(seed) if model is None else model
  opt = make_optimizer(model, cfg)
  key = jax.random.key(seed)
  losses, start = [], time.time()
  for step in range(cfg.steps):
    x0, ids, mask = batch(tokenizer, seed, step, cfg)
    loss = train_step(model, opt, x0, ids, mask, jax.random.fold_in(key, step), cfg.sigma_shift,
                      cfg.frame_noise)
    losses.append(float(loss))
    if log and (step + 1) % log_every == 0:
      log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - start:.0f} s)")
  return model, tokenizer, losses


def save_pipeline(model: ToyModel, tokenizer, out: str, flow_shift: float = FLOW_SHIFT,
                  overwrite: bool = False) -> None:
  """Write a diffusers `WanPipeline` directory with `vae: [null, null]` through our exporters."""
  with atomic_directory(out, overwrite) as tmp:
    save_diffusers(model.transformer, os.path.join(tmp, "transformer"), dtype="float32", progress=False)
    save_umt5(model.text_encoder, os.path.join(tmp, "text_encoder"), dtype="float32")
    tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    os.makedirs(os.path.join(tmp, "scheduler"))
    scheduler = unipc_flow_config(flow_shift, DIFFUSERS_VERSION)
    index = {"_class_name": "WanPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "transformer": ["diffusers", "WanTransformer3DModel"],
             "vae": [None, None], "transformer_2": [None, None], "boundary_ratio": None, "expand_timesteps": False}
    for path, obj in ((("scheduler", "scheduler_config.json"), scheduler), (("model_index.json",), index)):
      with open(os.path.join(tmp, *path), "w") as f:
        json.dump(obj, f, indent=2)


def evaluate(pipe, seed: int = EVAL_SEED, n: int = 100, steps: int = 25, guidance: float = 4.0,
             shift: float | None = None, batch_size: int = 50) -> dict[str, float]:
  """Accuracy of the exact classifier on `n` fresh scene prompts: of each kind (the pattern's over every
  scene, "none" where the background is plain), and "both elements": the object's three attributes and
  the pattern all right, over the two-element scenes."""
  from t2vu_jax.toy.classifier import classify_batch
  _, prompts, scenes = world.dataset(seed, n)
  hits = {k: 0 for k in world.KINDS}
  both = []
  for start in range(0, n, batch_size):
    frames = pipe.generate(prompts[start:start + batch_size], height=world.SIZE, width=world.SIZE,
                           num_frames=world.FRAMES, steps=steps, guidance=guidance, shift=shift,
                           seed=seed + start, output="float", progress=False)
    for reading, scene in zip(classify_batch(frames, value_range=(0, 1)), scenes[start:start + batch_size]):
      right = reading.matches(scene)
      for k, ok in right.items():
        hits[k] += ok
      if scene.pattern:
        both.append(all(right.values()))
  return {**{k: v / n for k, v in hits.items()}, "both elements": float(np.mean(both)) if both else float("nan")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="pipeline directory to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=TrainConfig.steps)
  p.add_argument("--batch", type=int, default=TrainConfig.batch)
  p.add_argument("--lr", type=float, default=TrainConfig.lr)
  p.add_argument("--warmup", type=int, default=TrainConfig.warmup)
  p.add_argument("--frame-noise", type=float, default=TrainConfig.frame_noise,
                 help="share of videos with one noise level per frame")
  p.add_argument("--init", help="continue training the weights of this saved toy pipeline")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--eval", type=int, default=100, help="videos to score after training (0: none)")
  p.add_argument("--eval-steps", type=int, default=25)
  p.add_argument("--guidance", type=float, default=4.0)
  args = p.parse_args(argv)
  cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, frame_noise=args.frame_noise)
  try:
    check_writable(args.out, args.overwrite)  # before an hour of training, not after
  except FileExistsError as e:
    usage_error(f"--out: {e}")
  start = time.time()
  model, tokenizer, _ = pretrain(args.seed, cfg, model=load_model(args.init) if args.init else None)
  print(f"pretraining: {time.time() - start:.0f} s")
  save_pipeline(model, tokenizer, args.out, overwrite=args.overwrite)
  if args.eval:
    from t2vu_jax.pipeline import load_pipeline
    start = time.time()
    acc = evaluate(load_pipeline(args.out, progress=False), n=args.eval, steps=args.eval_steps,
                   guidance=args.guidance)
    print(f"accuracy {json.dumps(acc)} ({args.eval} videos, {args.eval_steps} steps, guidance {args.guidance}, "
          f"{time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()
