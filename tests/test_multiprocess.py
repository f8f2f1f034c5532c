"""Two processes joined into one JAX job on this machine (4 simulated CPU devices each, CPU
collectives over gloo), as on two hosts: erasure steps on 8-device global meshes equal one
device's, and a whole erasure run writes its run directory from process 0 alone."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, DEVICES_PER_PROCESS = 2, 4
TIMEOUT_S = 900


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def wait_all(procs, timeout):
  """Exit codes once all have exited; stops waiting as soon as one fails (the others would wait in
  a collective for it) or at the timeout, leaving the rest running for the caller to end."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
      return codes
    time.sleep(0.5)
  return [p.poll() for p in procs]


def run_processes(argv, logs_dir) -> list[str]:
  """Run `argv` as process 0 and 1 of one job; their stdout, after checking both succeeded."""
  coordinator = f"localhost:{free_port()}"
  procs, files = [], []
  try:
    for i in range(PROCESSES):
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
                 JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(PROCESSES), JAX_PROCESS_ID=str(i))
      out, err = open(logs_dir / f"out{i}", "w"), open(logs_dir / f"err{i}", "w")
      files += [out, err]
      procs.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=err))
    codes = wait_all(procs, TIMEOUT_S)
  finally:
    for p in procs:  # still running after a failure or the timeout (waiting in a collective): end it
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in files:
      f.close()
  for i, code in enumerate(codes):
    assert code == 0, f"process {i} exited with {code}:\n" + (logs_dir / f"err{i}").read_text()[-4000:]
  return [(logs_dir / f"out{i}").read_text() for i in range(PROCESSES)]


def test_two_process_erasure_steps_equal_single_device(tmp_path):
  meshes = ("1x8x1x1", "2x2x1x2")
  outputs = run_processes([os.path.join("tests", "sharded_steps.py"), str(tmp_path / "transformer"),
                           "--meshes", ",".join(meshes), "--devices", str(PROCESSES * DEVICES_PER_PROCESS)], tmp_path)
  results = [sorted(line for line in out.splitlines() if " ok " in line) for out in outputs]
  assert [line.split()[0] for line in results[0]] == sorted(meshes), outputs[0]
  assert results[0] == results[1]  # the same losses on both processes


@pytest.mark.slow  # about 1.5 min on 2 cores; the step test above runs by default
def test_two_process_run_writes_from_process_0(wan_pipeline_dir, tmp_path):
  from test_run import TINY_OVERRIDES
  _, path = wan_pipeline_dir()
  run = tmp_path / "run"
  flags = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, "model.path": path, "workdir": run}.items()]
  outputs = run_processes(["run.py", "--config=configs/wan_nudity.py", *flags], tmp_path)
  assert '"run_dir"' in outputs[0] and '"run_dir"' not in outputs[1]  # only process 0 prints
  for stage in ("load", "encode", "erase", "export", "evaluate", "report"):
    assert (run / "stages" / stage).exists(), stage
  metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in metrics)
  assert sorted(os.listdir(run / "samples")) == ["000_seed0_base.mp4", "000_seed0_erased.mp4"]
  assert (run / "export" / "adapter" / "erasers.safetensors").exists() and (run / "report.md").exists()
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
