"""Meshes, logical axis rules, and sharded erasure steps equal to the single-device ones."""
import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from t2vu_jax.sharding import AXES, MeshConfig, logical_axes, make_mesh, partition_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mesh_config_fills_one_axis_and_validates():
  assert MeshConfig.parse("2x-1x1x2").shape(8) == (2, 2, 1, 2)
  assert MeshConfig().shape(8) == (1, 8, 1, 1)
  with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
    MeshConfig(2, 2, 1, 1).shape(8)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    MeshConfig(-1, -1, 1, 1).shape(8)
  with pytest.raises(ValueError, match="do not divide the 8 devices"):
    MeshConfig(3, -1, 1, 1).shape(8)
  with pytest.raises(ValueError, match="expected 4 sizes"):
    MeshConfig.parse("8x1")
  make_mesh(MeshConfig(1, 1, 1, 1), num_heads=12)  # tensor 1 divides any head count


def test_tensor_axis_must_divide_the_heads():
  import jax
  with pytest.raises(ValueError, match=r"tensor=2 does not divide the model's 3 attention heads; choose tensor from \[1, 3\]"):
    make_mesh(MeshConfig(1, 1, 1, 2), devices=jax.devices() * 2, num_heads=3)


def test_logical_axes_and_partition_specs():
  mesh = AbstractMesh((2, 2, 1, 2), AXES)
  cases = {
      ("blocks", "attn1", "to_q", "kernel"): ((30, 1536, 1536), ("layers", "embed", "heads"), PartitionSpec(None, "fsdp", "tensor")),
      ("blocks", "attn2", "to_out", "kernel"): ((30, 1536, 1536), ("layers", "heads", "embed"), PartitionSpec(None, "tensor", "fsdp")),
      ("blocks", "ffn", "net_0_proj", "kernel"): ((30, 1536, 8960), ("layers", "embed", "mlp"), PartitionSpec(None, "fsdp", "tensor")),
      ("blocks", "ffn", "net_2", "bias"): ((30, 1536), ("layers", None), PartitionSpec(None, None)),
      ("erasers", "down_w"): ((30, 1536, 128), ("layers", "embed", None), PartitionSpec(None, "fsdp", None)),
      ("erasers", "up_w"): ((30, 128, 1536), ("layers", None, "embed"), PartitionSpec(None, None, "fsdp")),
      ("shared", "embedding"): ((256384, 4096), ("vocab", "embed"), PartitionSpec("tensor", "fsdp")),
      ("proj_out", "kernel"): ((1536, 64), ("embed", None), PartitionSpec("fsdp", None)),
  }
  for path, (shape, axes, spec) in cases.items():
    assert logical_axes(path, shape) == axes, path
    assert partition_spec(axes, shape, mesh) == spec, path
  # An axis the mesh does not divide stays replicated.
  assert partition_spec(("layers", "embed", "heads"), (2, 24, 3), mesh) == PartitionSpec(None, "fsdp", None)


SCRIPT = textwrap.dedent('''
    import sys
    sys.path[:0] = [".", "tests"]
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    jax.config.update("jax_default_matmul_precision", "highest")
    import t2vu_jax
    from conftest import build_diffusers_transformer, TINY
    from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
    from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step
    from t2vu_jax.models.erasers import EraserConfig, attach_erasers, EraserParam
    from t2vu_jax.sharding import MeshConfig, make_mesh, shard_module
    assert len(jax.devices()) == 8
    config = dict(TINY, num_attention_heads=2, attention_head_dim=16, text_dim=16, ffn_dim=64)
    path = sys.argv[1]
    build_diffusers_transformer(config).save_pretrained(path)
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    batch = ErasureBatch(f(2, 4, 3, 4, 6), jnp.array([700., 200.]), jnp.array([.7, .2]), f(2, 9, 16), f(2, 9, 16),
                         jnp.zeros((2, 9)).at[:, 2:4].set(1.0), f(2, 4, 3, 4, 6), jnp.array([300., 900.]), f(2, 9, 16))

    def run(mesh):
      model = attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False), EraserConfig(rank=8))
      rng_e = np.random.default_rng(1)
      model.erasers.up_w[...] = jnp.asarray(0.1 * rng_e.standard_normal(model.erasers.up_w.shape), jnp.float32)
      if mesh is not None:
        shard_module(model, mesh)
      tx = make_optimizer(OptimConfig(learning_rate=1e-2))
      graphdef, state = init_train_state(model, tx)
      step = make_train_step(graphdef, tx, ObjectiveConfig(lambda_loc=1.0, lambda_pre=1.0))
      losses = []
      for i in range(2):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
      return state, losses

    ref_state, ref_losses = run(None)
    for spec in ("8x1x1x1", "1x8x1x1", "2x2x1x2", "1x2x2x2"):
      mesh = make_mesh(MeshConfig.parse(spec), num_heads=2)
      state, losses = run(mesh)
      q = state.base["blocks"]["attn1"]["to_q"]["kernel"][...]
      down = state.erasers["erasers"]["down_w"][...]
      assert len(q.sharding.device_set) == 8
      fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
      if fsdp > 1:
        assert q.sharding.spec[1] == "fsdp" and down.sharding.spec[1] == "fsdp", (spec, q.sharding, down.sharding)
      if tensor > 1:
        assert q.sharding.spec[2] == "tensor", (spec, q.sharding)
      if fsdp > 1 or tensor > 1:
        assert q.addressable_shards[0].data.size < q.size  # really split, not replicated
      np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=spec)
      for (p, a), (_, b) in zip(nnx.to_flat_state(state.erasers), nnx.to_flat_state(ref_state.erasers)):
        np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), atol=2e-6, err_msg=f"{spec} {p}")
      print(spec, "ok", losses)

    # Loading straight into shardings, from a diffusers directory and from our Flax format.
    from convert.flax_checkpoint import save_flax_transformer
    mesh = make_mesh(MeshConfig.parse("1x4x1x2"), num_heads=2)
    plain = t2vu_jax.load_transformer(path, "float32", progress=False)
    save_flax_transformer(plain, path + "_flax")
    x, t, text = batch.x_t, batch.t, batch.cond
    for source in (path, path + "_flax"):
      sharded = t2vu_jax.load_transformer(source, "float32", progress=False, mesh=mesh)
      q = sharded.blocks.attn1.to_q.kernel[...]
      assert tuple(q.sharding.spec) == (None, "fsdp", "tensor") and q.addressable_shards[0].data.shape == (2, 8, 16), q.sharding
      np.testing.assert_allclose(np.asarray(sharded(x, t, text)), np.asarray(plain(x, t, text)), atol=1e-5)
      print("load", "ok")
''')


def test_sharded_erasure_steps_equal_single_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "transformer")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.count(" ok ") == 4 and result.stdout.count("load ok") == 2, result.stdout


def test_scaling_tool_compiles_for_meshes_and_writes_csv_and_plot(tmp_path):
  import csv
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "t2vu_jax.scaling", "--model", "1.3b", "--meshes", "8x1x1x1,1x8x1x1",
                           "--simulate", "8", "--frames", "1", "--height", "32", "--width", "32", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "scaling_1.3b.csv")))
  assert [r["mesh"] for r in rows] == ["8x1x1x1", "1x8x1x1"] and (tmp_path / "scaling_1.3b.png").stat().st_size > 0
  replicated, sharded = (float(r["argument_gb"]) for r in rows)
  assert sharded < replicated / 4  # bf16 weights split 8 ways over fsdp, replicated under pure data parallelism
