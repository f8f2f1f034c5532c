"""Device meshes and parameter placement (DESIGN §6).

Mesh axes `(data, fsdp, context, tensor)`: batch (and the CFG pair) over `data`, every large weight
matrix split over `fsdp` along its model dimension, attention heads and FFN hidden units over
`tensor`, video tokens over `context`. A parameter's placement follows from a logical name per
array axis ("embed", "heads", "mlp", "vocab", "layers", ...) and `LOGICAL_RULES`, which map logical
names to mesh axes. An axis whose size the mesh axis does not divide stays replicated.

Activations follow the same rules through `constrain` (batch over data x fsdp, tokens over
context, heads and FFN units over tensor, the model dimension replicated), but only while a mesh is
in context (`with jax.set_mesh(mesh):`); without one the model runs unconstrained.

Multi-process runs (one process per host): `initialize_distributed` joins the job, every process
runs every computation (collectives need all of them), and only `is_primary()` writes files;
`sync_processes` is a barrier and `to_host` brings arrays sharded across processes to every host.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "context", "tensor")
LOGICAL_RULES = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "tokens": "context",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; one of them may be -1 (whatever the device count leaves)."""
  data: int = 1
  fsdp: int = -1
  context: int = 1
  tensor: int = 1

  @classmethod
  def parse(cls, text: str) -> "MeshConfig":
    """'2x2x1x2' (data x fsdp x context x tensor)."""
    parts = str(text).lower().split("x")
    if len(parts) != len(AXES):
      raise ValueError(f"mesh {text!r}: expected 4 sizes data x fsdp x context x tensor, e.g. 1x8x1x1")
    try:
      return cls(*(int(p) for p in parts))
    except ValueError:
      raise ValueError(f"mesh {text!r}: sizes must be integers (-1 for one auto-filled axis)") from None

  def shape(self, num_devices: int) -> tuple[int, ...]:
    sizes = [self.data, self.fsdp, self.context, self.tensor]
    if sum(s == -1 for s in sizes) > 1:
      raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh {sizes}: sizes must be positive (or -1 for one auto-filled axis)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"mesh {sizes}: the fixed axes ({known} devices) do not divide the {num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))} has {math.prod(sizes)} devices but {num_devices} are "
                       "available; make the product of the axes equal the device count (or use -1 for one axis)")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices=None, num_heads: int | None = None) -> Mesh:
  """The `(data, fsdp, context, tensor)` mesh over `devices` (default: all), validated."""
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices))
  tensor = shape[AXES.index("tensor")]
  if num_heads is not None and num_heads % tensor:
    divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
    raise ValueError(f"mesh tensor={tensor} does not divide the model's {num_heads} attention heads; choose "
                     f"tensor from {divisors}")
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Join a multi-process JAX job when the arguments or the environment describe one; returns
  whether it did. The environment: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), with
  `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, or without them on a cluster JAX detects by itself
  (SLURM, Open MPI, Kubernetes, Cloud TPU). A single process (nothing set) is a no-op."""
  env = os.environ.get
  coordinator_address = coordinator_address or env("JAX_COORDINATOR_ADDRESS")
  if coordinator_address is None:
    return False
  if num_processes is None and env("JAX_NUM_PROCESSES"):
    num_processes = int(env("JAX_NUM_PROCESSES"))
  if process_id is None and env("JAX_PROCESS_ID"):
    process_id = int(env("JAX_PROCESS_ID"))
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def is_primary() -> bool:
  """Whether this is process 0, the only one that logs to files, writes reports and exports."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """Barrier across all processes (no-op in a single process): e.g. after process 0 wrote files the
  others read next."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def to_host(tree):
  """Arrays of `tree` as numpy arrays on this host. Arrays split across processes are gathered (a
  collective: every process must call it); in a single process this is `jax.device_get`."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def fetch(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(fetch, tree)


# ----------------------------------------------------------------------------------------------
# Logical axes of every parameter


KERNEL_AXES = {  # (in, out) of projection kernels, by module name; any other kernel: ("embed", None)
    **{n: ("embed", "heads") for n in ("to_q", "to_k", "to_v", "q", "k", "v")},
    **{n: ("heads", "embed") for n in ("to_out", "o")},
    **{n: ("embed", "mlp") for n in ("net_0_proj", "wi_0", "wi_1")},
    **{n: ("mlp", "embed") for n in ("net_2", "wo")},
}


def logical_axes(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str | None, ...]:
  """Logical names of the axes of the parameter at `path` (NNX path) with `shape`."""
  names = [str(p) for p in path]
  leaf, owner = names[-1], names[-2] if len(names) > 1 else ""
  stacked = names[0] in ("blocks", "layers", "erasers")
  core = shape[1:] if stacked else shape
  if leaf == "kernel" and len(core) == 2:
    axes = KERNEL_AXES.get(owner, ("embed", None))
  elif len(core) == 2 and (leaf == "down_w" or leaf.endswith("_a")):  # eraser D -> r
    axes = ("embed", None)
  elif len(core) == 2 and (leaf == "up_w" or leaf.endswith("_b")):    # eraser r -> D
    axes = (None, "embed")
  elif leaf == "embedding":
    axes = ("vocab", "embed")
  else:  # biases, norms, modulation tables, relative position biases, convs: small, replicated
    axes = (None,) * len(core)
  return (("layers",) if stacked else ()) + tuple(axes)


def mesh_axes(name: str | None, mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes of more than one device that the logical axis `name` maps to."""
  target = LOGICAL_RULES.get(name) if name else None
  targets = (target,) if isinstance(target, str) else tuple(target or ())
  return tuple(t for t in targets if mesh.shape[t] > 1)


def partition_spec(axes, shape, mesh: Mesh) -> PartitionSpec:
  """Map logical axes to mesh axes. An axis mapped to several mesh axes (batch: data, fsdp) is split
  over the longest leading run of them whose product divides it; one that none divides stays
  replicated."""
  spec, used = [], set()
  for name, size in zip(axes, shape):
    targets = tuple(t for t in mesh_axes(name, mesh) if t not in used)
    while targets and size % math.prod(mesh.shape[t] for t in targets):
      targets = targets[:-1]
    spec.append((targets[0] if len(targets) == 1 else targets) if targets else None)
    used.update(targets)
  return PartitionSpec(*spec)


def param_shardings(module_or_state, mesh: Mesh):
  """A `NamedSharding` for every leaf of `module_or_state` (an NNX module or state), as a state."""
  state = nnx.state(module_or_state) if isinstance(module_or_state, nnx.Module) else module_or_state
  return nnx.from_flat_state([(path, v.replace(NamedSharding(mesh, partition_spec(
      logical_axes(path, v.shape), v.shape, mesh)))) for path, v in nnx.to_flat_state(state)])


def shard_module(module: nnx.Module, mesh: Mesh) -> nnx.Module:
  """Move every array of `module` to its sharding on `mesh` (in place) and return the module."""
  state = nnx.state(module)
  shardings = param_shardings(state, mesh)
  nnx.update(module, jax.tree.map(lambda a, s: jax.device_put(a, s), state, shardings))
  return module


def placer(mesh: Mesh):
  """`place(path, host_array)` for the streaming converters: each weight goes straight to its shards."""
  def place(path, array):
    spec = partition_spec(logical_axes(path, array.shape), array.shape, mesh)
    return jax.device_put(array, NamedSharding(mesh, spec))
  return place


def constrain(x, *axes):
  """`x` pinned to the logical `axes` (one name or None per dimension) on the mesh in context
  (`with jax.set_mesh(mesh):`, a `(data, fsdp, context, tensor)` mesh of more than one device);
  `x` unchanged when there is none. None (and a name whose mesh axes have one device) means
  replicated; a name whose mesh axes do not divide the dimension leaves it to XLA."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or tuple(mesh.axis_names) != AXES:
    return x
  # An axis its mesh axes cannot split (a batch of 8 over 64 devices) is left to XLA, not replicated.
  spec = [PartitionSpec.UNCONSTRAINED if s is None and mesh_axes(name, mesh) else s
          for name, s in zip(axes, partition_spec(axes, x.shape, mesh))]
  return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh, ndim: int, batch: int) -> NamedSharding:
  """Arrays with a leading batch axis: split over (data, fsdp) as far as the batch divides."""
  return NamedSharding(mesh, partition_spec(("batch",) + (None,) * (ndim - 1), (batch,) + (1,) * (ndim - 1), mesh))
