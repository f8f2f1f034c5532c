"""Dependencies point one way: run.py -> configs -> t2vu_jax, and convert -> t2vu_jax. The library never
imports `convert` or `configs`, not even lazily inside a function."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = ("convert", "configs")


def imported_modules(path):
  """(line, module) of every import statement in the file, at any depth."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from ((node.lineno, alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.lineno, node.module
    elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
        "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
      yield node.lineno, str(node.args[0].value)


def library_files():
  for directory, _, files in os.walk(os.path.join(ROOT, "t2vu_jax")):
    yield from (os.path.join(directory, f) for f in sorted(files) if f.endswith(".py"))


def test_the_library_imports_neither_convert_nor_configs():
  offending = [f"{os.path.relpath(path, ROOT)}:{line} imports {module}"
               for path in library_files() for line, module in imported_modules(path)
               if module.split(".")[0] in FORBIDDEN]
  assert not offending, "\n".join(offending)


@pytest.mark.parametrize("source, expected", [
    ("import convert.torch_erasers", ["convert.torch_erasers"]),
    ("def f():\n  from configs.base import get_config", ["configs.base"]),
    ("import importlib\nimportlib.import_module('configs.toy')", ["importlib", "configs.toy"]),
    ("from . import x\nfrom t2vu_jax.io import errors", ["t2vu_jax.io"]),
])
def test_the_import_scan_sees_every_form(tmp_path, source, expected):
  path = tmp_path / "m.py"
  path.write_text(source)
  assert [m for _, m in imported_modules(str(path))] == expected
