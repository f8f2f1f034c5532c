"""One erasure run, stage by stage: load → encode → erase → export → evaluate → (attack) → report.

Everything a run writes lives under its run directory: the resolved config, prompt embeddings,
training metrics (JSONL), Orbax checkpoints of the erasers, exports, sample videos and the report.
A stage that finished leaves a marker in `stages/`, so rerunning the same command resumes where it
stopped; the erase stage also resumes from its latest checkpoint. The work of each stage lives in
its package (`erase.loop`, `models.erasers_params`, `evaluate.videos`, `evaluate.report`); this
module only sequences the stages over the run directory.

In a multi-process run (one process per host, `t2vu_jax.sharding.initialize_distributed`) every
process runs every stage, since the sharded computations need all of them, but only process 0
writes files (config, embeddings, metrics, TensorBoard, exports, samples, evaluation, report, stage
markers) and prints; Orbax checkpoints are written by all together. The processes meet at the end
of each stage, so the run directory must be on a filesystem they share.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from t2vu_jax.erase import loop
from t2vu_jax.erase.prompts import ErasureSet, anchor_prompts, split_paths, token_spans
from t2vu_jax.erase import rece
from t2vu_jax.erase.run_config import (STAGES, ConfigError, fail, method, read_record, settings, training_differences,
                                       validate)
from t2vu_jax.evaluate.report import write_report
from t2vu_jax.evaluate.videos import evaluate_models, evaluation_prompts
from t2vu_jax.io.atomic import atomic_file, remove_stale, write_text
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models import erasers_params
from t2vu_jax.models.erasers import EraserParam
from t2vu_jax.models.wan_params import save_diffusers, transformer_config
from t2vu_jax.sharding import MeshConfig, is_primary, make_mesh, sync_processes, to_host

__all__ = ["STAGES", "ConfigError", "ErasureJob", "validate"]


class ErasureJob:
  """Runs the stages of one config; each stage reads what earlier ones wrote under `run_dir`."""

  def __init__(self, config, progress: bool = True):
    self.config = config
    self.stages = validate(config)
    self.mesh = self._make_mesh()
    self.run_dir = config.workdir or os.path.join("runs", config.name)
    self.primary = is_primary()  # the process that writes files and prints (process 0)
    self.progress = progress and self.primary
    try:
      os.makedirs(os.path.join(self.run_dir, "stages"), exist_ok=True)
      if not os.access(self.run_dir, os.W_OK):
        raise PermissionError("not writable")
    except OSError as e:
      fail("workdir", f"cannot write the run directory {self.run_dir}: {e}")
    self.method = method(config)  # "erasers", or "rece": the edit is `rece.npz`, not eraser checkpoints
    self.pipe = None
    self.erased = None  # the trained experts, once the erase stage ran or a checkpoint was restored
    self.erased_from = None  # {"step", "latest_step"} of its erasers
    self._erasers_record = None  # erased_from with the erasers' sha256, computed once per erased model

  def _make_mesh(self):
    try:
      heads = transformer_config(os.path.join(self.config.model.path, "transformer")).num_attention_heads
    except CheckpointError as e:
      fail("model.path", f"cannot read the pipeline's transformer: {e}")
    try:
      return make_mesh(MeshConfig.parse(self.config.mesh), num_heads=heads)
    except ValueError as e:
      fail("mesh", str(e))

  # -- bookkeeping -------------------------------------------------------------------------------

  def path(self, *parts) -> str:
    return os.path.join(self.run_dir, *parts)

  def done(self, stage: str) -> bool:
    return os.path.exists(self.path("stages", stage))

  def marker(self, stage: str) -> dict:
    with open(self.path("stages", stage)) as f:
      return json.load(f)

  def mark(self, stage: str, info: dict) -> None:
    if self.primary:
      write_text(self.path("stages", stage), json.dumps(info, indent=2))

  def log(self, message: str) -> None:
    if self.primary:
      print(message, flush=True)

  def record_config(self) -> None:
    """Write `config.json` on a run's first start; on a rerun, refuse training settings that differ from
    the recorded ones (the run's checkpoints and results came from those). Evaluation settings may
    change: each evaluation records its own in `evaluation.json`."""
    recorded = self.path("config.json")
    if os.path.exists(recorded):
      record = read_record(recorded)
      # Until the erase stage finished, a constant learning rate lets more steps resume from the latest
      # checkpoint as if the run had been that long.
      extendable = ("optim.total_steps",) if not self.done("erase") and self.config.optim.schedule == "constant" \
          else ()
      if differences := training_differences(record, self.config, ignore=extendable):
        raise ConfigError(f"{self.run_dir} was run with other training settings ({'; '.join(differences)}); "
                          "rerun with the recorded ones, or start a new run with --config.workdir=NEW_DIR")
      steps = self.config.optim.total_steps
      if record.get("optim", {}).get("total_steps", steps) != steps and self.primary:  # it joins the record
        record["optim"]["total_steps"] = steps
        write_text(recorded, json.dumps(record, indent=2))
      return
    if self.primary:
      write_text(recorded, self.config.to_json_best_effort(indent=2))

  def check_inputs(self) -> None:
    """Every stage to run finds what it reads: written by an earlier run, or by a stage of this one."""
    erased = "rece.npz" if self.method == "rece" else "checkpoints"
    needs = {"erase": ("encode", "embeddings.npz"), "export": ("erase", erased), "evaluate": ("erase", erased),
             "attack": ("erase", erased)}
    for stage in self.stages:
      if stage in needs and not self.done(stage):
        before, what = needs[stage]
        if before not in self.stages and not os.path.exists(self.path(what)):
          fail("stages", f"'{stage}' reads the {before} stage's {what}, which {self.run_dir} does not have: "
               f"add {before} to --config.stages (or run it first)")

  def run(self) -> dict:
    self.check_inputs()
    self.record_config()
    summary = {}
    for stage in self.stages:
      if self.done(stage):
        self.log(f"[{stage}] already done, skipping")
        continue
      start = time.time()
      self.log(f"[{stage}]")
      info = getattr(self, f"stage_{stage}")() or {}
      info["seconds"] = round(time.time() - start, 2)
      self.mark(stage, info)
      sync_processes(f"stage {stage}")  # what process 0 wrote is there before any process goes on
      summary[stage] = info
    return summary

  def rerun(self, stages) -> dict:
    """Run the config's stages, `stages` again even where the run already did them (re-evaluation,
    attacks)."""
    for stage in stages:
      if self.primary and self.done(stage):
        os.remove(self.path("stages", stage))
    return self.run()

  # -- what the stages share ---------------------------------------------------------------------

  def pipeline(self):
    if self.pipe is None:
      from t2vu_jax.pipeline import load_pipeline
      m = self.config.model
      self.pipe = load_pipeline(m.path, m.dtype, m.text_dtype, cache_dir=self.path("embedding_cache"),
                                progress=self.progress, mesh=self.mesh, remat=m.remat, attention=m.attention)
      self.pipe.decode_chunk = self.config.eval.decode_chunk
    return self.pipe

  def prompt_set(self) -> ErasureSet:
    preserve = split_paths(self.config.prompts.preserve)
    return ErasureSet.from_files(split_paths(self.config.prompts.erase), preserve or None)

  def eval_prompts(self) -> list[tuple[str, int]]:
    return evaluation_prompts(self.config)

  def experts(self) -> list:
    """The pipeline's transformers: one, or Wan2.2 A14B's high- and low-noise experts."""
    pipe = self.pipeline()
    return [pipe.transformer] + ([pipe.transformer_2] if pipe.transformer_2 is not None else [])

  def erased_models(self) -> list:
    """The experts with the erasers of the latest readable checkpoint (RECE: with the run's edit)."""
    if self.erased is None and self.method == "rece":
      if not os.path.isfile(self.path("rece.npz")):
        raise FileNotFoundError(f"no RECE edit in {self.run_dir} (rece.npz); run the erase stage")
      with np.load(self.path("rece.npz")) as saved:
        self.erased = [rece.with_kernels(m, {p: saved[f"{name}/{p}"] for p in rece.PROJECTIONS})
                       for m, name in zip(self.experts(), loop.EXPERT_NAMES)]
      self.erased_from = {"step": 0, "latest_step": 0}
    if self.erased is None:
      self.erased, self.erased_from = loop.restore_erased(self.experts(), self.config, self.mesh,
                                                          self.path("checkpoints"))
      if self.erased_from["step"] != self.erased_from["latest_step"]:
        self.log(f"warning: the latest checkpoint (step {self.erased_from['latest_step']}) cannot be read; "
                 f"using the erasers of step {self.erased_from['step']}")
    return self.erased

  def erasers_record(self) -> dict:
    """What the erased model's erasers are: the step they come from and their sha256 (of both experts'
    digests in a two-expert model; of the edited kernels in a RECE run)."""
    if self._erasers_record is None:
      if self.method == "rece":
        self.erased_models()
        with open(self.path("rece.npz"), "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      else:
        digests = [erasers_params.eraser_digest(m) for m in self.host_models(with_base=False)]  # every process
        digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
      self._erasers_record = {**self.erased_from, "sha256": digest}
    return self._erasers_record

  def host_models(self, with_base: bool) -> list:
    """The erased experts with their erasers (and, `with_base`, their base weights) as arrays on this
    host: gathered from every process in a multi-process run (all must call this); else the models."""
    models = self.erased_models()
    if jax.process_count() == 1:
      return models
    split = [nnx.split(m, EraserParam, ...) for m in models]
    return [nnx.merge(g, to_host(e), to_host(b) if with_base else b) for g, e, b in split]

  # -- stages ------------------------------------------------------------------------------------

  def stage_load(self):
    cfg = self.pipeline().transformer.config
    return {"layers": cfg.num_layers, "dim": cfg.dim, "text_dim": cfg.text_dim}

  def stage_encode(self):
    """Embed every training prompt and the empty prompt once (and the objective's anchor prompts, with
    the erase prompt each belongs to); store them with the concept masks."""
    pipe, prompts = self.pipeline(), self.prompt_set()
    erase = list(prompts.erase.entries)
    preserve = list(prompts.preserve.entries) if prompts.preserve else []
    objective = self.config.objective
    anchors, anchor_of = anchor_prompts(erase, objective.anchor, objective.get("replacements", ""))
    embeddings = np.asarray(pipe.encode([e.prompt for e in erase + preserve] + anchors + [""],
                                        progress=self.progress))
    n, m = len(erase), len(erase) + len(preserve)
    arrays = dict(erase=embeddings[:n], preserve=embeddings[n:m], empty=embeddings[-1],
                  concept_mask=token_spans(pipe.tokenizer, erase, pipe.text_length))
    if anchors:
      arrays["anchor"], arrays["anchor_of"] = embeddings[m:-1], anchor_of
    if self.primary:
      np.savez(self.path("embeddings.npz"), **arrays)
    return {"erase_prompts": n, "preserve_prompts": len(preserve), "anchor_prompts": len(anchors),
            "concepts": list(prompts.concepts)}

  def stage_erase(self):
    if self.method == "rece":
      return self.rece_erase()
    v = self.config.video
    pipe = self.pipeline()
    self.erased, info = loop.erase(
        self.experts(), self.config, self.mesh, np.load(self.path("embeddings.npz")), self.prompt_set(),
        pipe.latent_shape(self.config.batch_size, v.height, v.width, v.frames), self.run_dir, self.primary,
        self.progress, self.log, pipe.boundary)
    self.erased_from, self._erasers_record = {"step": info["steps"], "latest_step": info["steps"]}, None
    return {**info, "erasers": self.erasers_record()}

  def rece_erase(self):
    """RECE's closed-form edit of every expert's cross-attention, saved as `rece.npz`."""
    pipe, prompts = self.pipeline(), self.prompt_set()
    preserve = [e.prompt for e in prompts.preserve.entries] if prompts.preserve else []
    edits, info = {}, {}
    for model, name in zip(self.experts(), loop.EXPERT_NAMES):
      kernels, info[name] = rece.rece_edit(pipe, prompts.erase.entries, preserve, settings(self.config, "rece"), model)
      edits.update({f"{name}/{p}": kernels[p] for p in rece.PROJECTIONS})
    if self.primary:
      with atomic_file(self.path("rece.npz"), overwrite=True, suffix=".npz") as tmp:
        np.savez(tmp, **edits)
    sync_processes("rece edit")
    self.erased, self._erasers_record = None, None
    return {"method": "rece", **(info["transformer"] if len(info) == 1 else info), "erasers": self.erasers_record()}

  def stage_export(self):
    """Each format under `export/<format>`; a two-expert model's experts under `export/<format>/transformer`
    and `export/<format>/transformer_2`, as diffusers names them."""
    formats = split_paths(self.config.export.formats)
    models = self.host_models(with_base="merged" in formats)
    out = {kind: os.path.join("export", kind) for kind in formats}
    if self.primary:
      for kind, target in out.items():
        targets = [target] if len(models) == 1 else [os.path.join(target, name) for name in loop.EXPERT_NAMES]
        for model, path in zip(models, targets):
          remove_stale(self.path(path))  # left by an export that was killed
          if self.method == "rece":  # the edited weights themselves (validation allows only "merged")
            save_diffusers(model, self.path(path), dtype=self.config.export.dtype, overwrite=True,
                           progress=self.progress)
          else:
            erasers_params.export(model, kind, self.path(path), dtype=self.config.export.dtype, overwrite=True,
                                  progress=self.progress)
    return {**out, "erasers": self.erasers_record()}

  def erased_pipeline(self):
    """The pipeline with the erased experts in place of its transformers."""
    erased = self.erased_models()
    return dataclasses.replace(self.pipeline(), transformer=erased[0],
                               transformer_2=erased[1] if len(erased) > 1 else None)

  def stage_evaluate(self):
    """The evaluation prompts through the base and the erased model on the same seeds: videos, and
    scores when a scorer is configured."""
    models = {"base": (self.pipeline(), False), "erased": (self.erased_pipeline(), True)}
    result = evaluate_models(models, self.config, self.run_dir, self.mesh, self.primary, self.progress,
                             erasers=self.erasers_record())
    return {"videos": 2 * len(result["videos"]), "scorer": self.config.eval.scorer, "erasers": result["erasers"]}

  def stage_attack(self):
    """Each attack of `attack.names` on the base model, negative prompting and the erased model: the
    concept rate within each budget, in `attacks/<name>.json`."""
    from t2vu_jax.attack import AttackContext, run_attack
    from t2vu_jax.attack.common import write_result
    with jax.set_mesh(self.mesh):
      context = AttackContext(self.pipeline(), self.erased_pipeline(), self.config, self.progress)
      results = {}
      for name in context.settings.attacks:
        self.log(f"attack {name}")
        results[name] = run_attack(name, context)
        if self.primary:
          write_result(self.run_dir, {**results[name], "erasers": self.erasers_record()})
    return {"attacks": {name: os.path.join("attacks", f"{name}.json") for name in results},
            "erasers": self.erasers_record()}

  def stage_report(self):
    if self.primary:
      stages = {s: self.marker(s) for s in STAGES if self.done(s)}
      write_report(self.run_dir, self.config.name, stages)
    return {"report": "report.md"}
