"""Defaults shared by every erasure config (DESIGN §5); other configs start from `get_config()` here.

The `eraser`, `objective`, `trajectory` and `optim` groups take their fields and defaults from the
library's dataclasses (`t2vu_jax.erase.run_config.GROUPS`), so each default is written once.
"""
import ml_collections
from ml_collections import config_dict

from t2vu_jax.erase.run_config import DEFAULT_STAGES, GROUPS, config_group


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "erasure"
  c.workdir = ""                 # default: runs/<name>
  c.seed = 0
  c.method = "erasers"           # or "rece": RECE's closed-form edit of the cross-attention (a baseline)
  c.stages = ",".join(DEFAULT_STAGES)  # any subset of run_config.STAGES (attack too), in that order;
                                       # finished stages are not repeated

  c.mesh = "1x-1x1x1"            # data x fsdp x context x tensor over all devices; -1 fills one axis

  c.model = ml_collections.ConfigDict()
  c.model.path = ""              # a diffusers Wan T2V pipeline directory (Wan2.1, Wan2.2 TI2V-5B or A14B)
  c.model.dtype = "bfloat16"     # transformer weights and activations (norms stay fp32)
  c.model.text_dtype = "bfloat16"
  c.model.remat = "none"         # the transformer blocks' rematerialisation: none, full, dots (long videos: full)
  c.model.attention = "xla"      # attention backend: xla (everywhere), cudnn (NVIDIA GPUs), splash (TPUs)

  for group, cls in GROUPS.items():  # eraser, objective, trajectory, optim, rece, attack
    c[group] = config_group(cls)
  c.video = ml_collections.ConfigDict(dict(frames=81, height=480, width=832))  # training trajectories
  c.batch_size = 1
  c.preserve_batch_size = 1
  c.log_every = 10
  c.checkpoint_every = 50

  c.prompts = ml_collections.ConfigDict()
  c.prompts.erase = ""           # JSONL pool(s), comma-separated
  c.prompts.preserve = ""        # optional
  c.prompts.evaluate = ""        # evaluation prompts disjoint from training: JSONL pool(s) or an authors' CSV

  # guidance_2: a two-expert pipeline's low-noise expert's guidance (None: guidance)
  c.eval = ml_collections.ConfigDict(dict(num_prompts=4, seeds=1, steps=50, guidance=5.0,
                                          guidance_2=config_dict.placeholder(float), frames=81,
                                          height=480, width=832, fps=16, scorer="none", score_every=1,
                                          decode_chunk=1))  # latent frames per VAE decode step
  c.export = ml_collections.ConfigDict(dict(formats="adapter", dtype="bfloat16"))
  return c
