"""UMT5 encoder weights: the transformers `text_encoder/` key table, a strict streaming reader and a
writer back to a transformers `UMT5EncoderModel` directory."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from t2vu_jax.io.atomic import atomic_directory
from t2vu_jax.io.safetensors_io import write_safetensors
from t2vu_jax.io.streaming import LINEAR, Param, component_config, module_tensors, parse_config, read_component
from t2vu_jax.models.umt5 import UMT5Config, UMT5Encoder

SUBFOLDER = "text_encoder"
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
  directory, d = component_config(path, SUBFOLDER, "text encoder")
  return parse_config(directory, UMT5Config.from_dict, d)


def read_umt5(path: str, dtype=jnp.float32, progress: bool = True, place=None, **model_kwargs) -> UMT5Encoder:
  """Load a transformers `UMT5EncoderModel` directory (or a pipeline's `text_encoder/`) in `dtype`."""
  directory, d = component_config(path, SUBFOLDER, "text encoder")
  cfg = parse_config(directory, UMT5Config.from_dict, d)
  model = nnx.eval_shape(lambda: UMT5Encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0), **model_kwargs))

  def table(keys):
    embedding = next((k for k in EMBEDDING_KEYS if k in keys), EMBEDDING_KEYS[0])
    return key_table(cfg, embedding), set(EMBEDDING_KEYS) - {embedding}

  where = (f"{directory} (UMT5: {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, "
           f"vocab {cfg.vocab_size}) does not match the UMT5 encoder")
  return read_component(directory, "text encoder", model, table, where, cfg.num_layers, place, progress)


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
