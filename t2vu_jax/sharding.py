"""Device meshes and parameter placement (DESIGN §6).

Mesh axes `(data, fsdp, context, tensor)`: batch (and the CFG pair) over `data`, every large weight
matrix split over `fsdp` along its model dimension, attention heads and FFN hidden units over
`tensor`, video tokens over `context`. A parameter's placement follows from a logical name per
array axis ("embed", "heads", "mlp", "vocab", "layers", ...) and `LOGICAL_RULES`, which map logical
names to mesh axes. An axis whose size the mesh axis does not divide stays replicated.
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


def initialize_distributed() -> None:
  """Join a multi-process JAX job when the environment describes one (no-op otherwise)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def is_primary() -> bool:
  """Only process 0 logs, writes reports and exports."""
  return jax.process_index() == 0


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


def partition_spec(axes, shape, mesh: Mesh) -> PartitionSpec:
  """Map logical axes to mesh axes; an axis the mesh axes do not divide stays replicated."""
  spec, used = [], set()
  for name, size in zip(axes, shape):
    target = LOGICAL_RULES.get(name) if name else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used and mesh.shape[t] > 1)
    if targets and size % math.prod(mesh.shape[t] for t in targets) == 0:
      spec.append(targets[0] if len(targets) == 1 else targets)
      used.update(targets)
    else:
      spec.append(None)
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
    return jax.device_put(array, NamedSharding(mesh, partition_spec(logical_axes(path, array.shape), array.shape, mesh)))
  return place


def batch_sharding(mesh: Mesh, ndim: int, batch: int) -> NamedSharding:
  """Arrays with a leading batch axis: split over (data, fsdp) as far as the batch divides."""
  return NamedSharding(mesh, partition_spec(("batch",) + (None,) * (ndim - 1), (batch,) + (1,) * (ndim - 1), mesh))
