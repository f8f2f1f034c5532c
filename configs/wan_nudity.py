"""Erase nudity from Wan2.1 T2V 1.3B (diffusers layout), the paper's main setting.

  python run.py --config=configs/wan_nudity.py --config.model.path=Wan2.1-T2V-1.3B-Diffusers
"""
import os

from configs import base

CONFIGS = os.path.dirname(os.path.abspath(__file__))
POOLS = os.path.join(os.path.dirname(CONFIGS), "t2vu_jax", "erase", "pools")


def get_config():
  c = base.get_config()
  c.name = "wan_nudity"
  c.prompts.erase = os.path.join(POOLS, "nudity.jsonl")
  c.prompts.preserve = os.path.join(POOLS, "preserve_people.jsonl")
  c.prompts.evaluate = os.path.join(CONFIGS, "prompts", "nudity_eval.jsonl")
  c.eval.scorer = "nudenet"
  return c
