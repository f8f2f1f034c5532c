"""Erase nudity from Wan2.2 T2V A14B (diffusers layout): an eraser set per expert.

  python run.py --config=configs/wan22_a14b_nudity.py --config.model.path=Wan2.2-T2V-A14B-Diffusers

A14B is two 14B Wan2.1-shaped transformers: `transformer` samples the steps whose timestep is at or
above `boundary_ratio` (0.875) x 1000, `transformer_2` the rest. Training trajectories run through
both, as the pipeline samples, with Wan2.2's T2V settings: flow shift 12.0, guidance 4.0 for the
high-noise expert and 3.0 for the low-noise one. Each step trains the expert whose range holds its
training point, so with 40 UniPC steps at shift 12 about 60% of the steps go to the high-noise expert
(`expert_steps` in the erase stage's marker); each expert has its own optimizer, whose schedule runs
over its own steps. Exports go to `export/<format>/transformer` and `export/<format>/transformer_2`: a
LoRA file per expert, loaded in diffusers with `pipe.load_lora_weights(...)` and
`pipe.load_lora_weights(..., load_into_transformer_2=True)`.

Mesh: both experts are resident (57 GB in bf16 for the weights alone), and the backward pass through
32,760 tokens needs far more: shard them with FSDP over several chips (`--config.mesh`), as for
wan14b_nudity.
"""
from configs import wan_nudity


def get_config():
  c = wan_nudity.get_config()  # its prompts, objective and scorer
  c.name = "wan22_a14b_nudity"
  c.trajectory.steps = 40
  c.trajectory.shift = 12.0
  c.trajectory.guidance = 4.0
  c.trajectory.guidance_2 = 3.0
  c.optim.total_steps = 200
  c.log_every = 5
  c.checkpoint_every = 20
  c.eval.update(dict(steps=40, guidance=4.0, guidance_2=3.0))
  return c
