"""Every malformed checkpoint is refused with a message that names what is wrong."""
import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import WanTransformer3DModel

import t2vu_jax
from builders import TINY
from t2vu_jax.io.errors import CheckpointError

WEIGHTS = "diffusion_pytorch_model.safetensors"


def rewrite(path, edit):
  """Apply `edit` to the state dict of a single-file diffusers checkpoint, in place."""
  tensors = safetensors.torch.load_file(str(path / WEIGHTS))
  edit(tensors)
  safetensors.torch.save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})


@pytest.fixture
def checkpoint(save_diffusers_transformer):
  return save_diffusers_transformer(TINY)[1]


def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist: .*nowhere"):
    t2vu_jax.load_transformer(tmp_path / "nowhere")


def test_directory_without_weights(tmp_path):
  with pytest.raises(CheckpointError, match="no transformer weights found"):
    t2vu_jax.load_transformer(tmp_path)


def test_unknown_file_format(tmp_path):
  (tmp_path / "model.gguf").write_bytes(b"GGUF")
  with pytest.raises(CheckpointError, match="unknown checkpoint format"):
    t2vu_jax.load_transformer(tmp_path / "model.gguf")


def test_truncated_safetensors(checkpoint):
  f = checkpoint / WEIGHTS
  size = f.stat().st_size
  os.truncate(f, size - 100)
  with pytest.raises(CheckpointError, match=f"truncated: tensor .* ends at byte {size}, file has {size - 100}"):
    t2vu_jax.load_transformer(checkpoint)
  os.truncate(f, 5)
  with pytest.raises(CheckpointError, match="too short"):
    t2vu_jax.load_transformer(checkpoint)


def test_missing_tensor(checkpoint):
  rewrite(checkpoint, lambda t: t.pop("blocks.1.attn2.to_v.bias"))
  with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): blocks.1.attn2.to_v.bias"):
    t2vu_jax.load_transformer(checkpoint)


def test_unexpected_tensor(checkpoint):
  rewrite(checkpoint, lambda t: t.update({"blocks.0.attn1.lora_A.weight": torch.zeros(2, 24)}))
  with pytest.raises(CheckpointError, match=r"1 unexpected tensor\(s\): blocks.0.attn1.lora_A.weight"):
    t2vu_jax.load_transformer(checkpoint)


def test_wrong_shape(checkpoint):
  rewrite(checkpoint, lambda t: t.update({"blocks.0.ffn.net.2.weight": torch.zeros(24, 31)}))
  with pytest.raises(CheckpointError, match=r"blocks.0.ffn.net.2.weight has shape \(24, 31\), expected \(24, 32\)"):
    t2vu_jax.load_transformer(checkpoint)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor(checkpoint, bad):
  def poison(t):
    t["blocks.1.attn1.to_k.weight"][3, 4] = bad
  rewrite(checkpoint, poison)
  with pytest.raises(CheckpointError, match=r"1 tensor\(s\) contain NaN or Inf: blocks.1.attn1.to_k.weight"):
    t2vu_jax.load_transformer(checkpoint)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_pickles_are_refused_unless_allowed(checkpoint, tmp_path, suffix):
  state = safetensors.torch.load_file(str(checkpoint / WEIGHTS))
  pickle_dir = tmp_path / "pickled"
  pickle_dir.mkdir()
  (pickle_dir / "config.json").write_text((checkpoint / "config.json").read_text())
  torch.save(state, pickle_dir / f"diffusion_pytorch_model{suffix}")
  for path in (pickle_dir, pickle_dir / f"diffusion_pytorch_model{suffix}"):
    with pytest.raises(CheckpointError, match="refusing to load PyTorch pickle.*allow_pickle=True"):
      t2vu_jax.load_transformer(path)
  model = t2vu_jax.load_transformer(pickle_dir, allow_pickle=True, progress=False)
  reference = t2vu_jax.load_transformer(checkpoint, progress=False)
  x, t, ctx = np.ones((1, 4, 1, 4, 4), np.float32), np.array([10]), np.ones((1, 3, 16), np.float32)
  np.testing.assert_array_equal(np.asarray(model(x, t, ctx)), np.asarray(reference(x, t, ctx)))


def test_config_that_contradicts_the_tensors(checkpoint):
  config = json.loads((checkpoint / "config.json").read_text())
  config["ffn_dim"] = 64
  (checkpoint / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"config .*config.json.*ffn 64.*blocks.0.ffn.net.0.proj.weight has "
                                            r"shape \(32, 24\), expected \(64, 24\)"):
    t2vu_jax.load_transformer(checkpoint)
  config.update(ffn_dim=32, num_layers=3)
  (checkpoint / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"3 layers.*missing tensor\(s\): blocks.2."):
    t2vu_jax.load_transformer(checkpoint)


def test_image_to_video_checkpoint_is_refused(tmp_path):
  i2v = WanTransformer3DModel(**dict(TINY, in_channels=9, image_dim=20, added_kv_proj_dim=24))
  i2v.save_pretrained(tmp_path / "i2v")
  with pytest.raises(CheckpointError, match="image-to-video"):
    t2vu_jax.load_transformer(tmp_path / "i2v")
  (tmp_path / "i2v" / "config.json").unlink()  # refused from the tensors alone too
  with pytest.raises(CheckpointError, match=r"image-to-video \(I2V\) Wan checkpoint"):
    t2vu_jax.load_transformer(tmp_path / "i2v")


