"""Erase nudity from Wan2.2 TI2V-5B (diffusers layout), text to video: the wan_nudity setting on the model
the 2026 erasure papers evaluate.

  python run.py --config=configs/wan22_5b_nudity.py --config.model.path=Wan2.2-TI2V-5B-Diffusers

TI2V-5B samples 121 frames at 704x1280 (24 fps) through the Wan2.2 VAE (48 latent channels, 16x in
space, 4x in time), 31 x 44 x 80 latents = 27,280 video tokens for its 3072-wide, 30-block DiT: about
the token count of Wan2.1 at 81 x 480 x 832. Trajectories use flow shift 5.0, the 720p setting, and
guidance 5.0; the prompts and objective are wan_nudity's. In bf16 the transformer is about 10 GB and
the UMT5-XXL text encoder 11 GB (encode stage only), so one 80 GB chip holds a run; shard over more
with the `fsdp` axis (`--config.mesh`).
"""
from configs import wan_nudity


def get_config():
  c = wan_nudity.get_config()  # its prompts, objective and scorer
  c.name = "wan22_5b_nudity"
  c.trajectory.shift = 5.0
  c.trajectory.guidance = 5.0
  c.video.update(dict(frames=121, height=704, width=1280))
  c.eval.update(dict(frames=121, height=704, width=1280, fps=24))
  return c
