"""Minimal streaming safetensors reader and writer on numpy (bf16 via ml_dtypes).

The reader maps the file and hands out one tensor at a time as a read-only view, then drops the
pages it touched, so converting a checkpoint never keeps the file's bytes resident beside our own
buffers. The writer computes the header from shapes first and then streams one tensor at a time,
so a shard is never assembled in memory.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Callable, Iterable, NamedTuple

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_PAGE = mmap.PAGESIZE


class SafetensorsError(ValueError):
  """A safetensors file that cannot be read as such (named in the message)."""


class TensorInfo(NamedTuple):
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file
  end: int


class SafetensorsFile:
  """Read-only, memory-mapped safetensors file. Use as a context manager."""

  def __init__(self, path: str):
    self.path = str(path)
    size = os.path.getsize(self.path)
    self._file = open(self.path, "rb")
    try:
      self.tensors, self.metadata = self._read_header(size)
      self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except Exception:
      self._file.close()
      raise

  def _read_header(self, size: int):
    if size < 8:
      raise SafetensorsError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
    (n,) = struct.unpack("<Q", self._file.read(8))
    if 8 + n > size:
      raise SafetensorsError(f"{self.path}: truncated or not a safetensors file (header claims {n} bytes, "
                             f"file has {size})")
    try:
      header = json.loads(self._file.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise SafetensorsError(f"{self.path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
      raise SafetensorsError(f"{self.path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                             "not an object)")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    tensors = {}
    for name, t in header.items():
      if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= set(t) \
          or not isinstance(t["shape"], list) or not isinstance(t["data_offsets"], list) \
          or len(t["data_offsets"]) != 2:
        raise SafetensorsError(f"{self.path}: corrupt safetensors header: tensor {name!r} lacks a dtype, shape "
                               "or [begin, end] data_offsets")
      if t["dtype"] not in DTYPES:
        raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {t['dtype']}")
      dtype, shape = DTYPES[t["dtype"]], tuple(t["shape"])
      begin, end = t["data_offsets"]
      if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise SafetensorsError(f"{self.path}: tensor {name!r} byte range does not match its shape {shape}")
      if base + end > size:
        raise SafetensorsError(f"{self.path}: truncated: tensor {name!r} ends at byte {base + end}, "
                               f"file has {size} bytes")
      tensors[name] = TensorInfo(dtype, shape, base + begin, base + end)
    return tensors, metadata

  def keys(self):
    return self.tensors.keys()

  def read(self, name: str) -> np.ndarray:
    """A read-only view of tensor `name` on the mapped file (valid until `release`/`close`)."""
    t = self.tensors[name]
    if t.end == t.start:
      return np.zeros(t.shape, t.dtype)
    return np.frombuffer(self._mmap, dtype=t.dtype, count=(t.end - t.start) // t.dtype.itemsize,
                         offset=t.start).reshape(t.shape)

  def release(self, name: str):
    """Drop the mapped pages of tensor `name` from this process' resident memory."""
    t = self.tensors[name]
    start = t.start - t.start % _PAGE
    if t.end > start and hasattr(self._mmap, "madvise"):
      self._mmap.madvise(mmap.MADV_DONTNEED, start, t.end - start)

  def close(self):
    if self._mmap is not None:
      try:
        self._mmap.close()
      except BufferError:  # a view is still alive; the mapping goes when it does
        pass
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class TensorSpec(NamedTuple):
  """A tensor to write: its name, shape, dtype, and a function that produces its values."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]


def write_safetensors(path: str, specs: Iterable[TensorSpec], metadata: dict[str, str] | None = None) -> int:
  """Write tensors one at a time; returns the number of data bytes written."""
  specs = list(specs)
  header, offset = {}, 0
  for s in specs:
    nbytes = np.dtype(s.dtype).itemsize * int(np.prod(s.shape, dtype=np.int64))
    header[s.name] = {"dtype": DTYPE_NAMES[np.dtype(s.dtype)], "shape": list(s.shape),
                      "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the reference writer does
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for s in specs:
      a = np.asarray(s.produce(), dtype=s.dtype)
      a = np.ascontiguousarray(a) if a.ndim else a  # ascontiguousarray would make a scalar 1-d
      if a.shape != tuple(s.shape):
        raise ValueError(f"tensor {s.name!r}: produced shape {a.shape}, declared {tuple(s.shape)}")
      f.write(a.reshape(-1).view(np.uint8).data)
  return offset
