"""Erase a celebrity identity, "Taylor Swift", from Wan2.1 T2V 1.3B (diffusers layout).

  python run.py --config=configs/wan_celebrity.py --config.model.path=Wan2.1-T2V-1.3B-Diffusers

A widely photographed public figure that celebrity-erasure benchmarks commonly use, and a frequent
target of unwanted likeness generation. Prompts show neutral everyday scenes; the preservation pool
shows other named public figures in similar scenes, so the run removes one identity rather than
people or singers in general. No face recognizer is wired, so evaluation writes videos of the base
and erased model on the same seeds without scores.
"""
import os

from configs import base

CONFIGS = os.path.dirname(os.path.abspath(__file__))
POOLS = os.path.join(os.path.dirname(CONFIGS), "t2vu_jax", "erase", "pools")


def get_config():
  c = base.get_config()
  c.name = "wan_celebrity_taylor_swift"
  c.prompts.erase = os.path.join(POOLS, "celebrity_taylor_swift.jsonl")
  c.prompts.preserve = os.path.join(POOLS, "preserve_celebrities.jsonl")
  c.prompts.evaluate = os.path.join(CONFIGS, "prompts", "celebrity_taylor_swift_eval.jsonl")
  c.eval.scorer = "none"
  return c
