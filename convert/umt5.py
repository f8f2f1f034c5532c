"""Read a transformers UMT5 `text_encoder/` directory into our `UMT5Encoder` (streaming, strict), and
write one back out."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.atomic import atomic_directory
from convert.safetensors_io import SafetensorsError, write_safetensors
from convert.streaming import (LINEAR, CheckpointError, Param, SafetensorsSource, component_dir,
                               module_tensors, read_into_module, safetensors_files)
from t2vu_jax.models.umt5 import UMT5Config, UMT5Encoder

# transformers ties the encoder's input embedding to `shared`; files may hold either name or both.
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def key_table(cfg: UMT5Config, embedding_key: str = "shared.weight") -> list[Param]:
  block = "encoder.block.{i}.layer"
  table = [Param(("shared", "embedding"), embedding_key),
           Param(("final_layer_norm", "scale"), "encoder.final_layer_norm.weight"),
           Param(("layers", "attn_norm", "scale"), f"{block}.0.layer_norm.weight"),
           Param(("layers", "attn", "relative_attention_bias"),
                 f"{block}.0.SelfAttention.relative_attention_bias.weight"),
           Param(("layers", "ffn_norm", "scale"), f"{block}.1.layer_norm.weight")]
  table += [Param(("layers", "attn", n, "kernel"), f"{block}.0.SelfAttention.{n}.weight", LINEAR)
            for n in ("q", "k", "v", "o")]
  ffn = {"wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"} if cfg.is_gated else {"wi_0": "wi", "wo": "wo"}
  table += [Param(("layers", "ffn", ours, "kernel"), f"{block}.1.DenseReluDense.{theirs}.weight", LINEAR)
            for ours, theirs in ffn.items()]
  return table


def read_umt5_config(path: str) -> UMT5Config:
  directory = component_dir(path, "text_encoder")
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"text encoder: no config.json in {directory}")
  with open(config_path) as f:
    try:
      return UMT5Config.from_dict(json.load(f))
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{config_path}: {e}") from None


def read_umt5(path: str, dtype=jnp.float32, progress: bool = True, place=None, **model_kwargs) -> UMT5Encoder:
  """Load a transformers `UMT5EncoderModel` directory (or a pipeline's `text_encoder/`) in `dtype`."""
  directory = component_dir(path, "text_encoder")
  if not os.path.isdir(directory):
    raise CheckpointError(f"text encoder directory does not exist: {directory}")
  cfg = read_umt5_config(directory)
  model = nnx.eval_shape(lambda: UMT5Encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0), **model_kwargs))
  try:
    source = SafetensorsSource(safetensors_files(directory, "text encoder"))
  except SafetensorsError as e:
    raise CheckpointError(f"text encoder: {e}") from None
  keys = set(source.keys())
  embedding = next((k for k in EMBEDDING_KEYS if k in keys), EMBEDDING_KEYS[0])
  table = key_table(cfg, embedding)
  where = (f"{directory} (UMT5: {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, "
           f"vocab {cfg.vocab_size}) does not match the UMT5 encoder")
  return read_into_module(model, table, source, cfg.num_layers, where, place, progress,
                          desc="text encoder", ignore=frozenset(EMBEDDING_KEYS) - {embedding})


def save_umt5(encoder: UMT5Encoder, out: str, dtype=None, overwrite: bool = False) -> None:
  """A transformers `UMT5EncoderModel` directory (config.json + model.safetensors), atomically."""
  cfg = encoder.config
  config = dict(cfg.to_dict(), architectures=["UMT5EncoderModel"], is_encoder_decoder=False, use_cache=False,
                tie_word_embeddings=False, dropout_rate=0.0, torch_dtype=np.dtype(dtype or encoder.dtype).name)
  with atomic_directory(out, overwrite) as tmp:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2)
    write_safetensors(os.path.join(tmp, "model.safetensors"),
                      module_tensors(encoder, key_table(cfg), cfg.num_layers, dtype or encoder.dtype),
                      {"format": "pt"})
