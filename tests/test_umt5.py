"""UMT5 encoder parity with transformers' UMT5EncoderModel, through our converter."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models.umt5_params import read_umt5
from t2vu_jax.models.umt5 import UMT5Config, relative_position_buckets

from builders import UMT5_TINY, build_umt5

UMT5_RELU = dict(UMT5_TINY, feed_forward_proj="relu", num_layers=2, d_kv=6, num_heads=5)


def padded_batch(vocab, lengths, total, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), total), np.int64)
  mask = np.zeros((len(lengths), total), np.int64)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(1, vocab, n)
    mask[row, :n] = 1
  return ids, mask


@pytest.mark.parametrize("config,shard", [(UMT5_TINY, None), (UMT5_TINY, "20KB"), (UMT5_RELU, None)])
def test_umt5_matches_transformers(tmp_path, config, shard):
  reference = build_umt5(config)
  kwargs = {"max_shard_size": shard} if shard else {}
  reference.save_pretrained(tmp_path / "text_encoder", **kwargs)
  if shard:
    assert (tmp_path / "text_encoder" / "model.safetensors.index.json").exists()
  ours = read_umt5(tmp_path, jnp.float32, progress=False)  # a pipeline-style parent directory

  ids, mask = padded_batch(config["vocab_size"], [40, 13, 1], 48)
  with torch.no_grad():
    expected = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
  err = np.abs(got - expected.numpy()).max()
  print(f"max abs error {err:.2e}")
  assert err <= 1e-5, err


def test_relative_position_buckets_match_transformers():
  from transformers.models.umt5.modeling_umt5 import UMT5Attention
  import transformers
  for buckets, distance in ((32, 128), (8, 16), (6, 7)):
    hf = transformers.UMT5Config(relative_attention_num_buckets=buckets, relative_attention_max_distance=distance)
    attn = UMT5Attention(hf, has_relative_attention_bias=True)
    rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    cfg = UMT5Config(relative_attention_num_buckets=buckets, relative_attention_max_distance=distance)
    np.testing.assert_array_equal(relative_position_buckets(cfg, 300), attn._relative_position_bucket(rel).numpy())


def test_tied_embedding_duplicate_is_accepted_and_other_extras_are_not(tmp_path):
  from safetensors.numpy import load_file, save_file
  reference = build_umt5(UMT5_TINY)
  reference.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
  save_file(tensors, tmp_path / "model.safetensors")
  read_umt5(tmp_path, progress=False)
  tensors["encoder.block.9.layer.0.layer_norm.weight"] = tensors["encoder.final_layer_norm.weight"]
  save_file(tensors, tmp_path / "model.safetensors")
  with pytest.raises(CheckpointError, match="unexpected tensor.*encoder.block.9"):
    read_umt5(tmp_path, progress=False)


def test_bad_text_encoder_inputs(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    read_umt5(tmp_path / "nowhere")
  build_umt5(UMT5_TINY).save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="t5")))
  with pytest.raises(CheckpointError, match="model_type='t5'"):
    read_umt5(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(dict(config, num_layers=4)))
  with pytest.raises(CheckpointError, match="missing tensor.*encoder.block.3"):
    read_umt5(tmp_path, progress=False)
  (tmp_path / "config.json").unlink()
  with pytest.raises(CheckpointError, match="no config.json"):
    read_umt5(tmp_path)


def test_saved_encoder_loads_in_transformers_and_round_trips(tmp_path):
  import transformers
  from t2vu_jax.models.umt5_params import save_umt5
  build_umt5(UMT5_TINY).save_pretrained(tmp_path / "src")
  ours = read_umt5(tmp_path / "src", progress=False)
  save_umt5(ours, str(tmp_path / "out"), dtype="float32")
  reloaded = transformers.UMT5EncoderModel.from_pretrained(tmp_path / "out").eval()
  ids, mask = padded_batch(UMT5_TINY["vocab_size"], [20, 5], 24)
  with torch.no_grad():
    expected = reloaded(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(got - expected.numpy()).max() <= 1e-5
  again = read_umt5(tmp_path / "out", progress=False)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(ours)), nnx.to_flat_state(nnx.state(again))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