def test_sharded_index_naming_a_missing_shard(save_diffusers_transformer):
  _, path = save_diffusers_transformer(TINY, max_shard_size="20KB")
  shard = sorted(path.glob("*.safetensors"))[0]
  shard.unlink()
  with pytest.raises(CheckpointError, match=f"lists shard files that do not exist.*{shard.name}"):
    t2vu_jax.load_transformer(path)


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_converters_refuse_to_write_over_their_source(save_diffusers_transformer, tmp_path, capsys, where):
  from convert import flax_to_torch, torch_to_flax
  _, src = save_diffusers_transformer(TINY)
  before = {p.name: p.read_bytes() for p in src.iterdir()}
  out = {"same": src, "inside": src / "flax", "around": src.parent}[where]
  assert torch_to_flax.main(["--src", str(src), "--out", str(out), "--overwrite"]) == 2
  assert "lies inside the source" in capsys.readouterr().err
  assert flax_to_torch.main(["--src", str(src), "--out", str(out), "--overwrite"]) == 2
  assert "lies inside the source" in capsys.readouterr().err
  assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # nothing lost or changed


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("args, message", [
    (["--config.foo=1"], "--config.foo: AttributeError"),
    (["--config.eraser.rnak=3"], 'Did you mean "rank"'),
    (["--config=configs/nope.py"], "--config: cannot load the config file .*configs/nope.py"),
    (["--config.optim.total_steps=-5"], r"config\.optim: total_steps must be a positive integer, got -5"),
    (["--config.optim.total_steps=0"], r"config\.optim: total_steps must be a positive integer, got 0"),
    (["--config.stages=erase", "--config.workdir={fresh}"], r"config\.stages: 'erase' reads the encode stage's"),
    (["--config.workdir={file}"], r"config\.workdir: cannot write the run directory"),
])
def test_run_py_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
  import re
  import subprocess
  import sys
  (tmp_path / "file").write_text("")
  args = [a.format(fresh=tmp_path / "fresh", file=tmp_path / "file") for a in args]
  r = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and re.search(message, r.stderr), r.stderr[-2000:]
  assert r.stderr.strip().startswith("error: ")
  assert not (tmp_path / "fresh" / "embeddings.npz").exists()


@pytest.mark.parametrize("header, message", [
    ([1, 2], "a JSON list, not an object"),
    ({"a": {"shape": [1], "data_offsets": [0, 4]}}, "tensor 'a' lacks a dtype"),
])
def test_corrupt_safetensors_headers_name_the_file(tmp_path, header, message):
  import struct
  path = tmp_path / WEIGHTS
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
  with pytest.raises(CheckpointError, match=f"{WEIGHTS}: corrupt safetensors header.*{message}"):
    t2vu_jax.load_transformer(tmp_path)


def test_a_legacy_pickle_is_a_checkpoint_error_naming_it(tmp_path):
  path = tmp_path / "model.pt"
  torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointError, match=r"model\.pt: cannot be read as a PyTorch checkpoint"):
    t2vu_jax.load_transformer(path, allow_pickle=True)


def test_an_overflowing_csv_seed_names_the_row(tmp_path):
  from t2vu_jax.evaluate import PromptCSVError, read_prompt_csv
  path = tmp_path / "p.csv"
  path.write_text(f"prompt,evaluation_seed\na cat,1\na dog,{2**70}\n")
  with pytest.raises(PromptCSVError, match=r"p\.csv, row 3: evaluation_seed 1180591620717411303424 does not fit"):
    read_prompt_csv(path)


@pytest.mark.parametrize("flag", ["--fps", "--decode-chunk"])
def test_generate_refuses_a_zero_count_before_loading(flag, tmp_path, capsys):
  from t2vu_jax import generate
  assert generate.main(["--model", str(tmp_path), "--prompt", "a cat", "--out", str(tmp_path / "c.mp4"),
                        flag, "0"]) == 2
  assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def test_a_prompt_longer_than_the_text_length_warns():
  from builders import build_tokenizer
  from t2vu_jax.text import tokenize
  with pytest.warns(UserWarning, match="1 prompt\\(s\\) longer than the text length 6 are cut"):
    ids, mask = tokenize(build_tokenizer(), ["a cat", "a red cat walking in the park at night"], 6)
  assert mask.sum(1).tolist() == [3, 6]


def test_atomic_writes_respect_the_umask_and_stale_temporaries_are_removed(tmp_path):
  from t2vu_jax.io.atomic import atomic_directory, atomic_file, remove_stale
  previous = os.umask(0o022)
  try:
    with atomic_directory(tmp_path / "d") as tmp:
      pass
    with atomic_file(tmp_path / "f.json") as tmp:
      open(tmp, "w").write("{}")
  finally:
    os.umask(previous)
  assert (os.stat(tmp_path / "d").st_mode & 0o777, os.stat(tmp_path / "f.json").st_mode & 0o777) == (0o755, 0o644)
  (tmp_path / ".adapter.tmp-x1").mkdir()  # an export killed midway
  (tmp_path / ".adapter.old-x2").mkdir()
  (tmp_path / ".other.tmp-x3").mkdir()
  assert sorted(os.path.basename(p) for p in remove_stale(tmp_path / "adapter")) == [".adapter.old-x2",
                                                                                      ".adapter.tmp-x1"]
  assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x3", "d", "f.json"]
