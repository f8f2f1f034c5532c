"""Strict, streaming transfer of PyTorch tensors into the parameters of an abstract NNX module.

Every model's weights module (`t2vu_jax.models.*_params`) describes its weights as a table of
`Param(path, torch_key, transform)`; this module checks a tensor source against that table (missing,
unexpected, wrong-shape tensors all reported at once) and then reads the tensors one at a time into
preallocated, 64-byte aligned buffers, so peak memory stays near the size of the model. It also finds
a component's weight files (`safetensors_files`, the one shard discovery) and reads a diffusers /
transformers component directory whole (`component_config`, `read_component`).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable, NamedTuple

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.io.safetensors_io import SafetensorsError, SafetensorsFile, TensorSpec


class Transform(NamedTuple):
  name: str
  to_flax: Callable
  to_torch: Callable


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
LINEAR = Transform("linear", lambda a: a.T, lambda a: a.T)  # torch (out, in) ↔ flax (in, out)
CONV3D = Transform("conv3d", lambda a: a.transpose(2, 3, 4, 1, 0),  # (out,in,t,h,w) ↔ (t,h,w,in,out)
                   lambda a: a.transpose(4, 3, 0, 1, 2))
CONV2D = Transform("conv2d", lambda a: a.transpose(2, 3, 1, 0),  # (out,in,h,w) ↔ (h,w,in,out)
                   lambda a: a.transpose(3, 2, 0, 1))


class Param(NamedTuple):
  """One NNX parameter and the checkpoint tensor(s) it comes from.

  A `torch_key` holding `{i}` names one tensor per layer; the parameter then carries a leading layer
  axis (stacked blocks run with `nnx.scan`).
  """
  path: tuple[str, ...]  # as `nnx.to_flat_state` names it
  torch_key: str
  transform: Transform = IDENTITY

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.torch_key

  def torch_keys(self, num_layers: int) -> list[str]:
    return [self.torch_key.format(i=i) for i in range(num_layers)] if self.per_layer else [self.torch_key]

  def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape of one (per-layer) tensor given the NNX parameter's shape."""
    shape = flax_shape[1:] if self.per_layer else flax_shape
    return self.transform.to_torch(np.empty(shape, np.uint8)).shape


class SafetensorsSource:
  """Tensors spread over one or more safetensors files, addressed by key without `prefix`.

  Keys without the prefix are not part of the model (a ComfyUI file may bundle a VAE or text
  encoder beside the prefixed transformer) and are skipped.
  """

  def __init__(self, files: list[str], prefix: str = ""):
    self.files = [SafetensorsFile(f) for f in files]
    self._where = {}  # key without prefix -> (file index, file, key in the file)
    for n, sf in enumerate(self.files):
      for full in sf.keys():
        if not full.startswith(prefix):
          continue
        key = full[len(prefix):]
        if key in self._where:
          raise CheckpointError(f"tensor {full!r} appears in both {self._where[key][1].path} and {sf.path}")
        self._where[key] = (n, sf, full)

  def keys(self):
    return list(self._where)

  def shape(self, key):
    _, sf, full = self._where[key]
    return sf.tensors[full].shape

  def read(self, key):
    _, sf, full = self._where[key]
    return sf.read(full)

  def release(self, key):
    _, sf, full = self._where[key]
    sf.release(full)

  def order(self, keys):
    """Keys sorted by (file, offset) so the files are read front to back."""
    def position(key):
      n, sf, full = self._where[key]
      return n, sf.tensors[full].start
    return sorted(keys, key=position)

  def close(self):
    for sf in self.files:
      sf.close()


