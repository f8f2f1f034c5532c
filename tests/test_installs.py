"""The accelerator install lines of the README pin the JAX that requirements.txt pins, and the GPU check
installs and asks for that same line."""
import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def test_accelerator_install_lines_pin_the_required_jax():
  pinned = re.search(r"^jax==(\S+)$", read("requirements.txt"), re.M).group(1)
  assert re.search(rf"^jaxlib=={re.escape(pinned)}$", read("requirements.txt"), re.M)
  lines = re.findall(r'^pip install -r requirements\.txt "jax\[(\w+)\]==(\S+)"', read("README.md"), re.M)
  assert {extra for extra, _ in lines} == {"cuda12", "tpu"}
  assert all(version == pinned for _, version in lines), (lines, pinned)


def test_the_gpu_check_reads_the_pin_and_refuses_without_a_gpu(tmp_path):
  script = read("benchmarks/gpu_check.sh")
  assert "jax[cuda12]==${JAX_VERSION}" in script and not re.search(r"jax\[cuda12\]==\d", script)
  for tool in ("sed", "dirname"):  # a PATH without nvidia-smi, whatever this machine has
    os.symlink(shutil.which(tool), tmp_path / tool)
  result = subprocess.run([shutil.which("bash"), "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PATH=str(tmp_path)), timeout=60)
  assert result.returncode == 2 and "no NVIDIA GPU here" in result.stderr, result.stderr
