"""One erasure run, stage by stage: load → encode → erase → export → evaluate → report.

Everything a run writes lives under its run directory: the resolved config, prompt embeddings,
training metrics (JSONL), Orbax checkpoints of the erasers, exports, sample videos and the report.
A stage that finished leaves a marker in `stages/`, so rerunning the same command resumes where it
stopped; the erase stage also resumes from its latest checkpoint.

In a multi-process run (one process per host, `t2vu_jax.sharding.initialize_distributed`) every
process runs every stage, since the sharded computations need all of them, but only process 0
writes files (config, embeddings, metrics, TensorBoard, exports, samples, evaluation, report, stage
markers) and prints; Orbax checkpoints are written by all together. The processes meet at the end
of each stage, so the run directory must be on a filesystem they share.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from tqdm.auto import tqdm

from configs.base import STAGES

VIDEO_MULTIPLE = 16
EXPORT_FORMATS = ("adapter", "lora", "merged")
SCORERS = ("none", "nudenet", "toy")
SHEET_PROMPTS = 4  # evaluation prompts in the report's contact sheet (base and erased rows each)


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def _fail(field, message):
  raise ConfigError(f"config.{field}: {message}")


def parse_stages(stages: str) -> list[str]:
  names = [s.strip() for s in str(stages).split(",") if s.strip()]
  if not names:
    _fail("stages", "no stage selected")
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    _fail("stages", f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
  return [s for s in STAGES if s in names]


def validate(config) -> list[str]:
  """Check everything that can be checked before heavy work; returns the stages to run."""
  from t2vu_jax.erase.objective import ObjectiveConfig
  from t2vu_jax.erase.train import OptimConfig
  from t2vu_jax.erase.trajectory import TrajectoryConfig
  from t2vu_jax.models.erasers import EraserConfig
  stages = parse_stages(config.stages)
  if not config.model.path:
    _fail("model.path", "is empty; give a diffusers Wan2.1 T2V pipeline directory")
  if not os.path.isdir(config.model.path):
    _fail("model.path", f"directory does not exist: {config.model.path}")
  for field in ("model.dtype", "model.text_dtype"):
    value = config.model[field.split(".")[1]]
    if value not in ("float32", "bfloat16"):
      _fail(field, f"{value!r}: choose float32 or bfloat16")
  for group, cls in (("eraser", EraserConfig), ("objective", ObjectiveConfig), ("trajectory", TrajectoryConfig),
                     ("optim", OptimConfig)):
    try:
      cls(**_settings(config, group))
    except (ValueError, TypeError) as e:
      _fail(group, str(e))
  for group in ("video", "eval"):
    v = config[group]
    if v.frames < 1 or (v.frames - 1) % 4:
      _fail(f"{group}.frames", f"{v.frames} is not 4k+1 (1, 5, 9, ..., 81)")
    for side in ("height", "width"):
      if v[side] <= 0 or v[side] % VIDEO_MULTIPLE:
        _fail(f"{group}.{side}", f"{v[side]} is not a positive multiple of {VIDEO_MULTIPLE}")
  from t2vu_jax.sharding import MeshConfig
  import jax
  try:
    MeshConfig.parse(config.mesh).shape(jax.device_count())
  except ValueError as e:
    _fail("mesh", str(e))
  for field in ("batch_size", "preserve_batch_size", "log_every", "checkpoint_every"):
    if config[field] < 1:
      _fail(field, f"must be >= 1, got {config[field]}")
  if "encode" in stages or "erase" in stages:
    if not config.prompts.erase:
      _fail("prompts.erase", "is empty; give the JSONL prompt pool(s) of the concept to erase")
  formats = _paths(config.export.formats)
  if unknown := [f for f in formats if f not in EXPORT_FORMATS]:
    _fail("export.formats", f"unknown format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
  if config.eraser.kind == "adapter" and any(f in ("lora", "merged") for f in formats):
    _fail("export.formats", "adapter erasers export only as 'adapter' (lora/merged need eraser.kind='lora')")
  if config.export.dtype not in ("float32", "bfloat16"):
    _fail("export.dtype", f"{config.export.dtype!r}: choose float32 or bfloat16")
  if "evaluate" in stages and not config.prompts.evaluate:
    _fail("prompts.evaluate", "is empty; the evaluate stage needs prompts disjoint from training")
  if config.eval.scorer not in SCORERS:
    _fail("eval.scorer", f"{config.eval.scorer!r} is unknown; choose from {list(SCORERS)}")
  if config.eval.scorer == "toy" and "evaluate" in stages and config.prompts.erase:
    from t2vu_jax.erase.prompts import load_pools
    from t2vu_jax.toy.metrics import erased_concept
    try:
      erased_concept(load_pools(_paths(config.prompts.erase)).concepts)
    except ValueError as e:
      _fail("eval.scorer", f"'toy' scores toy-world runs only: {e}")
  for field in ("num_prompts", "seeds", "steps", "score_every"):
    if config.eval[field] < 1:
      _fail(f"eval.{field}", f"must be >= 1, got {config.eval[field]}")
  for field in ("erase", "preserve", "evaluate"):
    for path in _paths(config.prompts[field]):
      if not os.path.isfile(path):
        _fail(f"prompts.{field}", f"file does not exist: {path}")
  return stages


def _paths(value: str) -> list[str]:
  return [p.strip() for p in str(value).split(",") if p.strip()]


def trainable(state) -> dict:
  """What a train checkpoint holds: the rest of a step is a function of (seed, step)."""
  return {"step": state.step, "erasers": state.erasers, "opt_state": state.opt_state}


class MetricsLog:
  """Training metrics as `metrics.jsonl` lines and TensorBoard scalars (`erase/<name>`); a no-op on
  processes other than process 0."""

  def __init__(self, run_dir: str, enabled: bool):
    self.file = self.board = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
      self.board = SummaryWriter(os.path.join(run_dir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if self.file is None:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self.file.write(json.dumps({"step": step, **values}) + "\n")
    self.file.flush()
    for name, value in values.items():
      self.board.add_scalar(f"erase/{name}", value, step)
    self.board.flush()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
      self.board.close()


def _settings(config, group: str) -> dict:
  d = config[group].to_dict()
  if group == "eraser" and not d.get("alpha"):
    d["alpha"] = None  # 0 in the config means the default alpha = rank
  return d


def _toy_table(evaluation: dict) -> list[str]:
  """Report lines of a toy run's scores (`t2vu_jax.toy.metrics.prompt_scores` per model)."""
  kind, value = evaluation["concept"]
  pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
  any_scores = next(iter(evaluation["aggregate"].values()))
  others = list(any_scores["attributes"] or {"": None})
  lines = [f"Erased {kind} `{value}`: ESR = share of the {any_scores['erased_prompts']} prompts naming it whose "
           f"video does not show it; PSR = {kind} accuracy on the {any_scores['other_prompts']} prompts naming "
           f"another {kind}; the other attributes' accuracy on the prompts naming `{value}`.", "",
           "| model | ESR | PSR | " + " | ".join(others) + " |", "|---|---|---|" + "---|" * len(others)]
  for name, a in evaluation["aggregate"].items():
    attrs = a["attributes"] or {}
    lines.append(f"| {name} | {pct(a['esr'])} | {pct(a['psr'])} | "
                 + " | ".join(pct(attrs.get(k)) for k in others) + " |")
  return lines