class PickleSource:
  """A PyTorch pickle state dict, read with `torch.load(weights_only=True)` (only when allowed)."""

  def __init__(self, files: list[str], prefix: str = ""):
    try:
      import torch
    except ImportError:
      raise CheckpointError("reading PyTorch pickle checkpoints needs torch installed "
                            "(pip install -r requirements-dev.txt)") from None
    self.tensors = {}
    for f in files:
      try:
        sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
      except Exception as e:  # legacy (non-zip) pickles cannot be mapped; others are not checkpoints
        raise CheckpointError(f"{f}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]}); convert it to safetensors") from None
      sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
      for k, v in sd.items():
        if k.startswith(prefix):
          self.tensors[k[len(prefix):]] = v

  def keys(self):
    return list(self.tensors)

  def shape(self, key):
    return tuple(self.tensors[key].shape)

  def read(self, key):
    import torch
    t = self.tensors[key].detach().contiguous()
    if t.dtype == torch.bfloat16:
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  def release(self, key):
    pass

  def order(self, keys):
    return list(keys)

  def close(self):
    self.tensors.clear()


def component_dir(path: str, name: str) -> str:
  """`path` itself, or its `name/` subfolder when `path` is a diffusers pipeline directory."""
  sub = os.path.join(str(path), name)
  return sub if os.path.isdir(sub) else str(path)


