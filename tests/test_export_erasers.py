"""Eraser exports: diffusers + torch_erasers, diffusers LoRA loading and merged checkpoints reproduce our
erased velocity; our eraser directory round-trips bit-exactly; bad input fails clearly."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import t2vu_jax
from builders import PIPELINE_TRANSFORMER, TINY, WIDE, build_wan_pipeline
from convert import torch_erasers
from convert.export_erasers import main
from t2vu_jax.io.eraser_format import CONFIG_NAME, WEIGHTS_NAME
from t2vu_jax.models.erasers_params import (LORA_WEIGHT_NAME, export_adapter, export_lora, export_merged,
                                            load_erasers_into, save_erasers)
from t2vu_jax.io.safetensors_io import SafetensorsFile, TensorSpec, write_safetensors
from t2vu_jax.models.erasers import EraserConfig, EraserParam, attach_erasers

CONFIGS = {"tiny": TINY, "wide": WIDE}
TOL = 2e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inputs(config, seed=0):
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(2, config["in_channels"], 3, 4, 6, generator=g)
  text = torch.randn(2, 7, config["text_dim"], generator=g)
  return x, torch.tensor([730.0, 120.0]), text


def torch_velocity(model, x, t, text):
  with torch.no_grad():
    return model(hidden_states=x.to(model.dtype), timestep=t, encoder_hidden_states=text.to(model.dtype),
                 return_dict=False)[0].float().numpy()


def our_velocity(model, x, t, text, erasers=True):
  return np.asarray(model(jnp.asarray(x.numpy()), jnp.asarray(t.numpy()), jnp.asarray(text.numpy()), erasers=erasers))


def erased(path, kind="adapter", placement="cross_attn", rank=4, alpha=None, seed=1):
  """Our model of `path` with erasers whose every weight (zero-initialised halves too) is random."""
  model = t2vu_jax.load_transformer(path, "float32", progress=False)
  attach_erasers(model, EraserConfig(kind, placement, rank, alpha))
  rng = np.random.default_rng(seed)
  for p, v in nnx.to_flat_state(nnx.state(model.erasers, EraserParam)):
    v[...] = jnp.asarray(0.3 * rng.standard_normal(v[...].shape), jnp.float32)
  return model


def max_err(a, b):
  return float(np.abs(a - b).max())


ERASERS = [("adapter", "cross_attn", None), ("adapter", "self_attn", None), ("lora", "cross_attn", 6.0)]


@pytest.mark.parametrize("kind,placement,alpha", ERASERS)
@pytest.mark.parametrize("config_name", ["tiny", "wide"])
def test_torch_erasers_reproduce_our_velocity(save_diffusers_transformer, tmp_path, config_name, kind, placement,
                                              alpha):
  config = CONFIGS[config_name]
  torch_model, path = save_diffusers_transformer(config)
  model = erased(path, kind, placement, alpha=alpha)
  export_adapter(model, tmp_path / "erasers")
  x, t, text = inputs(config)
  base = torch_velocity(torch_model, x, t, text)
  erasers = torch_erasers.load_erasers(tmp_path / "erasers").attach(torch_model)
  got = torch_velocity(torch_model, x, t, text)
  err = max_err(got, our_velocity(model, x, t, text))
  print(f"{config_name} {kind}/{placement}: max abs err {err:.2e}")
  assert err <= TOL
  assert max_err(got, base) > 100 * TOL  # the erasers do change the output
  erasers.detach()
  np.testing.assert_array_equal(torch_velocity(torch_model, x, t, text), base)


def test_torch_erasers_on_a_bf16_transformer(save_diffusers_transformer, tmp_path):
  from diffusers import WanTransformer3DModel
  torch_model, path = save_diffusers_transformer(TINY)
  export_adapter(erased(path), tmp_path / "erasers")
  x, t, text = inputs(TINY)
  base = torch_velocity(torch_model, x, t, text)
  erasers = torch_erasers.load_erasers(tmp_path / "erasers").attach(torch_model)
  ref = torch_velocity(torch_model, x, t, text)
  erasers.detach()
  bf16 = WanTransformer3DModel.from_pretrained(path, torch_dtype=torch.bfloat16).eval()
  erasers.attach(bf16)
  with torch.no_grad():
    out = bf16(hidden_states=x.bfloat16(), timestep=t, encoder_hidden_states=text.bfloat16(), return_dict=False)[0]
  assert out.dtype == torch.bfloat16
  assert all(p.dtype == torch.float32 for p in erasers.parameters())
  assert max_err(out.float().numpy(), ref) < 0.1 * max_err(ref, base)


def test_torch_erasers_imports_without_jax():
  code = ("import sys; sys.modules.update(jax=None, flax=None, jaxlib=None); "
          "import convert.torch_erasers as m; print(m.load_erasers.__name__)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert r.returncode == 0 and "load_erasers" in r.stdout, r.stderr


@pytest.mark.parametrize("config_name", ["pipeline", "wide"])
def test_lora_export_loads_with_load_lora_weights(tmp_path, config_name):
  from diffusers import WanPipeline
  if config_name == "pipeline":
    pipe, config = build_wan_pipeline(), PIPELINE_TRANSFORMER
  else:
    from builders import build_diffusers_transformer
    config = WIDE
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=build_diffusers_transformer(WIDE), vae=None,
                       scheduler=None)
  pipe.transformer.save_pretrained(tmp_path / "transformer")
  model = erased(tmp_path / "transformer", "lora", rank=4, alpha=6.0)  # scale 1.5, folded into lora_B
  x, t, text = inputs(config)
  ours = our_velocity(model, x, t, text)
  base = torch_velocity(pipe.transformer, x, t, text)
  export_lora(model, tmp_path / "lora")
  export_lora(model, tmp_path / "eraser_lora.safetensors")
  export_lora(model, tmp_path / "eraser_lora_comfyui.safetensors", layout="comfyui")  # alphas, unfolded B
  assert os.listdir(tmp_path / "lora") == [LORA_WEIGHT_NAME]
  for src in (tmp_path / "lora", tmp_path / "eraser_lora.safetensors", tmp_path / "eraser_lora_comfyui.safetensors"):
    pipe.load_lora_weights(str(src), adapter_name="eraser")
    err = max_err(torch_velocity(pipe.transformer, x, t, text), ours)
    print(f"{config_name} lora via load_lora_weights({src.name}): max abs err {err:.2e}")
    assert err <= TOL and max_err(ours, base) > 100 * TOL
    pipe.unload_lora_weights()
    np.testing.assert_allclose(torch_velocity(pipe.transformer, x, t, text), base, atol=1e-6)


@pytest.mark.parametrize("layout", ["diffusers", "comfyui"])
def test_a14b_lora_files_load_into_each_expert(tmp_path, layout):
  """A two-expert pipeline's erasers as one LoRA file per expert: diffusers loads the low-noise one with
  `load_into_transformer_2=True`, and each expert then gives our erased velocity."""
  pipe = build_wan_pipeline(boundary_ratio=0.9)
  x, t, text = inputs(PIPELINE_TRANSFORMER)
  for name, seed, transformer in (("transformer", 1, pipe.transformer), ("transformer_2", 2, pipe.transformer_2)):
    transformer.save_pretrained(tmp_path / name)
    model = erased(tmp_path / name, "lora", rank=4, alpha=6.0, seed=seed)
    export_lora(model, tmp_path / "lora" / name, layout=layout)
    ours = our_velocity(model, x, t, text)
    assert max_err(ours, torch_velocity(transformer, x, t, text)) > 100 * TOL
    pipe.load_lora_weights(str(tmp_path / "lora" / name), adapter_name=f"eraser_{name}",
                           load_into_transformer_2=name == "transformer_2")
    err = max_err(torch_velocity(transformer, x, t, text), ours)
    print(f"A14B {name} lora ({layout}): max abs err {err:.2e}")
    assert err <= TOL
  # Each file went into its own expert: the other expert kept its own erasers only.
  high_only = erased(tmp_path / "transformer", "lora", rank=4, alpha=6.0, seed=1)
  assert max_err(torch_velocity(pipe.transformer, x, t, text), our_velocity(high_only, x, t, text)) <= TOL


@pytest.mark.parametrize("config_name", ["tiny", "wide"])
def test_merged_export_loads_with_from_pretrained(save_diffusers_transformer, tmp_path, config_name):
  from diffusers import WanTransformer3DModel
  config = CONFIGS[config_name]
  _, path = save_diffusers_transformer(config)
  model = erased(path, "lora", rank=4, alpha=2.0)
  x, t, text = inputs(config)
  ours = our_velocity(model, x, t, text)
  kernel = np.asarray(model.blocks.attn2.to_q.kernel[...])
  export_merged(model, tmp_path / "merged", progress=False)
  merged = WanTransformer3DModel.from_pretrained(tmp_path / "merged").eval()
  err = max_err(torch_velocity(merged, x, t, text), ours)
  print(f"{config_name} merged: max abs err {err:.2e}")
  assert err <= TOL
  assert model.erasers is not None and model.erasers.kind == "lora"  # the model itself is left as it was
  np.testing.assert_array_equal(np.asarray(model.blocks.attn2.to_q.kernel[...]), kernel)
  np.testing.assert_array_equal(our_velocity(model, x, t, text), ours)


@pytest.mark.parametrize("kind,placement,alpha", ERASERS)
def test_eraser_directory_round_trip_is_bit_exact(save_diffusers_transformer, tmp_path, kind, placement, alpha):
  _, path = save_diffusers_transformer(TINY)
  model = erased(path, kind, placement, rank=3, alpha=alpha)
  save_erasers(model, tmp_path / "a")
  with open(tmp_path / "a" / CONFIG_NAME) as f:
    cfg = json.load(f)
  assert cfg == dict(format="t2vu_erasers", format_version=1, kind=kind, placement=placement, rank=3, alpha=alpha,
                     num_layers=TINY["num_layers"], dim=24, dtype="float32")
  with SafetensorsFile(str(tmp_path / "a" / WEIGHTS_NAME)) as st:
    assert {k: v.shape for k, v in st.tensors.items()} == torch_erasers.tensor_shapes(kind, 2, 24, 3)
  # ours -> file -> ours, and ours -> file -> torch -> file -> ours
  torch_erasers.load_erasers(tmp_path / "a").save(str(tmp_path / "b"))
  x, t, text = inputs(TINY)
  for d in ("a", "b"):
    other = load_erasers_into(t2vu_jax.load_transformer(path, "float32", progress=False), tmp_path / d)
    assert other.eraser_config == model.eraser_config
    want = dict(nnx.to_flat_state(nnx.state(model.erasers, EraserParam)))
    got = dict(nnx.to_flat_state(nnx.state(other.erasers, EraserParam)))
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(np.asarray(got[k][...]), np.asarray(want[k][...]))
    np.testing.assert_array_equal(our_velocity(other, x, t, text), our_velocity(model, x, t, text))


def test_cli_exports_an_erased_model_on_disk(save_diffusers_transformer, tmp_path):
  from t2vu_jax.models.wan_params import save_flax_transformer
  from diffusers import WanTransformer3DModel
  torch_model, path = save_diffusers_transformer(TINY)
  model = erased(path, "lora", rank=4, alpha=8.0)
  save_flax_transformer(model, tmp_path / "flax")
  save_erasers(model, tmp_path / "erasers")
  x, t, text = inputs(TINY)
  ours = our_velocity(model, x, t, text)
  common = ["--transformer", str(tmp_path / "flax"), "--erasers", str(tmp_path / "erasers")]
  for kind in ("adapter", "lora", "merged"):
    assert main(common + ["--out", str(tmp_path / kind), "--as", kind]) == 0
  merged = WanTransformer3DModel.from_pretrained(tmp_path / "merged").eval()
  assert max_err(torch_velocity(merged, x, t, text), ours) <= TOL
  torch_erasers.load_erasers(tmp_path / "adapter").attach(torch_model)
  assert max_err(torch_velocity(torch_model, x, t, text), ours) <= TOL
  assert os.path.isfile(tmp_path / "lora" / LORA_WEIGHT_NAME)
  assert main(common + ["--out", str(tmp_path / "lora"), "--as", "lora"]) == 2  # existing output
  # a diffusers transformer directory works as --transformer too, and the module runs as a program
  r = subprocess.run([sys.executable, "-m", "convert.export_erasers", "--transformer", str(path), "--erasers",
                      str(tmp_path / "erasers"), "--out", str(tmp_path / "e.safetensors"), "--as", "lora"],
                     capture_output=True, text=True, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  with SafetensorsFile(str(tmp_path / "lora" / LORA_WEIGHT_NAME)) as a, \
       SafetensorsFile(str(tmp_path / "e.safetensors")) as b:
    assert a.keys() == b.keys() and len(a.keys()) == 16
    for k in a.keys():
      np.testing.assert_array_equal(a.read(k), b.read(k))


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def tiny_erased(save_diffusers_transformer, tmp_path):
  torch_model, path = save_diffusers_transformer(TINY)
  return torch_model, path, erased(path, "adapter", rank=3)


def test_exports_need_erasers(save_diffusers_transformer, tmp_path):
  _, path = save_diffusers_transformer(TINY)
  plain = t2vu_jax.load_transformer(path, "float32", progress=False)
  for export in (save_erasers, export_adapter, export_lora, export_merged):
    with pytest.raises(ValueError, match="no erasers attached"):
      export(plain, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")


def test_adapters_have_no_lora_or_merged_form(tiny_erased, tmp_path):
  _, _, model = tiny_erased
  with pytest.raises(ValueError, match="cannot be merged.*--as adapter"):
    export_merged(model, tmp_path / "merged")
  with pytest.raises(ValueError, match="not LoRA"):
    export_lora(model, tmp_path / "lora")
  assert not os.path.exists(tmp_path / "merged") and not os.path.exists(tmp_path / "lora")


def test_existing_outputs_are_kept(tiny_erased, tmp_path):
  _, _, model = tiny_erased
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep").write_text("x")
  with pytest.raises(FileExistsError):
    save_erasers(model, tmp_path / "out")
  assert os.listdir(tmp_path / "out") == ["keep"]
  save_erasers(model, tmp_path / "out", overwrite=True)
  assert sorted(os.listdir(tmp_path / "out")) == sorted([CONFIG_NAME, WEIGHTS_NAME])


def test_missing_files(tiny_erased, tmp_path):
  _, path, model = tiny_erased
  with pytest.raises(FileNotFoundError, match="does not exist"):
    torch_erasers.load_erasers(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_erasers_into(model, tmp_path / "nowhere")
  save_erasers(model, tmp_path / "e")
  os.remove(tmp_path / "e" / WEIGHTS_NAME)
  with pytest.raises(FileNotFoundError, match=f"no {WEIGHTS_NAME}"):
    torch_erasers.load_erasers(tmp_path / "e")
  with pytest.raises(FileNotFoundError, match=f"no {WEIGHTS_NAME}"):
    load_erasers_into(model, tmp_path / "e")
  os.remove(tmp_path / "e" / CONFIG_NAME)
  with pytest.raises(FileNotFoundError, match=f"no {CONFIG_NAME}"):
    torch_erasers.load_erasers(tmp_path / "e")
  assert main(["--transformer", str(path), "--erasers", str(tmp_path / "e"), "--out", str(tmp_path / "o"),
               "--as", "adapter"]) == 2
  assert not os.path.exists(tmp_path / "o")


def _rewrite(directory, change_config=None, change_tensors=None):
  if change_config:
    with open(directory / CONFIG_NAME) as f:
      cfg = json.load(f)
    change_config(cfg)
    with open(directory / CONFIG_NAME, "w") as f:
      json.dump(cfg, f)
  if change_tensors:
    with SafetensorsFile(str(directory / WEIGHTS_NAME)) as st:
      tensors = {k: np.array(st.read(k)) for k in st.keys()}
    change_tensors(tensors)
    write_safetensors(str(directory / WEIGHTS_NAME),
                      [TensorSpec(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])


BAD = {
    "format version": (lambda c: c.update(format_version=2), None, "format version 2"),
    "kind": (lambda c: c.update(kind="prefix"), None, "kind"),
    "rank": (lambda c: c.update(rank=0), None, "rank"),
    "missing tensor": (None, lambda t: t.pop("blocks.1.up.bias"), "missing.*blocks.1.up.bias"),
    "extra tensor": (None, lambda t: t.update({"blocks.2.up.bias": t["blocks.1.up.bias"]}), "unexpected.*blocks.2"),
    "shape": (None, lambda t: t.update({"blocks.0.down.weight": t["blocks.0.down.weight"][:2]}), "shape"),
    "nan": (None, lambda t: t["blocks.0.up.weight"].__setitem__((0, 0), np.nan), "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_corrupt_eraser_directories(tiny_erased, tmp_path, case):
  _, _, model = tiny_erased
  save_erasers(model, tmp_path / "e")
  change_config, change_tensors, message = BAD[case]
  _rewrite(tmp_path / "e", change_config, change_tensors)
  with pytest.raises(ValueError, match=message):
    torch_erasers.load_erasers(tmp_path / "e")
  with pytest.raises(ValueError, match=message):
    load_erasers_into(model, tmp_path / "e")
  assert model.eraser_config == EraserConfig("adapter", rank=3)  # a failed load leaves the model as it was


def test_mismatched_transformer(tiny_erased, save_diffusers_transformer, tmp_path):
  tiny_torch, _, model = tiny_erased
  save_erasers(model, tmp_path / "e")
  wide_torch, wide_path = save_diffusers_transformer(WIDE, name="wide")
  erasers = torch_erasers.load_erasers(tmp_path / "e")
  with pytest.raises(ValueError, match="num_layers=2, dim=24; this one has num_layers=3, dim=96"):
    erasers.attach(wide_torch)
  assert not any(m._forward_hooks for m in wide_torch.modules())
  erasers.attach(tiny_torch)
  with pytest.raises(RuntimeError, match="already attached"):
    erasers.attach(tiny_torch)
  wide = t2vu_jax.load_transformer(wide_path, "float32", progress=False)
  with pytest.raises(ValueError, match="num_layers=2, dim=24; this one has num_layers=3, dim=96"):
    load_erasers_into(wide, tmp_path / "e")
  assert wide.erasers is None
  assert main(["--transformer", str(wide_path), "--erasers", str(tmp_path / "e"), "--out", str(tmp_path / "o"),
               "--as", "lora"]) == 2


@pytest.mark.parametrize("case", ["alpha", "num_layers", "encoding"])
def test_eraser_configs_are_checked_before_anything_is_allocated(tiny_erased, tmp_path, case):
  _, _, model = tiny_erased
  save_erasers(model, tmp_path / "e")
  config = tmp_path / "e" / CONFIG_NAME
  cfg = json.loads(config.read_text())
  if case == "alpha":
    cfg["alpha"] = float("inf")
    config.write_text(json.dumps(cfg))  # writes Infinity, which json reads back
    message = "'alpha' must be a finite positive number"
  elif case == "num_layers":
    cfg["num_layers"] = 100_000_000
    config.write_text(json.dumps(cfg))
    message = "num_layers=100000000"  # torch: "but the file holds tensors of 2 block(s)"; ours: the model's
  else:
    config.write_bytes(b"\xff\xfe" + json.dumps(cfg).encode("utf-16-le"))
    message = f"{CONFIG_NAME}: not valid JSON"
  for load in (torch_erasers.load_erasers, lambda p: load_erasers_into(model, p)):
    with pytest.raises(ValueError, match=message):
      load(tmp_path / "e")


def test_the_export_cli_refuses_to_write_over_its_inputs(tiny_erased, tmp_path, capsys):
  _, path, model = tiny_erased
  save_erasers(model, tmp_path / "e")
  before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "e").iterdir())
  for out in (tmp_path / "e", tmp_path / "e" / "lora", path):
    assert main(["--transformer", str(path), "--erasers", str(tmp_path / "e"), "--out", str(out), "--as", "adapter",
                 "--overwrite"]) == 2
    assert "lies inside the source" in capsys.readouterr().err
  assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "e").iterdir()) == before


def test_comfyui_lora_follows_comfyui_conventions(save_diffusers_transformer, tmp_path):
  """ComfyUI applies a LoRA to the original-layout weight of each `diffusion_model.` key as
  W + (alpha / rank) · lora_B @ lora_A, rank = lora_A's rows: done here by hand on the original-layout
  checkpoint, it gives the weights our merged export computes with."""
  import safetensors.torch
  from t2vu_jax.models.wan_params import save_wan
  _, path = save_diffusers_transformer(TINY)
  model = erased(path, "lora", rank=4, alpha=6.0)
  export_lora(model, tmp_path / "comfy.safetensors", layout="comfyui")
  lora = safetensors.torch.load_file(str(tmp_path / "comfy.safetensors"))
  assert all(k.startswith("diffusion_model.blocks.") and ".cross_attn." in k for k in lora)
  assert len(lora) == 3 * 4 * TINY["num_layers"] and float(lora["diffusion_model.blocks.0.cross_attn.q.alpha"]) == 6.0

  save_wan(t2vu_jax.load_transformer(path, progress=False), tmp_path / "base", progress=False)
  save_wan(export_merged_model(model), tmp_path / "merged", progress=False)
  base, merged = (safetensors.torch.load_file(str(next((tmp_path / d).glob("*.safetensors"))))
                  for d in ("base", "merged"))
  patched = dict(base)
  for key in (k[len("diffusion_model."):-len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")):
    down, up = lora[f"diffusion_model.{key}.lora_A.weight"], lora[f"diffusion_model.{key}.lora_B.weight"]
    alpha = float(lora[f"diffusion_model.{key}.alpha"])
    patched[f"{key}.weight"] = base[f"{key}.weight"] + (alpha / down.shape[0]) * (up @ down)
  assert sorted(patched) == sorted(merged)
  for k in merged:
    np.testing.assert_allclose(patched[k].numpy(), merged[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
  assert any(not torch.equal(base[k], merged[k]) for k in merged)  # the LoRA changes the weights


def export_merged_model(model):
  from t2vu_jax.models.erasers import merge_lora
  return merge_lora(nnx.clone(model))


def probe_layout(path, num_layers, dim, rank, seed=0):
  """A T2VUnlearning/PROBE eraser directory built from its published names: random adapters on every
  block's cross-attention."""
  g = torch.Generator().manual_seed(seed)
  ckpt = {f"blocks.{i}.cross_attn.adapter": {"down.weight": torch.randn(rank, dim, generator=g),
                                             "down.bias": torch.randn(rank, generator=g),
                                             "up.weight": torch.randn(dim, rank, generator=g),
                                             "up.bias": torch.randn(dim, generator=g)} for i in range(num_layers)}
  os.makedirs(path)
  torch.save(ckpt, os.path.join(path, "eraser_weights.pt"))
  with open(os.path.join(path, "eraser_config.json"), "w") as f:
    json.dump({"eraser_type": "adapter", "eraser_rank": rank}, f, indent=4)
  return ckpt


