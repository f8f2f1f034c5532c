"""The RECE baseline on the toy default: erase red from the toy model by RECE's closed-form edit of the
cross-attention (`t2vu_jax.erase.rece`) instead of training erasers, in seconds.

  python run.py --config=configs/toy_rece.py

Same prompts and evaluation as `configs/toy.py`; the erase stage writes the edited attn2 to_k/to_v
kernels (`rece.npz`), the export stage the edited transformer as a diffusers directory.
"""
from configs import toy


def get_config():
  c = toy.get_config()
  c.name = "toy_rece"
  c.method = "rece"
  c.export.formats = "merged"
  return c
