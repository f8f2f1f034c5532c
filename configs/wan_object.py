"""Erase an object, "car", from Wan2.1 T2V 1.3B (diffusers layout).

  python run.py --config=configs/wan_object.py --config.model.path=Wan2.1-T2V-1.3B-Diffusers

Cars are among the most frequent objects in video captions, unambiguous to look at, and have close
neighbours (buses, trucks, motorcycles, bicycles, trains, boats) that the preservation pool keeps, so a
run shows whether erasure stays specific. No object detector is wired, so evaluation writes videos of
the base and erased model on the same seeds without scores.
"""
import os

from configs import base

CONFIGS = os.path.dirname(os.path.abspath(__file__))
POOLS = os.path.join(os.path.dirname(CONFIGS), "t2vu_jax", "erase", "pools")


def get_config():
  c = base.get_config()
  c.name = "wan_object_car"
  c.prompts.erase = os.path.join(POOLS, "car.jsonl")
  c.prompts.preserve = os.path.join(POOLS, "preserve_vehicles.jsonl")
  c.prompts.evaluate = os.path.join(CONFIGS, "prompts", "car_eval.jsonl")
  c.eval.scorer = "none"
  return c