def test_probe_eraser_directories_round_trip_bit_exactly(save_diffusers_transformer, tmp_path):
  from convert.probe_erasers import main as probe_main
  _, transformer = save_diffusers_transformer(TINY)
  dim, layers = TINY["num_attention_heads"] * TINY["attention_head_dim"], TINY["num_layers"]
  theirs = probe_layout(tmp_path / "probe", layers, dim, rank=3)
  assert probe_main(["--from-probe", str(tmp_path / "probe"), "--out", str(tmp_path / "ours")]) == 0
  model = load_erasers_into(t2vu_jax.load_transformer(transformer, "float32", progress=False), tmp_path / "ours")
  stacked = dict(nnx.to_flat_state(nnx.state(model.erasers, EraserParam)))
  for i in range(layers):  # each of their tensors is its block's layer of our (in, out) parameter
    for ours, name in (("down_w", "down.weight"), ("down_b", "down.bias"), ("up_w", "up.weight"), ("up_b", "up.bias")):
      value = np.asarray(next(v for p, v in stacked.items() if p[-1] == ours)[...])[i]
      np.testing.assert_array_equal(value, theirs[f"blocks.{i}.cross_attn.adapter"][name].numpy().T)
  export_adapter(model, tmp_path / "ours_again")
  assert probe_main(["--to-probe", str(tmp_path / "ours_again"), "--out", str(tmp_path / "probe_again")]) == 0
  again = torch.load(tmp_path / "probe_again" / "eraser_weights.pt", weights_only=True)
  assert sorted(again) == sorted(theirs) and json.loads((tmp_path / "probe_again" / "eraser_config.json").read_text()) \
      == {"eraser_type": "adapter", "eraser_rank": 3}
  for key, state in theirs.items():
    assert sorted(again[key]) == sorted(state)
    for name, tensor in state.items():
      assert torch.equal(again[key][name], tensor), (key, name)


def test_probe_conversion_refuses_what_has_no_form_there(tiny_erased, tmp_path, capsys):
  from convert.probe_erasers import main as probe_main
  _, path, _ = tiny_erased
  lora = tmp_path / "lora_erasers"
  save_erasers(erased(path, "lora", rank=4), lora)
  assert probe_main(["--to-probe", str(lora), "--out", str(tmp_path / "p")]) == 2
  assert "lora erasers at placement 'cross_attn' have no T2VUnlearning/PROBE form" in capsys.readouterr().err
  probe_layout(tmp_path / "bad", 2, 8, rank=2)
  (tmp_path / "bad" / "eraser_config.json").write_text('{"eraser_type": "adapter", "eraser_rank": 5}')
  assert probe_main(["--from-probe", str(tmp_path / "bad"), "--out", str(tmp_path / "q")]) == 2
  assert "down.weight has shape (2, 8), expected (5, 8)" in capsys.readouterr().err
  with pytest.raises(ValueError, match="T2VUnlearning/PROBE eraser config.*--from-probe"):
    load_erasers_into(t2vu_jax.load_transformer(path, "float32", progress=False), tmp_path / "bad")
