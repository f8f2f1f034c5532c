#!/usr/bin/env bash
# GPU check: forward time, erasure train-step time and MFU of a random-weight Wan transformer (Wan2.1
# 1.3B by default; --model 14b, or --model 5b for Wan2.2 TI2V-5B) at 480x832x17, bf16, cuDNN attention,
# on the first GPU. Needs an NVIDIA GPU and jax with CUDA; refuses otherwise. The 1.3B check took about
# a minute on an H200 (stopped at 8 minutes).
#
#   bash benchmarks/gpu_check.sh [--install] [options of benchmarks/gpu_check.py, e.g. --model 5b --repeats 10]
#
# --install first makes .venv with the README's GPU install line: requirements.txt and jax[cuda12] at
# the JAX version requirements.txt pins.
set -euo pipefail
cd "$(dirname "$0")/.."
JAX_VERSION="$(sed -n 's/^jax==//p' requirements.txt)"
GPU_INSTALL=(pip install -r requirements.txt "jax[cuda12]==${JAX_VERSION}")

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists none); run this on a GPU machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1
if [ "${1:-}" = "--install" ]; then
  shift
  [ -f .venv/bin/activate ] || python3 -m venv .venv
  . .venv/bin/activate
  "${GPU_INSTALL[@]}"
fi
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi
if ! python -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; then
  echo "gpu_check: this python's jax sees no GPU; install the CUDA build: ${GPU_INSTALL[*]} (or run with --install)" >&2
  exit 2
fi
python -c 'import jax, jaxlib; print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}")'
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"  # one GPU
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
status=0
timeout 480 python benchmarks/gpu_check.py "$@" || status=$?
if [ "$status" -eq 124 ]; then
  echo "gpu_check: stopped after 8 minutes" >&2
fi
exit "$status"
