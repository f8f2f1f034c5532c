"""Contact sheets: videos as rows of frames in one PNG, each row under a text label.

Row r is a label band `LABEL_HEIGHT` pixels high, then the video's frames side by side, each upscaled
`scale` times with nearest neighbour and `GAP` pixels apart; `MARGIN` pixels surround everything.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

LABEL_HEIGHT = 14
GAP = 2
MARGIN = 4
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _as_uint8(video, i: int) -> np.ndarray:
  v = np.asarray(video)
  if v.ndim != 4 or v.shape[-1] != 3:
    raise ValueError(f"video {i} must be (F, H, W, 3), got shape {v.shape}")
  if v.dtype == np.uint8:
    return v
  if v.dtype.kind != "f":
    raise ValueError(f"video {i} must be uint8 or float in [0, 1], got dtype {v.dtype}")
  if not np.isfinite(v).all():
    raise ValueError(f"video {i} contains NaN or infinite values")
  return np.round(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)


def thumbnails(video, frames: int = 5, height: int = 96) -> np.ndarray:
  """`frames` evenly spaced frames of `video` (F, H, W, 3), strided down to about `height` rows when
  taller (a real 480x832 video becomes 96x167 thumbnails; a 16x16 toy video stays as it is)."""
  v = np.asarray(video)
  if v.ndim != 4 or frames < 1 or height < 1:
    raise ValueError(f"thumbnails need a video (F, H, W, 3) and positive sizes, got shape {v.shape}")
  stride = max(1, v.shape[1] // height)
  return v[np.linspace(0, len(v) - 1, min(frames, len(v))).round().astype(int)][:, ::stride, ::stride]


def sheet_size(shapes: Sequence[tuple[int, ...]], scale: int = 8) -> tuple[int, int]:
  """(width, height) in pixels of the sheet of videos shaped `shapes` ((F, H, W, 3) each)."""
  width = max(f * w * scale + (f - 1) * GAP for f, _, w, _ in shapes) + 2 * MARGIN
  height = sum(LABEL_HEIGHT + h * scale for _, h, _, _ in shapes) + (len(shapes) - 1) * GAP + 2 * MARGIN
  return width, height


def contact_sheet(videos: Sequence[np.ndarray], labels: Sequence[str], path: str | os.PathLike,
                  scale: int = 8) -> tuple[int, int]:
  """Write `videos` ((F, H, W, 3), float in [0, 1] or uint8) as labelled rows of frames to the PNG
  `path`, atomically; returns its (width, height)."""
  from PIL import Image, ImageDraw, ImageFont
  videos = [_as_uint8(v, i) for i, v in enumerate(videos)]
  labels = [str(label) for label in labels]
  if not videos:
    raise ValueError("a contact sheet needs at least one video")
  if len(labels) != len(videos):
    raise ValueError(f"{len(labels)} labels for {len(videos)} videos")
  if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale!r}")
  size = sheet_size([v.shape for v in videos], scale)
  sheet = Image.new("RGB", size, BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  y = MARGIN
  for video, label in zip(videos, labels):
    draw.text((MARGIN, y + 1), label, fill=TEXT, font=font)
    y += LABEL_HEIGHT
    x = MARGIN
    for frame in video:
      big = np.repeat(np.repeat(frame, scale, 0), scale, 1)
      sheet.paste(Image.fromarray(big), (x, y))
      x += big.shape[1] + GAP
    y += video.shape[1] * scale + GAP
  path = os.fspath(path)
  tmp = f"{path}.tmp.png"
  sheet.save(tmp, format="PNG")
  os.replace(tmp, path)
  return size