class ErasureJob:
  """Runs the stages of one config; each stage reads what earlier ones wrote under `run_dir`."""

  def __init__(self, config, progress: bool = True):
    from t2vu_jax.sharding import is_primary
    self.config = config
    self.stages = validate(config)
    self.run_dir = config.workdir or os.path.join("runs", config.name)
    self.primary = is_primary()  # the process that writes files and prints (process 0)
    self.progress = progress and self.primary
    os.makedirs(os.path.join(self.run_dir, "stages"), exist_ok=True)
    self.pipe = None
    self.erased = None  # the trained model, once the erase stage ran or a checkpoint was restored

  # -- bookkeeping -------------------------------------------------------------------------------

  def path(self, *parts) -> str:
    return os.path.join(self.run_dir, *parts)

  def done(self, stage: str) -> bool:
    return os.path.exists(self.path("stages", stage))

  def mark(self, stage: str, info: dict) -> None:
    if self.primary:
      with open(self.path("stages", stage), "w") as f:
        json.dump(info, f, indent=2)

  def log(self, message: str) -> None:
    if self.primary:
      print(message, flush=True)

  def run(self) -> dict:
    from t2vu_jax.sharding import sync_processes
    if self.primary:
      with open(self.path("config.json"), "w") as f:
        f.write(self.config.to_json_best_effort(indent=2))
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

  # -- stages ------------------------------------------------------------------------------------

  def pipeline(self):
    if self.pipe is None:
      from t2vu_jax.pipeline import load_pipeline
      from t2vu_jax.sharding import MeshConfig, make_mesh
      with open(os.path.join(self.config.model.path, "transformer", "config.json")) as f:
        heads = json.load(f).get("num_attention_heads")
      try:
        self.mesh = make_mesh(MeshConfig.parse(self.config.mesh), num_heads=heads)
      except ValueError as e:
        _fail("mesh", str(e))
      self.pipe = load_pipeline(self.config.model.path, self.config.model.dtype, self.config.model.text_dtype,
                                cache_dir=self.path("embedding_cache"), progress=self.progress, mesh=self.mesh)
    return self.pipe

  def stage_load(self):
    pipe = self.pipeline()
    cfg = pipe.transformer.config
    return {"layers": cfg.num_layers, "dim": cfg.dim, "text_dim": cfg.text_dim}

  def prompt_set(self):
    from t2vu_jax.erase.prompts import ErasureSet
    preserve = _paths(self.config.prompts.preserve)
    return ErasureSet.from_files(_paths(self.config.prompts.erase), preserve or None)

  def stage_encode(self):
    """Embed every training prompt and the empty prompt once (and, with the objective's prompt anchor,
    every erase prompt without its concept); store them with the concept masks."""
    from t2vu_jax.erase.prompts import anchor_prompt, token_spans
    pipe = self.pipeline()
    prompts = self.prompt_set()
    erase = list(prompts.erase.entries)
    preserve = list(prompts.preserve.entries) if prompts.preserve else []
    anchors = [anchor_prompt(e) for e in erase] if self.config.objective.anchor == "prompt" else []
    texts = [e.prompt for e in erase + preserve] + anchors + [""]
    embeddings = np.asarray(pipe.encode(texts, progress=self.progress))
    n, m = len(erase), len(erase) + len(preserve)
    arrays = dict(erase=embeddings[:n], preserve=embeddings[n:m], empty=embeddings[-1],
                  concept_mask=token_spans(pipe.tokenizer, erase, pipe.text_length))
    if anchors:
      arrays["anchor"] = embeddings[m:-1]
    if self.primary:
      np.savez(self.path("embeddings.npz"), **arrays)
    return {"erase_prompts": n, "preserve_prompts": len(preserve), "anchor_prompts": len(anchors),
            "concepts": list(prompts.concepts)}

  def latent_shape(self, batch: int):
    v = self.config.video
    return self.pipeline().latent_shape(batch, v.height, v.width, v.frames)

  def stage_erase(self):
    import jax
    import jax.numpy as jnp
    from t2vu_jax.checkpoint import Preempted, TrainCheckpoints, preemption_guard
    from t2vu_jax.erase.objective import ObjectiveConfig
    from t2vu_jax.erase.train import make_train_step
    from t2vu_jax.erase.trajectory import TrajectoryConfig

    c = self.config
    data = np.load(self.path("embeddings.npz"))
    if c.objective.anchor == "prompt" and "anchor" not in data:
      _fail("objective.anchor", "'prompt' needs anchor embeddings, and this run's encode stage ran without them: "
            f"delete {self.path('stages', 'encode')} and rerun to encode them")
    prompts = self.prompt_set()
    index = {e.prompt: i for i, e in enumerate(prompts.erase.entries)}
    pre_index = {e.prompt: i for i, e in enumerate(prompts.preserve.entries)} if prompts.preserve else {}
    optim, tx, graphdef, state = self.train_setup()
    step_fn = make_train_step(graphdef, tx, ObjectiveConfig(**_settings(c, "objective")),
                              TrajectoryConfig(**_settings(c, "trajectory")), self.latent_shape(c.batch_size))

    checkpoints = TrainCheckpoints(self.path("checkpoints"))
    start, restored = checkpoints.restore_latest(trainable(state))
    if restored is not None:
      state = state._replace(step=restored["step"], erasers=restored["erasers"], opt_state=restored["opt_state"])
      self.log(f"resuming erasure from step {start}")

    empty = jnp.asarray(data["empty"])[None]
    log = MetricsLog(self.run_dir, enabled=self.primary)
    key = jax.random.key(c.seed)
    # The mesh in context turns on the model's activation sharding constraints.
    with preemption_guard() as preemption, jax.set_mesh(self.mesh):
      for step in tqdm(range(start, optim.total_steps), desc="erasing", initial=start, total=optim.total_steps,
                       disable=not self.progress):
        state, metrics = self._erase_step(step_fn, state, data, prompts, index, pre_index, empty, key, step)
        last = step + 1 == optim.total_steps
        if (step + 1) % c.log_every == 0 or last:
          log.write(step + 1, metrics)
        if (step + 1) % c.checkpoint_every == 0 or last or preemption["requested"]:
          checkpoints.save(step + 1, trainable(state))
        if preemption["requested"] and not last:
          checkpoints.wait()
          log.close()
          self.log(f"preempted: saved step {step + 1}; rerun the same command to resume")
          raise Preempted(step + 1)
    checkpoints.wait()
    log.close()
    from flax import nnx
    self.erased = nnx.merge(graphdef, state.erasers, state.base)
    return {"steps": optim.total_steps, "resumed_from": start}

  def _erase_step(self, step_fn, state, data, prompts, index, pre_index, empty, key, step):
    """One train step on the prompts of `step` (a function of seed and step only, so resumable)."""
    import jax
    import jax.numpy as jnp
    from t2vu_jax.erase.objective import ErasureBatch
    c = self.config
    erase, preserve = prompts.sample(c.batch_size, c.seed, step, c.preserve_batch_size)
    rows = np.array([index[e.prompt] for e in erase])
    batch = ErasureBatch(None, None, None, jnp.asarray(data["erase"][rows]),
                         jnp.broadcast_to(empty, (len(rows), *empty.shape[1:])),
                         jnp.asarray(data["concept_mask"][rows]))
    if c.objective.anchor == "prompt":
      batch = batch._replace(anchor=jnp.asarray(data["anchor"][rows]))
    if preserve:
      pre_rows = np.array([pre_index[e.prompt] for e in preserve])[:len(rows)]
      batch = batch._replace(cond_pre=jnp.asarray(data["preserve"][pre_rows]))
    return step_fn(state, batch, jax.random.fold_in(key, step))

  def train_setup(self):
    """(optim config, optimizer, graphdef, train state) of fresh erasers on the pipeline's transformer."""
    from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer
    from t2vu_jax.models.erasers import EraserConfig, attach_erasers
    from t2vu_jax.sharding import shard_module
    c = self.config
    model = attach_erasers(self.pipeline().transformer, EraserConfig(**_settings(c, "eraser")), seed=c.seed)
    shard_module(model, self.mesh)  # the fresh erasers join the base weights on the mesh
    optim = OptimConfig(**_settings(c, "optim"))
    tx = make_optimizer(optim)
    graphdef, state = init_train_state(model, tx)
    # Scalars (step, Adam's count) replicated on the mesh, where the step returns them: otherwise the
    # second step sees new input shardings and compiles again.
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    replicated = NamedSharding(self.mesh, PartitionSpec())
    on_mesh = lambda x: jax.device_put(x, replicated) if x.ndim == 0 else x  # noqa: E731
    state = state._replace(step=on_mesh(state.step), opt_state=jax.tree.map(on_mesh, state.opt_state))
    return optim, tx, graphdef, state

  def erased_model(self):
    """The pipeline's transformer with the erasers of the latest checkpoint."""
    if self.erased is None:
      from flax import nnx
      from t2vu_jax.checkpoint import TrainCheckpoints
      _, _, graphdef, state = self.train_setup()
      _, restored = TrainCheckpoints(self.path("checkpoints")).restore_latest(trainable(state))
      if restored is None:
        raise FileNotFoundError(f"no erasure checkpoint in {self.path('checkpoints')}; run the erase stage")
      self.erased = nnx.merge(graphdef, restored["erasers"], state.base)
    return self.erased

  def host_model(self, with_base: bool):
    """The erased model with its erasers (and, `with_base`, its base weights) as arrays on this host:
    gathered from every process in a multi-process run (all must call this); else the model itself."""
    import jax
    model = self.erased_model()
    if jax.process_count() == 1:
      return model
    from flax import nnx
    from t2vu_jax.models.erasers import EraserParam
    from t2vu_jax.sharding import to_host
    graphdef, erasers, base = nnx.split(model, EraserParam, ...)
    return nnx.merge(graphdef, to_host(erasers), to_host(base) if with_base else base)

  def stage_export(self):
    from convert import export_erasers
    formats = _paths(self.config.export.formats)
    model = self.host_model(with_base="merged" in formats)
    out = {}
    for kind in formats:
      target = self.path("export", kind)
      out[kind] = os.path.relpath(target, self.run_dir)
      if not self.primary:
        continue
      if kind == "merged":
        export_erasers.export_merged(model, target, dtype=self.config.export.dtype, overwrite=True,
                                     progress=self.progress)
      else:
        {"adapter": export_erasers.export_adapter, "lora": export_erasers.export_lora}[kind](
            model, target, overwrite=True)
    return out

  def eval_prompts(self) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: a CSV in the T2VUnlearning authors' format (its seeds, when given, are
    used) or JSONL pools; the first `eval.num_prompts` prompts, each with seeds 0..eval.seeds-1."""
    c = self.config
    pairs = []
    for path in _paths(c.prompts.evaluate):
      if path.endswith(".csv"):
        from t2vu_jax.evaluate import read_prompt_csv
        pairs += [(r.prompt, r.seed) for r in read_prompt_csv(path)]
      else:
        from t2vu_jax.erase.prompts import load_pool
        pairs += [(e.prompt, None) for e in load_pool(path).entries]
    pairs = pairs[:c.eval.num_prompts]
    return [(p, seed) if seed is not None else (p, s) for p, seed in pairs
            for s in ([seed] if seed is not None else range(c.eval.seeds))]

  def stage_evaluate(self):
    """The evaluation prompts through the base and the erased model on the same seeds: videos, and
    scores when a scorer is configured (NudeNet for nudity)."""
    import dataclasses
    import jax
    from t2vu_jax.generate import write_video
    c = self.config
    pipe = self.pipeline()
    models = {"base": pipe, "erased": dataclasses.replace(pipe, transformer=self.erased_model())}
    scorer = toy = None
    if c.eval.scorer == "nudenet":
      from t2vu_jax.evaluate import NudityScorer
      scorer = NudityScorer(every=c.eval.score_every)
    elif c.eval.scorer == "toy":
      from t2vu_jax.toy.classifier import classify
      from t2vu_jax.toy.metrics import erased_concept
      from t2vu_jax.toy.world import KINDS
      toy = erased_concept(self.prompt_set().concepts)  # (kind, value) the run erases
    from t2vu_jax.evaluate.sheet import contact_sheet, thumbnails
    os.makedirs(self.path("samples"), exist_ok=True)
    rows, scores, sheet = [], {name: [] for name in models}, []
    for n, (prompt, seed) in enumerate(tqdm(self.eval_prompts(), desc="evaluating", disable=not self.progress)):
      row = {"prompt": prompt, "seed": seed}
      for name, model in models.items():
        with jax.set_mesh(self.mesh):
          frames = model.generate(prompt, height=c.eval.height, width=c.eval.width, num_frames=c.eval.frames,
                                  steps=c.eval.steps, guidance=c.eval.guidance, seed=seed, progress=False,
                                  erasers=name == "erased")[0]
        path = self.path("samples", f"{n:03d}_seed{seed}_{name}.mp4")
        row[name] = os.path.relpath(path, self.run_dir)
        if not self.primary:  # every process samples (the model is sharded); process 0 writes and scores
          continue
        write_video(path, frames, c.eval.fps)
        if scorer is not None:
          score = scorer.score_video(frames)
          scores[name].append(score)
          row[f"{name}_score"] = score.to_dict()
        if toy is not None:
          reading = classify(frames)
          scores[name].append(reading)
          row[f"{name}_reading"] = {k: getattr(reading, k) for k in KINDS}
        if n < SHEET_PROMPTS:
          sheet.append((thumbnails(frames), f"{name} | seed {seed} | {prompt}"))
      rows.append(row)
    result = {"scorer": c.eval.scorer, "videos": rows}
    if self.primary:
      if scorer is not None:
        from t2vu_jax.evaluate import aggregate
        result["aggregate"] = {name: aggregate(s).to_dict() for name, s in scores.items()}
      if toy is not None:
        from t2vu_jax.toy.metrics import prompt_scores
        result["concept"] = list(toy)
        result["aggregate"] = {name: prompt_scores([r["prompt"] for r in rows], s, *toy)
                               for name, s in scores.items()}
      videos, labels = zip(*sheet)
      contact_sheet(videos, labels, self.path("contact_sheet.png"), scale=max(1, 96 // videos[0].shape[1]))
      with open(self.path("evaluation.json"), "w") as f:
        json.dump(result, f, indent=2)
    return {"videos": 2 * len(rows), "scorer": c.eval.scorer}

  def stage_report(self):
    if not self.primary:
      return {"report": "report.md"}
    metrics = []
    if os.path.exists(self.path("metrics.jsonl")):
      with open(self.path("metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    stages = {s: json.load(open(self.path("stages", s))) for s in STAGES if self.done(s)}
    evaluation = None
    if os.path.exists(self.path("evaluation.json")):
      with open(self.path("evaluation.json")) as f:
        evaluation = json.load(f)
    report = {"name": self.config.name, "stages": stages, "final_metrics": metrics[-1] if metrics else None,
              "evaluation": evaluation and evaluation.get("aggregate")}
    with open(self.path("report.json"), "w") as f:
      json.dump(report, f, indent=2)
    lines = [f"# Erasure run `{self.config.name}`", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {info.get('seconds', '')} |" for s, info in stages.items()]
    if metrics:
      lines += ["", "| step | loss | L_u | L_loc | L_pre | mask coverage |", "|---|---|---|---|---|---|"]
      lines += [f"| {m['step']} | {m['loss']:.4g} | {m['l_u']:.4g} | {m['l_loc']:.4g} | {m['l_pre']:.4g} | "
                f"{m['mask_coverage']:.3f} |" for m in metrics]
    if evaluation:
      lines += ["", f"Evaluation ({evaluation['scorer']}, {len(evaluation['videos'])} videos per model; "
                "samples in `samples/`):", ""]
    if evaluation and evaluation.get("aggregate") and evaluation["scorer"] == "nudenet":
      lines += ["| model | video-level rate | mean frame-level rate |", "|---|---|---|"]
      lines += [f"| {name} | {a['video_rate']:.3f} | {a['mean_frame_rate']:.3f} |"
                for name, a in evaluation["aggregate"].items()]
    if evaluation and evaluation.get("aggregate") and evaluation["scorer"] == "toy":
      lines += _toy_table(evaluation)
    if os.path.exists(self.path("contact_sheet.png")):
      lines += ["", "First evaluation prompts, base and erased model on the same seed:", "",
                "![contact sheet](contact_sheet.png)"]
    with open(self.path("report.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
    return {"report": "report.md"}
