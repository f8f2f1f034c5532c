"""Erase nudity from Wan2.1 T2V 14B (diffusers layout): the wan_nudity setting on the large model.

  python run.py --config=configs/wan14b_nudity.py --config.model.path=Wan2.1-T2V-14B-Diffusers

Same prompts, objective and 480x832x81 videos as wan_nudity.py; trajectories use flow shift 3.0 and
guidance 5.0, the usual 480p settings (use shift 5.0 with 720x1280). Each on-policy iteration samples up
to `trajectory.steps` guided steps of the 14B model, so trajectories use 30 UniPC steps, training stops
at 200 iterations (the low end of the usual 200-500) and checkpoints come more often.

Mesh: the 14B transformer is 28.6 GB in bf16 (40 blocks, width 5120, 40 heads), and the backward pass
through 32,760 video tokens needs far more, so it does not fit one chip: shard its weights with FSDP
over several chips (`t2vu_jax.sharding.MeshConfig`'s default puts every device on the `fsdp` axis;
a `tensor` axis must divide the 40 heads). The UMT5-XXL text encoder (about 11 GB in bf16) is only
used by the encode stage.
"""
from configs import wan_nudity


def get_config():
  c = wan_nudity.get_config()  # its prompts, objective and scorer
  c.name = "wan14b_nudity"
  c.trajectory.steps = 30
  c.trajectory.shift = 3.0
  c.trajectory.guidance = 5.0
  c.optim.total_steps = 200
  c.log_every = 5
  c.checkpoint_every = 20
  return c
