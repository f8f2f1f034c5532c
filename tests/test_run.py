"""The erasure run end to end on a tiny random Wan pipeline: every stage, resume, config errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import wan_nudity
from t2vu_jax.erase.job import ConfigError, ErasureJob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_POOL = os.path.join(ROOT, "configs", "prompts", "nudity_eval.jsonl")
TINY_OVERRIDES = {
    "model.dtype": "float32", "model.text_dtype": "float32", "video.frames": 5, "video.height": 32,
    "video.width": 48, "optim.total_steps": 4, "log_every": 1, "checkpoint_every": 2, "trajectory.steps": 3,
    "eraser.rank": 4, "prompts.evaluate": EVAL_POOL, "eval.num_prompts": 1, "eval.steps": 2, "eval.frames": 5,
    "eval.height": 32, "eval.width": 48,
}


def tiny_config(model_path, workdir, **changes):
  config = wan_nudity.get_config()
  for key, value in {**TINY_OVERRIDES, "model.path": str(model_path), "workdir": str(workdir), **changes}.items():
    *groups, field = key.split(".")
    node = config
    for g in groups:
      node = node[g]
    node[field] = value
  return config


@pytest.mark.parametrize("config_file, layout", [("wan_nudity", {}), ("wan22_5b_nudity", {"ti2v": True}),
                                                 ("wan22_a14b_nudity", {"boundary_ratio": 0.9})])
def test_run_py_runs_every_stage_of_the_real_config(wan_pipeline_dir, tmp_path, config_file, layout):
  """Wan2.1's config on a tiny Wan2.1 pipeline, Wan2.2 TI2V-5B's and A14B's on tiny pipelines of their
  layouts (A14B: two experts, an eraser set and an export each)."""
  _, path = wan_pipeline_dir(**layout)
  flags = [f"--config.{k}={v}" for k, v in {**TINY_OVERRIDES, "model.path": path, "workdir": tmp_path / "run"}.items()]
  result = subprocess.run([sys.executable, "run.py", f"--config=configs/{config_file}.py", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  run = tmp_path / "run"
  for stage in ("load", "encode", "erase", "export", "evaluate", "report"):
    assert (run / "stages" / stage).exists(), stage
  metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in metrics)
  assert read_scalars(run / "tensorboard", "erase/loss") == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
  evaluation = json.loads((run / "evaluation.json").read_text())
  samples = evaluation["videos"]
  assert len(samples) == 1 and (run / samples[0]["base"]).exists() and (run / samples[0]["erased"]).exists()
  experts = ("transformer", "transformer_2") if "boundary_ratio" in layout else ("",)
  assert all((run / "export" / "adapter" / e / "erasers.safetensors").is_file() for e in experts)
  assert (run / "report.md").exists()
  assert evaluation["scorer"] == "nudenet" and set(evaluation["aggregate"]) == {"base", "erased"}
  assert evaluation["aggregate"]["base"]["frames_scored"] == 5 and "video-level rate" in (run / "report.md").read_text()
  assert json.loads((run / "config.json").read_text())["model"]["path"] == str(path)


@pytest.mark.parametrize("adversarial", [False, pytest.param(True, marks=pytest.mark.slow)])  # its soft tokens too
def test_interrupted_erasure_resumes_to_the_same_erasers(wan_pipeline_dir, tmp_path, adversarial):
  _, path = wan_pipeline_dir()
  changes = {"stages": "load,encode,erase", "objective.adversarial": adversarial}
  whole = ErasureJob(tiny_config(path, tmp_path / "whole", **changes), progress=False)
  whole.run()
  # An interrupted run: two steps, then the same command again with the full length.
  first = ErasureJob(tiny_config(path, tmp_path / "resumed", **changes, **{"optim.total_steps": 2}), progress=False)
  first.run()
  os.remove(tmp_path / "resumed" / "stages" / "erase")  # as if it had stopped before finishing
  second = ErasureJob(tiny_config(path, tmp_path / "resumed", **changes), progress=False)
  summary = second.run()
  assert summary["erase"]["resumed_from"] == 2 and set(summary) == {"erase"}  # finished stages skipped
  from flax import nnx
  from t2vu_jax.models.erasers import EraserParam
  for a, b in zip(nnx.to_flat_state(nnx.state(whole.erased[0], EraserParam)),
                  nnx.to_flat_state(nnx.state(second.erased[0], EraserParam))):
    np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))


def test_a_pooled_run_builds_its_pools_once_and_resumes(wan_pipeline_dir, tmp_path):
  _, path = wan_pipeline_dir()
  pooled = {"stages": "load,encode,erase", "trajectory.model": "frozen", "trajectory.pool_repeats": 2,
            "trajectory.pool_dtype": "bfloat16", "optim.total_steps": 2, "model.remat": "full"}
  run = tmp_path / "run"
  first = ErasureJob(tiny_config(path, run, **pooled), progress=False)
  first.run()
  assert first.pipeline().transformer.remat == "full"
  prompts = first.prompt_set()
  for name, entries in (("erase", prompts.erase.entries), ("preserve", prompts.preserve.entries)):
    settings = json.loads((run / "pool" / name / "pool.json").read_text())
    assert settings["shape"][:3] == [len(entries), 2, 2] and settings["dtype"] == "bfloat16"
    assert len(json.loads((run / "pool" / name / "built.json").read_text())) == 2 * len(entries)
  built = (run / "pool" / "erase" / "built.json").stat().st_mtime_ns
  os.remove(run / "stages" / "erase")
  # A longer run resumes; the cache bound and the remat policy may change, they do not change what is trained.
  longer = ErasureJob(tiny_config(path, run, **{**pooled, "optim.total_steps": 4, "trajectory.pool_cache_mb": 0,
                                                "model.remat": "none"}), progress=False)
  assert longer.run()["erase"]["resumed_from"] == 2
  assert (run / "pool" / "erase" / "built.json").stat().st_mtime_ns == built  # nothing sampled again
  metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in metrics)
  assert all(m["l_pre"] > 0 for m in metrics[2:])  # preservation points come from the preserve pool


def test_prompt_anchor_run_encodes_anchors_and_refuses_stale_embeddings(wan_pipeline_dir, tmp_path):
  from t2vu_jax.erase.prompts import anchor_prompt
  _, path = wan_pipeline_dir()
  job = ErasureJob(tiny_config(path, tmp_path / "anchored", stages="load,encode,erase",
                               **{"objective.anchor": "prompt", "optim.total_steps": 2}), progress=False)
  summary = job.run()
  data = np.load(tmp_path / "anchored" / "embeddings.npz")
  entries = job.prompt_set().erase.entries
  assert summary["encode"]["anchor_prompts"] == len(entries) and data["anchor"].shape == data["erase"].shape
  expected = np.asarray(job.pipeline().encode([anchor_prompt(e) for e in entries[:3]], progress=False))
  np.testing.assert_allclose(data["anchor"][:3], expected, atol=1e-6)
  metrics = [json.loads(line) for line in (tmp_path / "anchored" / "metrics.jsonl").read_text().splitlines()]
  assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
  # Embeddings encoded for the empty anchor cannot silently serve a prompt-anchor erasure.
  plain = tmp_path / "plain"
  ErasureJob(tiny_config(path, plain, stages="load,encode"), progress=False).run()
  with pytest.raises(ConfigError, match=r"objective\.anchor: 'empty' -> 'prompt'"):  # the run's record refuses
    ErasureJob(tiny_config(path, plain, stages="erase", **{"objective.anchor": "prompt"}), progress=False).run()
  os.remove(plain / "config.json")  # without the record, the stored embeddings still refuse
  with pytest.raises(ConfigError, match=r"config\.objective\.anchor: 'prompt' needs anchor embeddings"):
    ErasureJob(tiny_config(path, plain, stages="erase", **{"objective.anchor": "prompt"}), progress=False).run()


def test_replacement_anchor_run_encodes_every_replacement_of_every_prompt(wan_pipeline_dir, tmp_path):
  from t2vu_jax.erase.prompts import replaced_prompt
  _, path = wan_pipeline_dir()
  changes = {"objective.anchor": "replace", "objective.eta": 0.0, "objective.replacements": "clothed, dressed",
             "optim.total_steps": 2}
  job = ErasureJob(tiny_config(path, tmp_path / "replaced", stages="load,encode,erase", **changes), progress=False)
  summary = job.run()
  data = np.load(tmp_path / "replaced" / "embeddings.npz")
  entries = job.prompt_set().erase.entries
  assert summary["encode"]["anchor_prompts"] == 2 * len(entries) == len(data["anchor"])
  assert data["anchor_of"].tolist() == [i for i in range(len(entries)) for _ in range(2)]
  expected = job.pipeline().encode([replaced_prompt(entries[1], p) for p in ("clothed", "dressed")], progress=False)
  np.testing.assert_allclose(data["anchor"][2:4], np.asarray(expected), atol=1e-6)
  metrics = [json.loads(line) for line in (tmp_path / "replaced" / "metrics.jsonl").read_text().splitlines()]
  assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
  # Pooled, the erase pool holds the anchors' trajectories (the points where their velocity is the target).
  pooled = ErasureJob(tiny_config(path, tmp_path / "pooled", stages="load,encode,erase", **changes,
                                  **{"trajectory.model": "frozen", "trajectory.pool_repeats": 1}), progress=False)
  pooled.run()
  shape = json.loads((tmp_path / "pooled" / "pool" / "erase" / "pool.json").read_text())["shape"]
  assert shape[:2] == [2 * len(entries), 1]
  # Phrases are checked against the pool's concepts before any weights load.
  bad = tiny_config(path, tmp_path / "bad", **{**changes, "objective.replacements": "nude: clothed"})
  with pytest.raises(ConfigError, match=r"config\.objective\.replacements: no replacement phrases for concept"):
    ErasureJob(bad, progress=False).run()


@pytest.mark.parametrize("change,field", [
    ({"objective.eta": -1.0}, "config.objective"),
    ({"stages": "load,train"}, "config.stages"),
    ({"model.path": ""}, "config.model.path"),
    ({"video.frames": 6}, "config.video.frames"),
    ({"eval.height": 40}, "config.eval.height"),
    ({"eraser.rank": 0}, "config.eraser"),
    ({"eraser.placement": "ffn"}, "config.eraser"),
    ({"prompts.erase": "missing.jsonl"}, "config.prompts.erase"),
    ({"trajectory.model": "mixed"}, "config.trajectory"),
    ({"trajectory.pool_repeats": 2}, "config.trajectory"),
    ({"export.formats": "lora"}, "config.export.formats"),
    ({"eval.scorer": "clip"}, "config.eval.scorer"),
    ({"mesh": "2x1x1x1"}, "config.mesh"),
    ({"eval.seeds": 0}, "config.eval.seeds"),
    ({"eval.decode_chunk": 0}, "config.eval.decode_chunk"),
    ({"model.remat": "some"}, "config.model.remat"),
    ({"model.attention": "flash"}, "config.model.attention"),
    ({"objective.anchor": "concept"}, "config.objective"),
])
def test_bad_config_values_are_rejected_before_any_work(tmp_path, change, field):
  config = tiny_config(tmp_path, tmp_path / "run", **change)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    ErasureJob(config)
  assert not (tmp_path / "run" / "stages").exists()


def test_evaluation_prompts_from_an_authors_csv(tmp_path):
  seeded, unseeded = tmp_path / "seeded.csv", tmp_path / "unseeded.csv"
  seeded.write_text('prompt,evaluation_seed,categories\n"a nude figure, at dusk",7,sexual\n')
  unseeded.write_text("prompt\na naked man swimming\n")
  job = ErasureJob.__new__(ErasureJob)  # only the config is needed to list the prompts
  job.config = tiny_config(tmp_path, tmp_path / "run",
                           **{"prompts.evaluate": f"{seeded},{unseeded}", "eval.seeds": 2, "eval.num_prompts": 5})
  assert job.eval_prompts() == [("a nude figure, at dusk", 7), ("a naked man swimming", 0), ("a naked man swimming", 1)]


PREEMPT_SCRIPT = """
import sys
sys.path[:0] = ['.', 'tests']
from test_run import tiny_config
from t2vu_jax.erase.job import ErasureJob
ErasureJob(tiny_config(sys.argv[1], sys.argv[2], stages='load,encode,erase', **{'optim.total_steps': 12}),
           progress=False).run()
