"""Round trips between PyTorch checkpoints (diffusers / original Wan / ComfyUI) and our Flax format."""
import json

import jax
import numpy as np
import pytest
import safetensors
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from flax import nnx

import t2vu_jax
from builders import CONFIGS, HEAD128, TINY, WIDE
from convert import flax_to_torch, torch_to_flax
from t2vu_jax.models import wan_params
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.io.safetensors_io import SafetensorsFile
from t2vu_jax.models.wan_params import save_diffusers, save_wan


def read_all(directory):
  """Every tensor of a checkpoint directory, read with the reference safetensors library."""
  tensors = {}
  for f in sorted(directory.glob("*.safetensors")):
    with safetensors.safe_open(str(f), framework="pt") as sf:
      tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
  return tensors


def flat_params(model):
  return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_bit_identical(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(a[k].view(torch.uint8) if a[k].dtype == torch.bfloat16 else a[k],
                       b[k].view(torch.uint8) if b[k].dtype == torch.bfloat16 else b[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diffusers_round_trip_is_bit_identical(dtype, save_diffusers_transformer, tmp_path):
  _, src = save_diffusers_transformer(WIDE, dtype=dtype)
  model = t2vu_jax.load_transformer(src, dtype="float32" if dtype == torch.float32 else "bfloat16",
                                    progress=False)
  save_diffusers(model, tmp_path / "exported", progress=False)
  assert_bit_identical(read_all(src), read_all(tmp_path / "exported"))


def test_sharded_checkpoints_in_and_out(save_diffusers_transformer, tmp_path):
  torch_model, src = save_diffusers_transformer(WIDE, max_shard_size="60KB")
  assert (src / "diffusion_pytorch_model.safetensors.index.json").exists()
  model = t2vu_jax.load_transformer(src, progress=False)
  out = tmp_path / "exported"
  n, nbytes = save_diffusers(model, out, max_shard_size="50KB", progress=False)
  index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
  shards = set(index["weight_map"].values())
  assert len(shards) > 2 and all((out / s).exists() for s in shards)
  assert n == wan_params.num_tensors(model.config) == len(index["weight_map"])
  assert nbytes == index["metadata"]["total_size"]
  assert_bit_identical(read_all(src), read_all(out))


def test_export_loads_in_diffusers_and_computes_the_same(save_diffusers_transformer, tmp_path):
  torch_model, src = save_diffusers_transformer(CONFIGS["deep"])
  model = t2vu_jax.load_transformer(src, progress=False)
  save_diffusers(model, tmp_path / "exported", progress=False)
  reloaded, info = WanTransformer3DModel.from_pretrained(tmp_path / "exported", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  x, t, ctx = torch.randn(1, 5, 3, 4, 6), torch.tensor([500]), torch.randn(1, 11, 24)
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(x, t, ctx, return_dict=False)[0].numpy(),
                                  torch_model(x, t, ctx, return_dict=False)[0].numpy())


def test_original_and_comfyui_layouts_convert_to_identical_params(save_diffusers_transformer, tmp_path):
  torch_model, src = save_diffusers_transformer(HEAD128)
  reference = flat_params(t2vu_jax.load_transformer(src, progress=False))

  save_wan(t2vu_jax.load_transformer(src, progress=False), tmp_path / "wan", progress=False)
  wan_tensors = read_all(tmp_path / "wan")
  assert any(k.startswith("blocks.0.self_attn.") for k in wan_tensors)
  # diffusers' own original->diffusers converter must map our original-layout file back exactly.
  assert_bit_identical(convert_wan_transformer_to_diffusers(dict(wan_tensors)), read_all(src))

  comfy = tmp_path / "wan2.1_t2v_comfy.safetensors"
  comfy_tensors = {wan_params.COMFYUI_PREFIX + k: v for k, v in wan_tensors.items()}
  comfy_tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)  # a bundled VAE is skipped
  safetensors.torch.save_file(comfy_tensors, str(comfy))
  for path in (tmp_path / "wan", comfy):
    params = flat_params(t2vu_jax.load_transformer(path, progress=False))
    assert sorted(params) == sorted(reference)
    for k in params:
      np.testing.assert_array_equal(params[k], reference[k])


def test_original_wan22_a14b_layout_loads_expert_by_expert(save_diffusers_transformer, tmp_path):
  """Wan-AI ships A14B as high_noise_model/ and low_noise_model/, each an original-layout model."""
  experts = {}
  for name, seed in (("high_noise_model", 0), ("low_noise_model", 1)):
    _, src = save_diffusers_transformer(HEAD128, name=f"diffusers_{name}", seed=seed)
    experts[name] = flat_params(t2vu_jax.load_transformer(src, progress=False))
    save_wan(t2vu_jax.load_transformer(src, progress=False), tmp_path / "a14b" / name, progress=False)
  for name, reference in experts.items():
    params = flat_params(t2vu_jax.load_transformer(tmp_path / "a14b" / name, progress=False))
    assert sorted(params) == sorted(reference)
    for k in params:
      np.testing.assert_array_equal(params[k], reference[k])
  high, low = experts["high_noise_model"], experts["low_noise_model"]
  assert any((high[k] != low[k]).any() for k in high)
  with pytest.raises(CheckpointError, match=r"original Wan2.2 A14B directory of two experts; give one of them: "
                                            r".*high_noise_model \(high noise, diffusers' transformer\)"):
    t2vu_jax.load_transformer(tmp_path / "a14b", progress=False)


def test_original_layout_without_config_infers_the_architecture(save_diffusers_transformer, tmp_path):
  _, src = save_diffusers_transformer(TINY)
  save_wan(t2vu_jax.load_transformer(src, progress=False), tmp_path / "wan", progress=False)
  (tmp_path / "wan" / "config.json").unlink()
  # The tiny test model has 12-wide heads, which shapes alone cannot reveal: refused with advice.
  with pytest.raises(ValueError, match="cannot infer the head count.*config.json"):
    t2vu_jax.load_transformer(tmp_path / "wan", progress=False)

  _, src = save_diffusers_transformer(HEAD128, name="head128")
  (src / "config.json").unlink()
  model = t2vu_jax.load_transformer(src, progress=False)
  expected = {k: v for k, v in HEAD128.items() if k not in ("qk_norm", "rope_max_seq_len")}
  assert {k: getattr(model.config, k) for k in expected} == expected


def test_pipeline_directory_uses_its_transformer(save_diffusers_transformer, tmp_path):
  _, src = save_diffusers_transformer(TINY, name="pipe/transformer")
  (tmp_path / "pipe" / "model_index.json").write_text("{}")
  a = flat_params(t2vu_jax.load_transformer(tmp_path / "pipe", progress=False))
  b = flat_params(t2vu_jax.load_transformer(src, progress=False))
  assert all(np.array_equal(a[k], b[k]) for k in a)


def test_command_line_round_trip(save_diffusers_transformer, tmp_path, capsys):
  torch_model, src = save_diffusers_transformer(TINY, dtype=torch.bfloat16)
  flax_dir, out = tmp_path / "flax", tmp_path / "back"
  assert torch_to_flax.main(["--src", str(src), "--out", str(flax_dir), "--dtype", "bfloat16"]) == 0
  assert f"converted {wan_params.num_tensors(t2vu_jax.load_transformer(src, progress=False).config)} tensors" \
      in capsys.readouterr().out
  assert (flax_dir / "t2vu_model.json").exists()
  model = t2vu_jax.load_transformer(flax_dir, dtype=None)  # as saved
  assert model.dtype == jax.numpy.bfloat16
  assert flax_to_torch.main(["--src", str(flax_dir), "--out", str(out), "--format", "diffusers"]) == 0
  assert "wrote" in capsys.readouterr().out
  assert_bit_identical(read_all(src), read_all(out))
  # Outputs are never overwritten by accident.
  assert torch_to_flax.main(["--src", str(src), "--out", str(flax_dir)]) == 2
  assert "already exists" in capsys.readouterr().err


def test_safetensors_writer_is_read_by_the_reference_library(tmp_path):
  import ml_dtypes
  from t2vu_jax.io.safetensors_io import TensorSpec, write_safetensors
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((3,), ml_dtypes.bfloat16),
            "c": np.zeros((0, 2), np.float32)}
  write_safetensors(tmp_path / "x.safetensors",
                    [TensorSpec(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()])
  with safetensors.safe_open(str(tmp_path / "x.safetensors"), framework="pt") as sf:
    assert sf.get_tensor("a").tolist() == arrays["a"].tolist()
    assert sf.get_tensor("b").dtype == torch.bfloat16 and sf.get_tensor("b").tolist() == [1, 1, 1]
    assert tuple(sf.get_tensor("c").shape) == (0, 2)
  with SafetensorsFile(tmp_path / "x.safetensors") as sf:
    np.testing.assert_array_equal(sf.read("a"), arrays["a"])


def test_failed_export_leaves_nothing_behind(save_diffusers_transformer, tmp_path, monkeypatch):
  _, src = save_diffusers_transformer(TINY)
  model = t2vu_jax.load_transformer(src, progress=False)
  out = tmp_path / "exports" / "model"
  save_diffusers(model, out, progress=False)
  before = read_all(out)

  import t2vu_jax.models.wan_params as writer
  real = writer.transformer_tensors

  def failing(*args, **kwargs):
    specs = real(*args, **kwargs)
    def boom():
      raise OSError("disk full")
    return specs[:5] + [specs[5]._replace(produce=boom)] + specs[6:]
  monkeypatch.setattr(writer, "transformer_tensors", failing)
  with pytest.raises(OSError, match="disk full"):
    save_diffusers(model, out, overwrite=True, progress=False)
  # The earlier export is untouched and no temporary directory is left beside it.
  assert_bit_identical(before, read_all(out))
  assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
  with pytest.raises(FileExistsError, match="already exists"):
    save_diffusers(model, out, progress=False)


def _fp8_scaled(wan_tensors: dict) -> tuple[dict, dict]:
  """(ComfyUI fp8_scaled tensors, the weights they stand for): every 2-D block weight stored as
  float8_e4m3fn with a per-tensor `scale_weight` (and the `scale_input` fp8 matmuls use), the rest as is."""
  stored, meant = {}, {}
  for k, v in wan_tensors.items():
    if v.ndim == 2 and k.startswith("blocks."):
      scale = (v.abs().max() / 448.0).reshape(1)
      w8 = (v / scale).to(torch.float8_e4m3fn)
      stored[k], stored[k[:-6] + "scale_weight"], stored[k[:-6] + "scale_input"] = w8, scale, torch.ones(1)
      meant[k] = w8.float() * scale
    else:
      stored[k] = meant[k] = v
  return stored, meant


@pytest.mark.parametrize("prefix", [wan_params.COMFYUI_PREFIX, ""])
def test_comfyui_fp8_scaled_files_are_dequantised(save_diffusers_transformer, tmp_path, prefix):
  torch_model, src = save_diffusers_transformer(HEAD128)
  save_wan(t2vu_jax.load_transformer(src, progress=False), tmp_path / "wan", progress=False)
  stored, meant = _fp8_scaled(read_all(tmp_path / "wan"))
  path = tmp_path / "wan2.1_t2v_fp8_scaled.safetensors"
  marker = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
  safetensors.torch.save_file({prefix + k: v for k, v in {**stored, **marker}.items()}, str(path))
  plain = tmp_path / "dequantised" / "model.safetensors"
  plain.parent.mkdir()
  safetensors.torch.save_file(meant, str(plain))
  (plain.parent / "config.json").write_text((tmp_path / "wan" / "config.json").read_text())

  ckpt = wan_params.inspect_checkpoint(str(path))
  assert ckpt.quantization == "fp8_scaled" and ckpt.format == ("comfyui" if prefix else "wan") + " fp8_scaled"
  model = t2vu_jax.load_transformer(path, progress=False)
  got, want = flat_params(model), flat_params(t2vu_jax.load_transformer(plain.parent, progress=False))
  assert sorted(got) == sorted(want)
  for k in got:
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
  # Dequantised, the model still computes what the unquantised one does (fp8 keeps ~2 significant digits).
  x, t, ctx = torch.randn(1, 4, 3, 4, 6), torch.tensor([500]), torch.randn(1, 7, HEAD128["text_dim"])
  with torch.no_grad():
    ref = torch_model(x, t, ctx, return_dict=False)[0].numpy()
  out = np.asarray(model(x.numpy(), t.numpy(), ctx.numpy()))
  assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_unknown_quantized_comfyui_files_are_refused_by_name(save_diffusers_transformer, tmp_path):
  _, src = save_diffusers_transformer(HEAD128)
  save_wan(t2vu_jax.load_transformer(src, progress=False), tmp_path / "wan", progress=False)
  stored, _ = _fp8_scaled(read_all(tmp_path / "wan"))
  no_marker = tmp_path / "no_marker.safetensors"
  safetensors.torch.save_file({wan_params.COMFYUI_PREFIX + k: v for k, v in stored.items()}, str(no_marker))
  with pytest.raises(ValueError, match=r"has fp8 scales \(\d+ `scale_weight` tensors.*no `scaled_fp8` marker"):
    t2vu_jax.load_transformer(no_marker, progress=False)
  newer = {k.replace("scale_weight", "weight_scale"): v for k, v in stored.items() if not k.endswith("scale_input")}
  newer["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
  path = tmp_path / "comfy_quant.safetensors"
  safetensors.torch.save_file({wan_params.COMFYUI_PREFIX + k: v for k, v in newer.items()}, str(path))
  with pytest.raises(ValueError, match="ComfyUI quantized checkpoint in the per-layer `comfy_quant`"):
    t2vu_jax.load_transformer(path, progress=False)


def test_wan22_ti2v_5b_channels_load_and_the_named_architectures(save_diffusers_transformer):
  """48 input channels are Wan2.2 TI2V-5B's (the Wan2.2 VAE's latents), not an I2V model's 36."""
  config = dict(TINY, in_channels=48, out_channels=48)
  _, src = save_diffusers_transformer(config, name="ti2v")
  assert t2vu_jax.load_transformer(src, progress=False).config.in_channels == 48
  # The original Wan2.2 layout: TI2V-5B's config says model_type "ti2v"; an I2V model is still refused.
  save_wan(t2vu_jax.load_transformer(src, progress=False), src.parent / "ti2v_original", progress=False)
  original = json.loads((src.parent / "ti2v_original" / "config.json").read_text())
  for model_type, ok in (("ti2v", True), ("i2v", False)):
    (src.parent / "ti2v_original" / "config.json").write_text(json.dumps({**original, "model_type": model_type}))
    if ok:
      assert t2vu_jax.load_transformer(src.parent / "ti2v_original", progress=False).config.in_channels == 48
    else:
      with pytest.raises(ValueError, match="model_type='i2v'; only text-to-video"):
        t2vu_jax.load_transformer(src.parent / "ti2v_original", progress=False)
  five = wan_params.WanConfig.wan22_5b()
  assert (five.dim, five.num_layers, five.ffn_dim, five.in_channels, five.out_channels) == (3072, 30, 14336, 48, 48)
  assert wan_params.WanConfig.wan22_a14b() == wan_params.WanConfig.wan_14b()
