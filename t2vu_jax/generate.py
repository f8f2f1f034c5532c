"""Generate a video from a prompt with a Wan2.1 T2V pipeline.

  python -m t2vu_jax.generate --model PIPELINE_DIR --prompt "a cat on a beach" --out cat.mp4

`--transformer` swaps in another transformer (e.g. an erased one, any format `load_transformer`
reads). `--latents in.npy` fixes the initial noise, which makes runs comparable across frameworks;
`--save-array out.npy` also writes the uint8 frames (F, H, W, 3).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from t2vu_jax.cli import error
from t2vu_jax.io.atomic import atomic_file
from t2vu_jax.io.errors import CheckpointError

VIDEO_SUFFIXES = (".mp4", ".gif")


def write_video(path: str, frames: np.ndarray, fps: int) -> None:
  """Write uint8 frames (F, H, W, 3) as mp4 (ffmpeg, H.264) or gif, atomically."""
  import imageio.v2 as imageio
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in VIDEO_SUFFIXES:
    raise ValueError(f"unsupported video format {suffix!r} for {path}; use one of {VIDEO_SUFFIXES}")
  with atomic_file(path, overwrite=True, suffix=suffix) as tmp:
    if suffix == ".mp4":
      # yuv420p needs even sides; macro_block_size=1 keeps the exact size (Wan sizes are multiples of 16).
      with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                              pixelformat="yuv420p", macro_block_size=1) as writer:
        for frame in frames:
          writer.append_data(frame)
    else:
      imageio.mimsave(tmp, list(frames), format="GIF", duration=1000 / fps, loop=0)


def _check_args(args) -> None:
  """Everything that can be checked before any weights are read."""
  from t2vu_jax.pipeline import check_pipeline_dir, check_video_shape
  check_video_shape(args.height, args.width, args.frames)
  for flag in ("fps", "decode_chunk"):
    if getattr(args, flag) < 1:
      raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
  if not args.prompt.strip():
    raise ValueError("--prompt is empty")
  if os.path.splitext(args.out)[1].lower() not in VIDEO_SUFFIXES:
    raise ValueError(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {args.out}")
  for path in (args.out, args.save_array):
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
      raise ValueError(f"output directory does not exist: {os.path.dirname(os.path.abspath(path))}")
  if args.latents and not os.path.isfile(args.latents):
    raise ValueError(f"--latents file does not exist: {args.latents}")
  if args.guidance_2 is not None and check_pipeline_dir(args.model).get("boundary_ratio") is None:
    raise ValueError(f"--guidance-2 needs a two-expert (Wan2.2 A14B) pipeline; {args.model} has one transformer")
  if args.transformer and not os.path.exists(args.transformer):
    raise ValueError(f"--transformer path does not exist: {args.transformer}")
  check_pipeline_dir(args.model)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m t2vu_jax.generate", description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, help="diffusers Wan T2V pipeline directory (Wan2.1, Wan2.2 A14B)")
  p.add_argument("--transformer", default=None, help="use this transformer instead of the pipeline's")
  p.add_argument("--prompt", required=True)
  p.add_argument("--negative-prompt", default="")
  p.add_argument("--out", required=True, help="video file: .mp4 or .gif")
  p.add_argument("--frames", type=int, default=81, help="4k+1")
  p.add_argument("--height", type=int, default=480, help="multiple of 16")
  p.add_argument("--width", type=int, default=832, help="multiple of 16")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=5.0, help="<= 1 disables classifier-free guidance")
  p.add_argument("--guidance-2", type=float, default=None,
                 help="the low-noise expert's guidance of a two-expert (Wan2.2 A14B) pipeline; default --guidance")
  p.add_argument("--shift", type=float, default=None, help="default: the pipeline's flow_shift")
  p.add_argument("--scheduler", choices=["unipc", "euler"], default=None, help="default: the pipeline's")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--latents", default=None, help="initial noise (1, C, T, H/8, W/8) as .npy")
  p.add_argument("--save-array", default=None, help="also save the uint8 frames (F, H, W, 3) as .npy")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--fps", type=int, default=16)
  p.add_argument("--decode-chunk", type=int, default=1,
                 help="latent frames per VAE decode step: memory grows with it, not with the video")
  p.add_argument("--cache-dir", default=None, help="on-disk prompt embedding cache")
  args = p.parse_args(argv)

  start = time.time()
  try:
    _check_args(args)
    latents = np.load(args.latents) if args.latents else None
    from t2vu_jax.pipeline import load_pipeline
    pipe = load_pipeline(args.model, args.dtype, transformer=args.transformer, cache_dir=args.cache_dir)
    pipe.decode_chunk = args.decode_chunk
    frames = pipe.generate(args.prompt, args.negative_prompt, args.height, args.width, args.frames,
                           args.steps, args.guidance, args.shift, args.seed, latents, args.scheduler,
                           guidance_2=args.guidance_2)[0]
    write_video(args.out, frames, args.fps)
    if args.save_array:
      np.save(args.save_array, frames)
  except (CheckpointError, ValueError, OSError) as e:
    return error(e)
  print(f"wrote {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} to {args.out} "
        f"in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
