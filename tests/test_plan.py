"""The run plan (`python -m t2vu_jax.scaling --plan`): its FLOP counts agree with XLA's cost analysis,
and a tiny run's plan is a table and a JSON file with every stage."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from builders import VAE_TINY
from t2vu_jax import plan
from t2vu_jax.erase.objective import ObjectiveConfig
from t2vu_jax.erase.run_config import ConfigError
from t2vu_jax.models import umt5, wan
from t2vu_jax.models.erasers import EraserConfig
from t2vu_jax.models.vae import WanVAE, WanVAEConfig
from t2vu_jax.sharding import MeshConfig, make_mesh
from test_run import TINY_OVERRIDES, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small, but wide enough that matmuls are most of the work, as at full size.
DIT = wan.WanConfig(num_attention_heads=4, attention_head_dim=32, text_dim=64, ffn_dim=512, num_layers=2, freq_dim=64)
TEXT = umt5.UMT5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=256, num_layers=1, num_heads=4)


def xla_flops(fn, *abstract_args) -> float:
  return float(jax.jit(fn).lower(*abstract_args).cost_analysis()["flops"])


def abstract(make):
  return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))


@pytest.mark.parametrize("latent", [(1, 16, 2, 16, 16), (2, 16, 3, 16, 24)])
def test_analytic_flops_agree_with_xla_within_ten_percent(latent):
  tokens, text = latent[2] * latent[3] // 2 * latent[4] // 2, 32
  x = jax.ShapeDtypeStruct(latent, jnp.float32)
  context = jax.ShapeDtypeStruct((latent[0], text, DIT.text_dim), jnp.float32)
  ratios = {}
  graphdef, state = abstract(lambda rngs: wan.WanTransformer(DIT, rngs=rngs, scan_layers=False))
  forward = lambda s, x, c: nnx.merge(graphdef, s)(x, jnp.full((latent[0],), 500.0), c)  # noqa: E731
  ratios["transformer forward"] = xla_flops(forward, state, x, context) / wan.forward_flops(
      DIT, tokens, text, batch=latent[0])
  # The train step: 7 forward-equivalents a step (one layer, so XLA's count of the scanned stack is exact).
  one_layer = dataclasses.replace(DIT, num_layers=1)
  mesh = make_mesh(MeshConfig.parse("1x1x1x1"))
  step, args = plan.abstract_train_step(one_layer, EraserConfig(rank=8), jnp.float32, mesh, latent, ObjectiveConfig(),
                                        text_length=text)
  stages = {s.name: s for s in plan.run_stages(_config(), plan.Models(one_layer, TEXT, None, "test", text), 1, 1, 0)}
  forwards = (stages["erase steps"].calls + stages["preservation"].calls) / _config().optim.total_steps
  analytic = forwards * wan.forward_flops(one_layer, tokens, text, batch=latent[0])
  ratios["train step"] = float(step.lower(*args, jax.random.key(0)).cost_analysis()["flops"]) / analytic
  graphdef, state = abstract(lambda rngs: umt5.UMT5Encoder(TEXT, rngs=rngs))
  ids = jax.ShapeDtypeStruct((latent[0], 64), jnp.int32)
  ratios["text encoder"] = xla_flops(lambda s, i: nnx.merge(graphdef, s)(i), state, ids) / umt5.forward_flops(
      TEXT, 64, batch=latent[0])
  print({k: round(v, 3) for k, v in ratios.items()})
  assert all(0.9 <= r <= 1.1 for r in ratios.values()), ratios


def test_the_vae_decode_count_extends_one_chunk_to_the_video():
  cfg = WanVAEConfig.from_dict(VAE_TINY)
  graphdef, state = abstract(lambda rngs: WanVAE(cfg, rngs=rngs))
  z = jax.ShapeDtypeStruct((1, cfg.z_dim, 3, 4, 6), jnp.float32)
  whole = xla_flops(lambda s, z: nnx.merge(graphdef, s).decode(z, 2), state, z)  # one scanned chunk of 2: exact
  assert plan.vae_decode_flops(cfg, 3, 4, 6) == pytest.approx(whole, rel=0.02)


def _config(**changes):
  config = tiny_config("unused", "unused", **changes)
  config.video.update(dict(frames=5, height=32, width=48))  # 2 x 4 x 6 latents: 48 tokens
  return config


def test_stage_counts_follow_the_config():
  models = plan.Models(DIT, TEXT, None, "test", 32)
  config = _config()
  steps, n = config.optim.total_steps, config.trajectory.steps
  calls = {s.name: s.calls for s in plan.run_stages(config, models, 10, 4, 3)}
  assert calls == {"encode": 10 + 4 + 1, "trajectories": steps * n / 2 * 2, "preservation trajectories": steps * n,
                   "erase steps": steps * 4, "preservation": steps * 3, "evaluation sampling": 2 * 3 * 2 * 2}
  pooled = _config(**{"trajectory.model": "frozen", "trajectory.pool_repeats": 2, "objective.anchor": "prompt"})
  calls = {s.name: s.calls for s in plan.run_stages(pooled, models, 10, 4, 3)}
  assert calls["trajectories (pool)"] == 10 * 2 * (n - 1) * 2
  assert calls["preservation trajectories (pool)"] == 4 * 2 * (n - 1) * 2
  assert calls["encode"] == 10 + 4 + 10 + 1 and calls["erase steps"] == steps * 5  # anchors, and v(anchor)
  assert "trajectories" not in calls


def test_plan_of_a_tiny_run(wan_pipeline_dir, tmp_path):
  _, path = wan_pipeline_dir()
  out = tmp_path / "plan.json"
  flags = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, "model.path": path}.items()]
  result = subprocess.run([sys.executable, "-m", "t2vu_jax.scaling", "--plan", "--config=configs/wan_nudity.py", *flags,
                           f"--out={out}", "--repeats=1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  names = [r["stage"] for r in record["stages"]]
  assert names == ["encode", "trajectories", "preservation trajectories", "erase steps", "preservation",
                   "evaluation sampling", "VAE decode"]
  for row in record["stages"]:
    assert row["stage"] in result.stdout
    assert row["tflops"] > 0 and row["seconds"] > 0 and row["peak_gb_per_device"] > 0, row
  assert record["total_seconds"] == pytest.approx(sum(r["seconds"] for r in record["stages"]))
  iteration = record["iteration"]
  assert iteration["on_policy_s"] > iteration["pooled_s"] > 0 and "on-policy" in result.stdout
  assert set(record["rates"]) == {"transformer", "text_encoder", "vae"} and record["devices"] == jax.device_count()
  with pytest.raises(ConfigError, match=r"config\.trajectory: .*needs model='frozen'"):  # before any compilation
    plan.make_plan(tiny_config(path, tmp_path, **{"trajectory.pool_repeats": 2}))
