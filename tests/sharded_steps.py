"""Erasure steps of a tiny Wan transformer on device meshes, checked against one device.

Run as a script in a fresh process whose `XLA_FLAGS` simulate several CPU devices (tests/test_sharding.py,
one process with 8 devices; tests/test_multiprocess.py, several processes joined into one job):

  python tests/sharded_steps.py MODEL_DIR --meshes 1x8x1x1,2x2x1x2 [--loading]

A process joins a multi-process job when its environment says so (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: `t2vu_jax.sharding.initialize_distributed`, as run.py does).

Every process saves the same random model to MODEL_DIR (suffixed with its process id when there are
several), runs two train steps on one local device as the reference, then two on each mesh with the
mesh in context (activation sharding constraints on), and checks the losses and the trained
erasers against the reference. It prints one line per mesh, `<mesh> ok <losses>`, and `load ok`
for each checked way of loading straight into shardings.
"""
import argparse
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from builders import TINY  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

CONFIG = dict(TINY, num_attention_heads=2, attention_head_dim=16, text_dim=16, ffn_dim=64)
LOSS_RTOL, ERASER_ATOL = 1e-5, 2e-6


def make_batch():
  from t2vu_jax.erase.objective import ErasureBatch
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return ErasureBatch(x_t=f(2, 4, 3, 4, 6), t=jnp.array([700., 200.]), sigma=jnp.array([.7, .2]),
                      cond=f(2, 9, 16), uncond=f(2, 9, 16), concept_mask=jnp.zeros((2, 9)).at[:, 2:4].set(1.0),
                      x_pre=f(2, 4, 3, 4, 6), t_pre=jnp.array([300., 900.]), cond_pre=f(2, 9, 16))


def run_steps(path, batch, mesh=None, steps=2):
  """(train state, losses) after `steps` steps; on `mesh` (in context) when given, else one device."""
  import t2vu_jax
  from t2vu_jax.erase.objective import ObjectiveConfig
  from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step
  from t2vu_jax.models.erasers import EraserConfig, attach_erasers
  from t2vu_jax.sharding import shard_module
  model = attach_erasers(t2vu_jax.load_transformer(path, "float32", progress=False), EraserConfig(rank=8))
  rng = np.random.default_rng(1)
  model.erasers.up_w[...] = jnp.asarray(0.1 * rng.standard_normal(model.erasers.up_w.shape), jnp.float32)
  if mesh is not None:
    shard_module(model, mesh)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2))
  graphdef, state = init_train_state(model, tx)
  step = make_train_step(graphdef, tx, ObjectiveConfig(lambda_loc=1.0, lambda_pre=1.0))
  losses = []
  for i in range(steps):
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  return state, losses


def check_mesh(spec, path, batch, reference):
  """Steps on mesh `spec` over all (global) devices: really sharded, and equal to `reference`."""
  from t2vu_jax.sharding import MeshConfig, make_mesh, to_host
  ref_state, ref_losses = reference
  mesh = make_mesh(MeshConfig.parse(spec), num_heads=CONFIG["num_attention_heads"])
  state, losses = run_steps(path, batch, mesh)
  q = state.base["blocks"]["attn1"]["to_q"]["kernel"][...]
  down = state.erasers["erasers"]["down_w"][...]
  assert len(q.sharding.device_set) == mesh.size == jax.device_count()
  fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
  if fsdp > 1:
    assert q.sharding.spec[1] == "fsdp" and down.sharding.spec[1] == "fsdp", (spec, q.sharding, down.sharding)
  if tensor > 1:
    assert q.sharding.spec[2] == "tensor", (spec, q.sharding)
  if fsdp > 1 or tensor > 1:
    assert q.addressable_shards[0].data.size < q.size  # really split, not replicated
  np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL, err_msg=spec)
  erasers = to_host(state.erasers)  # gathered from every process when the mesh spans several
  for (p, a), (_, b) in zip(nnx.to_flat_state(erasers), nnx.to_flat_state(ref_state.erasers)):
    np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), atol=ERASER_ATOL, err_msg=f"{spec} {p}")
  print(spec, "ok", losses, flush=True)


def check_loading(path, batch):
  """Loading straight into shardings, from a diffusers directory and from our Flax format."""
  import t2vu_jax
  from t2vu_jax.models.wan_params import save_flax_transformer
  from t2vu_jax.sharding import MeshConfig, make_mesh
  mesh = make_mesh(MeshConfig.parse("1x4x1x2"), num_heads=CONFIG["num_attention_heads"])
  plain = t2vu_jax.load_transformer(path, "float32", progress=False)
  save_flax_transformer(plain, path + "_flax")
  x, t, text = batch.x_t, batch.t, batch.cond
  for source in (path, path + "_flax"):
    sharded = t2vu_jax.load_transformer(source, "float32", progress=False, mesh=mesh)
    q = sharded.blocks.attn1.to_q.kernel[...]
    assert tuple(q.sharding.spec) == (None, "fsdp", "tensor"), q.sharding
    assert q.addressable_shards[0].data.shape == (2, 8, 16), q.sharding
    np.testing.assert_allclose(np.asarray(sharded(x, t, text)), np.asarray(plain(x, t, text)), atol=1e-5)
    print("load", "ok", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("model_dir")
  p.add_argument("--meshes", default="8x1x1x1,1x8x1x1,2x2x1x2,1x2x2x2")
  p.add_argument("--devices", type=int, default=8, help="global device count the meshes expect")
  p.add_argument("--loading", action="store_true", help="also check loading into shardings")
  args = p.parse_args(argv)
  from t2vu_jax.sharding import initialize_distributed
  path = args.model_dir
  if initialize_distributed():
    path = f"{path}_{jax.process_index()}"  # each process writes its own copy of the same model
  assert jax.device_count() == args.devices, (jax.device_count(), args.devices)
  from builders import build_diffusers_transformer
  build_diffusers_transformer(CONFIG).save_pretrained(path)
  batch = make_batch()
  reference = run_steps(path, batch)
  for spec in args.meshes.split(","):
    check_mesh(spec, path, batch, reference)
  if args.loading:
    check_loading(path, batch)


if __name__ == "__main__":
  main()
