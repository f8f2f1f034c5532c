"""Does a toy model know which way time runs? Its velocity loss on true videos and on the same videos
with the object's track played backwards, under the true prompt.

The reversed video keeps the background's clock running forward and moves the object the opposite way
("left" becomes "right", ending where the true one starts), so it is a video of the world too; a model
that follows the direction in the prompt denoises the true video better than the reversed one, while
the unconditional model scores both alike (both are equally likely without a prompt). Videos with the
same noise at each σ:

  python -m t2vu_jax.toy.direction --model t2vu_jax/toy/pretrained
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.toy import metrics, world

SIGMAS = (0.95, 0.9, 0.8, 0.6, 0.4, 0.2)
OPPOSITE = {m: next(o for o, (ox, oy) in world.MOTIONS.items() if (ox, oy) == (-dx, -dy))
            for m, (dx, dy) in world.MOTIONS.items()}  # "still" is its own opposite


def reversed_track(scene: world.Scene, frames: int = world.FRAMES) -> world.Scene:
  """The scene whose object runs the same track backwards: the opposite motion from the last corner."""
  x, y = scene.corners(frames)[-1]
  return dataclasses.replace(scene, motion=OPPOSITE[scene.motion], x0=int(x), y0=int(y))


@nnx.jit
def _velocity(model, x, t, context):
  return model(x, t, context)


def reversal_losses(pipe, n: int = 96, sigmas=SIGMAS, seed: int = 0, motions=("left", "right", "up", "down")
                    ) -> dict[float, dict[str, float]]:
  """σ -> mean squared velocity error of the conditional ("cond") and unconditional ("uncond") model on
  `n` fresh videos ("true") and on them played backwards ("reversed")."""
  if n < 1 or not set(motions) <= set(world.MOTIONS) or not motions:
    raise ValueError(f"need n >= 1 and motions among {list(world.MOTIONS)}, got n={n}, motions={motions}")
  rng = np.random.default_rng(seed)
  scenes = []
  while len(scenes) < n:
    scenes += [s for s in world.sample_scenes(rng, 4 * n) if s.motion in motions]
  scenes = scenes[:n]
  prompts = [world.prompt(s, rng).text for s in scenes]
  to_model = lambda videos: np.stack(videos).transpose(0, 4, 1, 2, 3)  # noqa: E731  (n, 3, F, H, W)
  clips = {"true": to_model([world.render(s) for s in scenes]),
           "reversed": to_model([world.render(reversed_track(s)) for s in scenes])}
  contexts = {"cond": pipe.encode(prompts), "uncond": pipe.encode([""] * n)}
  out = {}
  for i, sigma in enumerate(sigmas):
    noise = np.random.default_rng([seed, i]).standard_normal(clips["true"].shape).astype(np.float32)
    t = jnp.full((n,), 1000.0 * sigma, jnp.float32)
    out[sigma] = {}
    for name, clip in clips.items():
      x_t = jnp.asarray(metrics.noised(clip, noise, sigma), jnp.float32)
      for c, context in contexts.items():
        v = np.asarray(_velocity(pipe.transformer, x_t, t, context))
        out[sigma][f"{c}_{name}"] = float(np.mean((v - (noise - clip)) ** 2))
  return out


def main(argv=None):
  from t2vu_jax.pipeline import load_pipeline
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="pretrained toy pipeline directory")
  p.add_argument("--videos", type=int, default=96)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  losses = reversal_losses(load_pipeline(args.model, "float32", progress=False), args.videos, seed=args.seed)
  print("| σ | cond, true | cond, reversed | uncond, true | uncond, reversed |\n|---|---|---|---|---|")
  for sigma, x in losses.items():
    print(f"| {sigma} | {x['cond_true']:.4f} | {x['cond_reversed']:.4f} | {x['uncond_true']:.4f} | "
          f"{x['uncond_reversed']:.4f} |")
  print(json.dumps({str(k): v for k, v in losses.items()}))


if __name__ == "__main__":
  main()