def safetensors_files(directory: str, what: str, required: bool = True) -> list[str]:
  """The weight files of a diffusers/transformers component directory: the shards its
  `*.safetensors.index.json` lists, else every `*.safetensors` file. With `required=False` a
  directory without safetensors weights gives [] instead of an error."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"{what}: directory does not exist: {directory}")
  indexes = sorted(glob.glob(os.path.join(directory, "*.safetensors.index.json")))
  if indexes:
    with open(indexes[0]) as f:
      weight_map = json.load(f).get("weight_map", {})
    files = sorted({os.path.join(directory, v) for v in weight_map.values()})
    if missing := [f for f in files if not os.path.exists(f)]:
      raise CheckpointError(f"{indexes[0]} lists shard files that do not exist: {missing}")
    return files
  files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if not files and required:
    raise CheckpointError(f"{what}: no *.safetensors weights in {directory}")
  return files


def component_config(path: str, subfolder: str, what: str) -> tuple[str, dict]:
  """(directory, parsed config.json) of component `subfolder` of a pipeline at `path` (or of the
  component directory `path` itself)."""
  directory = component_dir(path, subfolder)
  if not os.path.isdir(directory):
    raise CheckpointError(f"{what} directory does not exist: {directory}")
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{what}: no config.json in {directory}")
  with open(config_path) as f:
    try:
      return directory, json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None


def parse_config(directory: str, parse: Callable, d: dict):
  """`parse(d)` with its ValueError/TypeError reported as a CheckpointError naming the config file."""
  try:
    return parse(d)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{os.path.join(directory, 'config.json')}: {e}") from None


def read_component(directory: str, what: str, abstract_module: nnx.Module, table: Callable, where: str,
                   num_layers: int = 0, place: Callable | None = None, progress: bool = True) -> nnx.Module:
  """Stream the safetensors weights of component `directory` into `abstract_module`.

  `table(keys) -> (key table, keys to ignore)` picks the table given the tensor names present.
  """
  try:
    source = SafetensorsSource(safetensors_files(directory, what))
  except SafetensorsError as e:
    raise CheckpointError(f"{what}: {e}") from None
  params, ignore = table(set(source.keys()))
  return read_into_module(abstract_module, params, source, num_layers, where, place, progress, desc=what,
                          ignore=frozenset(ignore))


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
  """An uninitialised array whose data is `alignment`-byte aligned (lets CPU jax alias it)."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  offset = -raw.ctypes.data % alignment
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def format_list(names, limit=12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def read_into_module(abstract_module: nnx.Module, table: list[Param], source, num_layers: int = 0,
                     where: str = "checkpoint", place: Callable | None = None,
                     progress: bool = True, desc: str = "converting", ignore: frozenset = frozenset()
                     ) -> nnx.Module:
  """Fill `abstract_module` (from `nnx.eval_shape`) with the tensors `table` names in `source`.

  `source` has keys(), shape(key), read(key) -> numpy, release(key), order(keys) and close().
  Mismatches raise `CheckpointError` naming the tensors, prefixed by `where` (what and from where);
  keys in `ignore` (e.g. a tied duplicate of an embedding) may be present and are not read.
  `place(path, host_array) -> jax.Array` puts each parameter on its device(s); the default is
  `jax.device_put` (zero-copy on CPU). The source is closed in all cases.
  """
  graphdef, abstract = nnx.split(abstract_module)
  flat = dict(nnx.to_flat_state(abstract))
  params = {path: v for path, v in flat.items() if isinstance(v, nnx.Param)}

  expected = {}  # checkpoint key -> (param, layer index or None, checkpoint shape)
  for param in table:
    if param.path not in params:
      raise AssertionError(f"key table names {'.'.join(param.path)}, which the model does not have")
    shape = param.torch_shape(params[param.path].shape)
    for i, key in enumerate(param.torch_keys(num_layers)):
      expected[key] = (param, i if param.per_layer else None, shape)
  if unmapped := set(params) - {p.path for p in table}:
    raise AssertionError(f"model parameters missing from the key table: {sorted(unmapped)}")

  try:
    present = set(source.keys())
    problems = []
    if missing := set(expected) - present:
      problems.append(f"{len(missing)} missing tensor(s): {format_list(missing)}")
    if unexpected := present - set(expected) - ignore:
      problems.append(f"{len(unexpected)} unexpected tensor(s): {format_list(unexpected)}")
    wrong = [f"{k} has shape {tuple(source.shape(k))}, expected {s}"
             for k, (_, _, s) in expected.items() if k in present and tuple(source.shape(k)) != s]
    if wrong:
      problems.append(f"{len(wrong)} tensor(s) with the wrong shape: {'; '.join(wrong[:12])}")
    if problems:
      raise CheckpointError(f"{where}: " + "; ".join(problems))

    buffers = {path: aligned_empty(params[path].shape, params[path].dtype) for path in params}
    non_finite = []
    for key in tqdm(source.order(expected), desc=desc, unit="tensor", disable=not progress):
      param, layer, _ = expected[key]
      value = source.read(key)
      if not np.isfinite(value.astype(np.float32) if value.dtype.kind != "f" else value).all():
        non_finite.append(key)
      dest = buffers[param.path]
      if layer is not None:
        dest = dest[layer]
      dest[...] = param.transform.to_flax(value)
      del value
      source.release(key)
    if non_finite:
      raise CheckpointError(f"{where}: {len(non_finite)} tensor(s) contain NaN or Inf: "
                            f"{format_list(non_finite)}")
  finally:
    source.close()

  place = place or (lambda path, a: jax.device_put(a))
  for path in list(buffers):
    flat[path] = flat[path].replace(place(path, buffers.pop(path)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def module_tensors(module: nnx.Module, table: list[Param], num_layers: int, dtype) -> list[TensorSpec]:
  """The inverse of `read_into_module`: every checkpoint tensor `table` names, in table order (unstacked
  tensors first, then layer by layer), each produced lazily on the host in `dtype`."""
  dtype = np.dtype(dtype)
  flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  host = {}

  def array(path):
    if path not in host:
      host[path] = np.asarray(jax.device_get(flat[path][...]))
    return host[path]

  def spec(param, layer):
    def produce():
      a = array(param.path)
      return param.transform.to_torch(a if layer is None else a[layer]).astype(dtype)
    key = param.torch_key if layer is None else param.torch_key.format(i=layer)
    return TensorSpec(key, param.torch_shape(flat[param.path].shape), dtype, produce)

  specs = [spec(p, None) for p in table if not p.per_layer]
  for i in range(num_layers):
    specs += [spec(p, i) for p in table if p.per_layer]
  return specs