"""


def _erasers(job):
  from flax import nnx
  from t2vu_jax.models.erasers import EraserParam
  return [np.asarray(v[...]) for _, v in nnx.to_flat_state(nnx.state(job.erased[0], EraserParam))]


def test_sigterm_saves_and_the_rerun_resumes_bit_identically(wan_pipeline_dir, tmp_path):
  import signal
  import time
  _, path = wan_pipeline_dir()
  run = tmp_path / "preempted"
  proc = subprocess.Popen([sys.executable, "-c", PREEMPT_SCRIPT, str(path), str(run)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = run / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  assert "preempted: saved step" in out and not (run / "stages" / "erase").exists()
  stopped_at = int(out.split("preempted: saved step ")[1].split(";")[0])
  assert 3 <= stopped_at < 12

  resumed = ErasureJob(tiny_config(path, run, stages="load,encode,erase", **{"optim.total_steps": 12}), progress=False)
  assert resumed.run()["erase"]["resumed_from"] == stopped_at
  whole = ErasureJob(tiny_config(path, tmp_path / "whole", stages="load,encode,erase", **{"optim.total_steps": 12}),
                     progress=False)
  whole.run()
  for a, b in zip(_erasers(resumed), _erasers(whole)):
    np.testing.assert_array_equal(a, b)


def test_unreadable_latest_checkpoint_falls_back_and_foreign_checkpoints_are_refused(wan_pipeline_dir, tmp_path):
  from t2vu_jax.checkpoint import CheckpointMismatch
  _, path = wan_pipeline_dir()
  stages = "load,encode,erase"
  job = ErasureJob(tiny_config(path, tmp_path / "run", stages=stages), progress=False)  # checkpoints at 2 and 4
  job.run()
  reference = _erasers(job)
  for f in (tmp_path / "run" / "checkpoints" / "4").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "manifest" not in f.name and "METADATA" not in f.name:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a save cut short
  os.remove(tmp_path / "run" / "stages" / "erase")
  again = ErasureJob(tiny_config(path, tmp_path / "run", stages=stages), progress=False)
  with pytest.warns(UserWarning, match="cannot be read.*falling back"):
    summary = again.run()
  assert summary["erase"]["resumed_from"] == 2
  for a, b in zip(_erasers(again), reference):
    np.testing.assert_array_equal(a, b)

  os.remove(tmp_path / "run" / "stages" / "erase")
  os.remove(tmp_path / "run" / "config.json")  # without the run's record, the checkpoints still refuse
  other = ErasureJob(tiny_config(path, tmp_path / "run", stages=stages, **{"eraser.rank": 8}), progress=False)
  with pytest.raises(CheckpointMismatch, match=r"another model or eraser configuration \(rank: 4 there, 8 here\)"):
    other.run()


def read_scalars(directory, tag):
  """(step, value) of one scalar tag from TensorBoard event files (TFRecord framing, Event protos)."""
  import struct
  from tensorboardX.proto.event_pb2 import Event
  out = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return out


def test_a_rerun_with_other_training_settings_is_refused_and_the_record_kept(wan_pipeline_dir, tmp_path):
  _, path = wan_pipeline_dir()
  run = tmp_path / "run"
  ErasureJob(tiny_config(path, run, stages="load,encode", **{"optim.total_steps": 2}), progress=False).run()
  record = (run / "config.json").read_text()
  changed = tiny_config(path, run, stages="load,encode", **{"objective.eta": 5.0, "eraser.rank": 64})
  with pytest.raises(ConfigError, match=r"eraser\.rank: 4 -> 64; objective\.eta: 1\.0 -> 5\.0.*--config\.workdir"):
    ErasureJob(changed, progress=False).run()
  assert (run / "config.json").read_text() == record
  # Before the erase stage finished, more steps are a resume, and the record follows.
  ErasureJob(tiny_config(path, run, stages="load,encode", **{"eval.num_prompts": 2}), progress=False).run()
  assert json.loads((run / "config.json").read_text())["optim"]["total_steps"] == 4
  assert json.loads((run / "config.json").read_text())["eval"]["num_prompts"] == 1  # evaluation: its own record


def test_an_evaluation_of_an_older_checkpoint_says_so_in_the_report(wan_pipeline_dir, tmp_path):
  _, path = wan_pipeline_dir()
  run = tmp_path / "run"
  job = ErasureJob(tiny_config(path, run, stages="load,encode,erase,export"), progress=False)
  job.run()
  exported = json.loads((run / "stages" / "export").read_text())["erasers"]
  assert exported["step"] == exported["latest_step"] == 4 and len(exported["sha256"]) == 64
  for f in (run / "checkpoints" / "4").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "manifest" not in f.name and "METADATA" not in f.name:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a save cut short
  later = ErasureJob(tiny_config(path, run, stages="evaluate,report", **{"eval.scorer": "none"}), progress=False)
  with pytest.warns(UserWarning, match="falling back"):
    later.run()
  report = json.loads((run / "report.json").read_text())
  evaluated = report["evaluated_erasers"]
  assert (evaluated["step"], evaluated["latest_step"]) == (2, 4) and evaluated["sha256"] != exported["sha256"]
  assert report["exported_erasers"] == exported
  assert "latest checkpoint (step 4) could not be read; this evaluation used the erasers of step 2" in \
      (run / "report.md").read_text()
