"""What users run from the PyTorch side: conversion CLIs (`torch_to_flax`, `flax_to_torch`), the eraser
export CLI (`export_erasers`) and `torch_erasers` (erasers for a stock diffusers transformer, no JAX
needed). Depends on `t2vu_jax`; the library never imports this package."""
