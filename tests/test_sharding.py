"""Meshes, logical axis rules, and sharded erasure steps equal to the single-device ones."""
import os
import subprocess
import sys

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
  with pytest.raises(ValueError,
                     match=r"tensor=2 does not divide the model's 3 attention heads; choose tensor from \[1, 3\]"):
    make_mesh(MeshConfig(1, 1, 1, 2), devices=jax.devices() * 2, num_heads=3)


def test_logical_axes_and_partition_specs():
  mesh = AbstractMesh((2, 2, 1, 2), AXES)
  cases = {
      ("blocks", "attn1", "to_q", "kernel"):
          ((30, 1536, 1536), ("layers", "embed", "heads"), PartitionSpec(None, "fsdp", "tensor")),
      ("blocks", "attn2", "to_out", "kernel"):
          ((30, 1536, 1536), ("layers", "heads", "embed"), PartitionSpec(None, "tensor", "fsdp")),
      ("blocks", "ffn", "net_0_proj", "kernel"):
          ((30, 1536, 8960), ("layers", "embed", "mlp"), PartitionSpec(None, "fsdp", "tensor")),
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


def test_batch_splits_over_the_leading_mesh_axes_that_divide_it():
  mesh = AbstractMesh((2, 4, 1, 1), AXES)
  assert partition_spec(("batch", None), (8, 5), mesh) == PartitionSpec(("data", "fsdp"), None)
  assert partition_spec(("batch", None), (2, 5), mesh) == PartitionSpec("data", None)   # data alone divides 2
  assert partition_spec(("batch", None), (3, 5), mesh) == PartitionSpec(None, None)


def test_activation_constraints_only_under_a_mesh_in_context():
  import jax
  import jax.numpy as jnp
  from t2vu_jax.sharding import constrain
  f = lambda x: constrain(x, "batch", "tokens", None) * 2
  constraints = lambda jaxpr: [e.params["sharding"].spec for e in jaxpr.eqns
                               if e.primitive.name == "sharding_constraint"]
  x = jnp.zeros((4, 6, 8))
  assert constraints(jax.make_jaxpr(f)(x)) == []
  with jax.sharding.use_abstract_mesh(AbstractMesh((2, 2, 2, 1), AXES)):
    assert constraints(jax.make_jaxpr(f)(x)) == [PartitionSpec(("data", "fsdp"), "context", None)]
    # A batch of 3 fits neither data nor fsdp: left to XLA rather than replicated.
    assert constraints(jax.make_jaxpr(f)(jnp.zeros((3, 6, 8)))) == [
        PartitionSpec(PartitionSpec.UNCONSTRAINED, "context", None)]
  with jax.sharding.use_abstract_mesh(AbstractMesh((2, 4, 1, 1), AXES)):  # context of 1: tokens replicated
    assert constraints(jax.make_jaxpr(f)(x)) == [PartitionSpec("data", None, None)]
  with jax.sharding.use_abstract_mesh(AbstractMesh((1, 1, 1, 1), AXES)):  # one device: nothing to constrain
    assert constraints(jax.make_jaxpr(f)(x)) == []


def test_sharded_erasure_steps_equal_single_device(tmp_path):
  """tests/sharded_steps.py on 8 simulated devices: the steps on meshes 8x1x1x1, 1x8x1x1, 2x2x1x2 and
  1x2x2x2 (activation constraints on) equal one device's, and loading into shardings is exact."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, os.path.join("tests", "sharded_steps.py"), str(tmp_path / "transformer"),
                           "--meshes", "8x1x1x1,1x8x1x1,2x2x1x2,1x2x2x2", "--loading"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.count(" ok ") == 4 and result.stdout.count("load ok") == 2, result.stdout


def test_scaling_tool_compiles_for_meshes_and_writes_csv_and_plot(tmp_path):
  import csv
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "t2vu_jax.scaling", "--model", "1.3b", "--meshes", "8x1x1x1,1x8x1x1",
                           "--simulate", "8", "--frames", "1", "--height", "32", "--width", "32",
                           "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "scaling_1.3b.csv")))
  assert [r["mesh"] for r in rows] == ["8x1x1x1", "1x8x1x1"] and (tmp_path / "scaling_1.3b.png").stat().st_size > 0
  replicated, sharded = (float(r["argument_gb"]) for r in rows)
  assert sharded < replicated / 4  # bf16 weights split 8 ways over fsdp, replicated under pure data parallelism


def test_the_a14b_scaling_row_keeps_both_experts_on_the_devices(tmp_path):
  import csv
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "t2vu_jax.scaling", "--model", "a14b", "--meshes", "1x8x1x1",
                           "--simulate", "8", "--frames", "1", "--height", "32", "--width", "32",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = csv.DictReader(open(tmp_path / "scaling_a14b.csv"))
  import jax
  from flax import nnx
  from t2vu_jax.models.wan import WanConfig, WanTransformer
  model = nnx.eval_shape(lambda: WanTransformer(WanConfig.wan22_a14b(), rngs=nnx.Rngs(0)))
  expert_gb = sum(x.size for x in jax.tree.leaves(nnx.state(model))) * 2 / 1e9  # bf16
  assert float(row["argument_gb"]) >= 2 * expert_gb / 8  # two experts' weights, split 8 ways over fsdp


def test_peak_flops_are_looked_up_by_device_name():
  from t2vu_jax.scaling import peak_tflops
  assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert peak_tflops("TPU v5 lite") == 197.0 and peak_tflops("TPU v5p") == 459.0
  assert peak_tflops("cpu") is None  # MFU is then reported as NaN unless --peak-tflops is given
