"""What an erasure run will cost before it starts: the expected time and peak per-device memory of each
stage of a run config on the current devices.

  python -m t2vu_jax.scaling --plan --config=configs/wan_nudity.py [--config.x=y] [--model=14b] [--out=FILE]

FLOPs are analytic for the transformer and the text encoder (matmuls: `wan.forward_flops`,
`umt5.forward_flops`) and XLA's cost analysis of the decode of one latent frame for the VAE. Time is
those FLOPs over each model's throughput measured here with a few forwards — of one full-width layer for
the transformer and the text encoder, so a 14B model is measured on one device — spread evenly over
the mesh's devices (communication is not modelled). Peak memory per device is XLA's (arguments +
temporaries + outputs) for each stage's program compiled ahead of time on the run's mesh from abstract
arrays in their shardings: nothing is allocated. The probes run at the run's sizes on accelerators and
at small sizes on CPU (`--probe`); a small program's rate understates a large one's, so CPU times
are upper bounds. The model comes from `model.path` when it holds a pipeline, else from `--model`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from t2vu_jax.models import umt5, vae as vae_lib, wan
from t2vu_jax.text import MAX_LENGTH as TEXT_LENGTH  # Wan's 512 prompt tokens

ENCODE_BATCH = 8  # `text.encode_prompts`' batch


# The Wan2.2 VAE's architecture (TI2V-5B's); its latent statistics do not change the cost.
WAN22_VAE = vae_lib.WanVAEConfig(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
                                 in_channels=12, out_channels=12, scale_factor_spatial=16,
                                 latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)
# --model: (WanConfig constructor, VAE, name), for a config whose model.path holds no pipeline.
SIZES = {"1.3b": ("wan_1_3b", vae_lib.WanVAEConfig(), "Wan2.1 1.3B"),
         "14b": ("wan_14b", vae_lib.WanVAEConfig(), "Wan2.1 14B"),
         "5b": ("wan22_5b", WAN22_VAE, "Wan2.2 TI2V-5B")}


@dataclasses.dataclass(frozen=True)
class Models:
  transformer: wan.WanConfig
  text_encoder: umt5.UMT5Config
  vae: vae_lib.WanVAEConfig | None  # None: a pixel-space pipeline (the toy world's)
  source: str
  text_length: int = TEXT_LENGTH  # tokens every prompt is padded to


def models_of(config, size: str) -> Models:
  """The architectures of `config.model.path`'s pipeline, or of a Wan2.1 model of `size`."""
  path = config.model.path
  if path and os.path.isfile(os.path.join(path, "model_index.json")):
    from t2vu_jax.models.umt5_params import read_umt5_config
    from t2vu_jax.models.vae_params import read_vae_config
    from t2vu_jax.models.wan_params import transformer_config
    from t2vu_jax.pipeline import check_pipeline_dir, is_absent
    from t2vu_jax.text import load_tokenizer, text_length
    meta = check_pipeline_dir(path)
    vae = None if is_absent(meta, "vae") else read_vae_config(path)
    return Models(transformer_config(os.path.join(path, "transformer")), read_umt5_config(path), vae, path,
                  text_length(load_tokenizer(path)))
  if size not in SIZES:
    raise ValueError(f"--model {size!r} is unknown; choose one of {sorted(SIZES)}")
  transformer, vae, name = SIZES[size]
  return Models(getattr(wan.WanConfig, transformer)(), umt5.UMT5Config(), vae, f"{name} (--model)")


def latent_shape(models: Models, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
  from t2vu_jax import pipeline
  return pipeline.latent_shape(batch, models.transformer.in_channels, height, width, frames,
                               pipeline.vae_stride(models.vae))


def video_tokens(models: Models, latent) -> int:
  pt, ph, pw = models.transformer.patch_size
  return latent[2] // pt * (latent[3] // ph) * (latent[4] // pw)


# ----------------------------------------------------------------------------------------------
# FLOPs of a run


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  component: str   # whose throughput times it: "transformer", "text_encoder" or "vae"
  calls: float     # forwards (transformer, text encoder: per prompt) or decodes (vae: per video)
  flops: float     # in all
  program: str     # the compiled program whose peak memory is the stage's


def vae_decode_flops(cfg: vae_lib.WanVAEConfig, latent_frames: int, h: int, w: int, chunk: int = 1) -> float:
  """FLOPs of decoding one video, from XLA's cost analysis of the decode of 1 and of 1 + chunk latent
  frames (a scanned chunk is counted once, so the difference is one chunk's)."""
  model = nnx.eval_shape(lambda: vae_lib.WanVAE(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)

  def cost(frames):
    z = jax.ShapeDtypeStruct((1, cfg.z_dim, frames, h, w), jnp.float32)
    lowered = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z, chunk)).lower(state, z)
    return float(lowered.cost_analysis()["flops"])

  first = cost(1)
  return first + (latent_frames - 1) / chunk * (cost(1 + chunk) - first) if latent_frames > 1 else first


def run_stages(config, models: Models, erase_prompts: int, preserve_prompts: int, eval_videos: int,
               anchor_prompts: int | None = None) -> list[Stage]:
  """The stages of an erasure run of `config` and the FLOPs of each."""
  from t2vu_jax.erase.run_config import settings
  trajectory, objective = settings(config, "trajectory"), settings(config, "objective")
  cfg = models.transformer
  v, ev = config.video, config.eval
  train_latent = latent_shape(models, 1, v.frames, v.height, v.width)
  eval_latent = latent_shape(models, 1, ev.frames, ev.height, ev.width)
  forward = wan.forward_flops(cfg, video_tokens(models, train_latent), models.text_length)
  steps, b = config.optim.total_steps, config.batch_size
  bp = config.preserve_batch_size if preserve_prompts else 0
  # Anchor prompts as the encode stage makes them (`prompts.anchor_prompts`); without their count, one
  # per erase prompt for the prompt anchor.
  anchors = anchor_prompts
  if anchors is None:
    if objective.anchor == "replace":
      raise ValueError("the replacement anchor's plan needs the count of its anchor prompts")
    anchors = erase_prompts if objective.anchor == "prompt" else 0
  pooled = anchors if objective.anchor == "replace" else erase_prompts  # prompts whose trajectories train
  prompts = erase_prompts + preserve_prompts + anchors + 1  # and the empty prompt
  encode = umt5.forward_flops(models.text_encoder, models.text_length)
  stages = [Stage("encode", "text_encoder", prompts, prompts * encode, "text_encoder")]
  guided = 2  # a sampling step is a conditional and an unconditional forward
  if trajectory.pool_repeats:  # sampled once, before training: N - 1 steps per trajectory
    per_prompt = trajectory.pool_repeats * (trajectory.steps - 1) * guided
    stages.append(Stage("trajectories (pool)", "transformer", pooled * per_prompt,
                        pooled * per_prompt * forward, "pool"))
    if preserve_prompts:
      stages.append(Stage("preservation trajectories (pool)", "transformer", preserve_prompts * per_prompt,
                          preserve_prompts * per_prompt * forward, "pool"))
  else:  # inside every step: k + 1 sampling steps, k uniform on [0, N - 2], so N / 2 on average
    per_step = trajectory.steps / 2 * guided
    stages.append(Stage("trajectories", "transformer", steps * b * per_step, steps * b * per_step * forward,
                        "train_step"))
    if bp:
      stages.append(Stage("preservation trajectories", "transformer", steps * bp * per_step,
                          steps * bp * per_step * forward, "train_step"))
  # v(c) and v(∅) (and the anchor's), then the erased forward and its input gradient (~ one forward)
  loss = b * (2 + (objective.anchor != "empty") + 2)
  stages.append(Stage("erase steps", "transformer", steps * loss, steps * loss * forward, "train_step"))
  if bp:  # the base and the erased forward on the preservation prompt, and the gradient
    stages.append(Stage("preservation", "transformer", steps * bp * 3, steps * bp * 3 * forward, "train_step"))
  eval_forward = wan.forward_flops(cfg, video_tokens(models, eval_latent), models.text_length)
  per_video = ev.steps * (guided if ev.guidance > 1 else 1)
  videos = 2 * eval_videos  # the base and the erased model
  stages.append(Stage("evaluation sampling", "transformer", videos * per_video, videos * per_video * eval_forward,
                      "sample"))
  if models.vae is not None:
    decode = vae_decode_flops(models.vae, eval_latent[2], eval_latent[3], eval_latent[4], ev.decode_chunk)
    stages.append(Stage("VAE decode", "vae", videos, videos * decode, "decode"))
  return stages


# ----------------------------------------------------------------------------------------------
# Peak memory: each stage's program compiled ahead of time on the mesh


def abstract_module(make, mesh):
  """(graphdef, abstract state whose leaves carry their shardings on `mesh`) of the module `make(rngs)`."""
  from t2vu_jax.sharding import param_shardings
  graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  return graphdef, _with_shardings(state, param_shardings(state, mesh))


def batch_array(mesh, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  """An abstract array with a leading batch axis, split over the mesh as the run splits its batches."""
  from t2vu_jax.sharding import batch_sharding
  return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape), shape[0]))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_train_step(model_cfg: wan.WanConfig, eraser, dtype, mesh, latent, objective=None, trajectory=None,
                        remat: str = "none", attention: str = "xla", text_length: int = TEXT_LENGTH):
  """(the jitted train step, its abstract arguments but the key) of erasers `eraser` on a `model_cfg`
  transformer, on `mesh`, for latents shaped `latent` (B, C, F, H, W); with `trajectory` the batch has
  no training points (the step samples them), else it carries them."""
  from t2vu_jax.erase.objective import ErasureBatch, ObjectiveConfig
  from t2vu_jax.erase.train import OptimConfig, init_train_state, make_optimizer, make_train_step
  from t2vu_jax.models.erasers import attach_erasers
  from t2vu_jax.sharding import param_shardings

  def build():
    model = wan.WanTransformer(model_cfg, dtype=dtype, rngs=nnx.Rngs(0), remat=remat, attention=attention)
    return attach_erasers(model, eraser)
  tx = make_optimizer(OptimConfig())
  shardings = param_shardings(nnx.eval_shape(build), mesh)
  graphdef, state = nnx.eval_shape(lambda: init_train_state(build(), tx))
  erasers = _with_shardings(state.erasers, nnx.state(shardings, lambda path, v: path[0] == "erasers"))
  base = _with_shardings(state.base, nnx.state(shardings, lambda path, v: path[0] != "erasers"))
  arr = lambda shape: batch_array(mesh, shape)  # noqa: E731
  b = latent[0]
  text = (b, text_length, model_cfg.text_dim)
  fields = dict(cond=arr(text), uncond=arr(text), concept_mask=arr((b, text_length)), cond_pre=arr(text))
  if trajectory is None:
    fields.update(x_t=arr(latent), t=arr((b,)), sigma=arr((b,)), x_pre=arr(latent), t_pre=arr((b,)))
  if objective is not None and objective.anchor != "empty":
    fields["anchor"] = arr(text)
  step = make_train_step(graphdef, tx, objective or ObjectiveConfig(), trajectory, latent)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  adversary = None
  if objective is not None and objective.adversarial:
    adversary = jax.ShapeDtypeStruct((objective.adversarial_tokens, model_cfg.text_dim), jnp.float32)
  return step.jitted, ((scalar, erasers, jax.eval_shape(tx.init, erasers), adversary), base, ErasureBatch(**fields))


def peak_bytes(compiled) -> int:
  """Per-device bytes XLA holds at once for a compiled program: arguments, temporaries and outputs
  (less the outputs that reuse donated arguments)."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def stage_programs(config, models: Models, mesh, needed: set[str]) -> dict[str, int]:
  """Peak per-device bytes of each program in `needed`, compiled for the run's shapes on `mesh`."""
  from t2vu_jax.erase.pool import sample_trajectories
  from t2vu_jax.erase.run_config import settings
  from t2vu_jax.pipeline import sample
  from t2vu_jax.schedulers import make_scheduler
  dtype, text_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.text_dtype)
  trajectory, objective = settings(config, "trajectory"), settings(config, "objective")
  v, ev = config.video, config.eval
  train_latent = latent_shape(models, config.batch_size, v.frames, v.height, v.width)
  eval_latent = latent_shape(models, 1, ev.frames, ev.height, ev.width)
  arr = lambda shape, dt=jnp.float32: batch_array(mesh, shape, dt)  # noqa: E731
  text = lambda b: arr((b, models.text_length, models.transformer.text_dim))  # noqa: E731
  out = {}
  with jax.set_mesh(mesh):
    if "text_encoder" in needed:
      make = lambda rngs: umt5.UMT5Encoder(models.text_encoder, dtype=text_dtype, rngs=rngs)  # noqa: E731
      graphdef, state = abstract_module(make, mesh)
      ids = arr((ENCODE_BATCH, models.text_length), jnp.int32)
      out["text_encoder"] = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m)).lower(state, ids, ids)
    if "train_step" in needed:
      step, args = abstract_train_step(models.transformer, settings(config, "eraser"), dtype, mesh, train_latent,
                                       objective, None if trajectory.pool_repeats else trajectory,
                                       remat=config.model.remat, attention=config.model.attention,
                                       text_length=models.text_length)
      out["train_step"] = step.lower(*args, jax.random.key(0))
    transformer = abstract_module(lambda rngs: wan.WanTransformer(models.transformer, dtype=dtype, rngs=rngs,
                                                                  attention=config.model.attention), mesh)
    if "pool" in needed:
      graphdef, state = transformer
      b = train_latent[0]
      scheduler = trajectory.make_scheduler()
      pool = lambda s, n, c, u: sample_trajectories(nnx.merge(graphdef, s), scheduler, n, c, u,  # noqa: E731
                                                    trajectory.guidance)
      out["pool"] = jax.jit(pool).lower(state, arr(train_latent), text(b), text(b))
    if "sample" in needed:
      graphdef, state = transformer
      sched = make_scheduler(trajectory.scheduler, ev.steps, trajectory.shift)  # its kind does not change the cost
      out["sample"] = jax.jit(lambda s, x, c, u: sample(nnx.merge(graphdef, s), sched, x, c, u, ev.guidance)).lower(
          state, arr(eval_latent), text(1), text(1))
  if "decode" in needed:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: vae_lib.WanVAE(models.vae, rngs=nnx.Rngs(0))))
    z = jax.ShapeDtypeStruct(eval_latent, jnp.float32)
    out["decode"] = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z, ev.decode_chunk)).lower(state, z)
  return {name: peak_bytes(lowered.compile()) for name, lowered in out.items()}


# ----------------------------------------------------------------------------------------------
# Throughput: a few forwards of each model, measured here


def _seconds(fn, *args, repeats: int = 3) -> float:
  """Fastest of `repeats` timed calls after one that compiles."""
  jax.block_until_ready(fn(*args))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def measure_rates(models: Models, config, full: bool, repeats: int = 3) -> dict[str, dict]:
  """FLOP/s of one device for each model: one full-width layer of the transformer (at the run's
  video tokens when `full`, else a few hundred) and of the text encoder (at 512 tokens, else 64), and
  the VAE's decode of two latent frames (at the evaluation size, else 8x8 latents)."""
  from t2vu_jax.random_pipeline import random_module
  dtype, text_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.text_dtype)
  rates = {}
  cfg = dataclasses.replace(models.transformer, num_layers=1)
  v = config.video
  latent = latent_shape(models, 1, v.frames, v.height, v.width)
  if not full:  # one latent frame of about 256 tokens
    pt, ph, pw = cfg.patch_size
    side = max(1, min(16, int(math.sqrt(video_tokens(models, latent)))))
    latent = (1, cfg.in_channels, pt, side * ph, side * pw)
  dit = random_module(lambda rngs: wan.WanTransformer(cfg, dtype=dtype, rngs=rngs, attention=config.model.attention))
  x = jnp.zeros(latent, dtype)
  context = jnp.zeros((1, models.text_length, cfg.text_dim), dtype)
  # Several forwards in one program, each on the last one's output (T2V: out = in channels), as a
  # sampling loop runs them: the rate is the model's, not the dispatch's.
  loop = 4 if cfg.in_channels == cfg.out_channels else 1
  graphdef, state = nnx.split(dit)
  once = lambda s, x, c: (s, nnx.merge(graphdef, s)(x, jnp.array([500.0]), c).astype(x.dtype), c)  # noqa: E731
  forward = jax.jit(lambda s, x, c: jax.lax.fori_loop(0, loop, lambda i, carry: once(*carry), (s, x, c))[1])
  tokens = video_tokens(models, latent)
  flops = loop * wan.forward_flops(cfg, tokens, models.text_length)
  rates["transformer"] = dict(tokens=tokens, layers=1, flops_per_s=flops / _seconds(forward, state, x, context,
                                                                                    repeats=repeats))
  text_cfg = dataclasses.replace(models.text_encoder, num_layers=1)
  encoder = random_module(lambda rngs: umt5.UMT5Encoder(text_cfg, dtype=text_dtype, rngs=rngs))
  length = models.text_length if full else min(64, models.text_length)
  ids = jnp.zeros((1, length), jnp.int32)
  encode = nnx.jit(lambda m, i: m(i))
  rates["text_encoder"] = dict(tokens=length, layers=1, flops_per_s=umt5.forward_flops(text_cfg, length) / _seconds(
      encode, encoder, ids, repeats=repeats))
  if models.vae is None:
    return rates
  ev = config.eval
  eval_latent = latent_shape(models, 1, ev.frames, ev.height, ev.width)
  h, w = eval_latent[3:] if full else (8, 8)
  decoder = random_module(lambda rngs: vae_lib.WanVAE(models.vae, rngs=rngs))
  z = jnp.zeros((1, models.vae.z_dim, 2, h, w), jnp.float32)
  decode = nnx.jit(lambda m, z: m.decode(z))
  rates["vae"] = dict(latent=[h, w], flops_per_s=vae_decode_flops(models.vae, 2, h, w) / _seconds(
      decode, decoder, z, repeats=repeats))
  return rates


# ----------------------------------------------------------------------------------------------
# The plan


def make_plan(config, size: str = "1.3b", probe: str = "auto", repeats: int = 3, progress=print) -> dict:
  """The plan of `config` on the current devices (see the module docstring) as a JSON-ready dict."""
  from t2vu_jax.erase.prompts import ErasureSet, anchor_prompts, split_paths
  from t2vu_jax.erase.run_config import settings, validate_model
  from t2vu_jax.evaluate.videos import evaluation_prompts
  from t2vu_jax.sharding import MeshConfig, make_mesh
  if probe not in ("auto", "full", "small"):
    raise ValueError(f"--probe {probe!r} is unknown; choose auto, full or small")
  models = models_of(config, size)
  validate_model(config)  # a bad value is an error naming its field, before anything is compiled
  for group in ("eraser", "objective", "trajectory", "optim"):
    settings(config, group)
  mesh = make_mesh(MeshConfig.parse(config.mesh), num_heads=models.transformer.num_attention_heads)
  preserve = split_paths(config.prompts.preserve)
  prompts = ErasureSet.from_files(split_paths(config.prompts.erase), preserve or None)
  eval_videos = len(evaluation_prompts(config)) if config.prompts.evaluate else 0
  anchors, _ = anchor_prompts(prompts.erase.entries, config.objective.anchor, config.objective.get("replacements", ""))
  stages = run_stages(config, models, len(prompts.erase.entries),
                      len(prompts.preserve.entries) if prompts.preserve else 0, eval_videos, len(anchors))
  programs = {s.program for s in stages}
  progress(f"compiling {len(programs)} programs on a {mesh.devices.size}-device mesh for peak memory")
  memory = stage_programs(config, models, mesh, programs)
  platform = jax.devices()[0].platform
  full = probe == "full" or (probe == "auto" and platform != "cpu")
  progress(f"measuring throughput ({'run' if full else 'small'} sizes)")
  rates = measure_rates(models, config, full, repeats)
  devices = mesh.devices.size
  rows = [dict(stage=s.name, calls=s.calls, tflops=s.flops / 1e12,
               seconds=s.flops / (rates[s.component]["flops_per_s"] * devices),
               peak_gb_per_device=memory[s.program] / 1e9, program=s.program) for s in stages]
  steps = config.optim.total_steps
  per_step = lambda names: sum(r["seconds"] for r in rows if r["stage"] in names) / steps  # noqa: E731
  loss = per_step(("erase steps", "preservation"))
  iteration = {"loss_s": loss}
  if settings(config, "trajectory").pool_repeats:
    pool = per_step(("trajectories (pool)", "preservation trajectories (pool)"))
    iteration.update(pooled_s=loss, pool_build_per_step_s=pool, on_policy_s=None)
  else:
    iteration.update(on_policy_s=loss + per_step(("trajectories", "preservation trajectories")), pooled_s=loss)
  return dict(config=config.name, model=models.source, devices=devices, device_kind=jax.devices()[0].device_kind,
              mesh=dict(mesh.shape), probe="run sizes" if full else "small sizes", rates=rates, stages=rows,
              iteration=iteration, total_seconds=sum(r["seconds"] for r in rows))


def format_plan(plan: dict) -> str:
  """The plan as a table, then the iteration costs."""
  lines = [f"{plan['config']} on {plan['devices']} x {plan['device_kind']} (mesh {plan['mesh']}), "
           f"model {plan['model']}",
           f"{'stage':34s} {'calls':>10s} {'TFLOP':>10s} {'time':>10s} {'peak GB/device':>15s}"]
  for r in plan["stages"]:
    lines.append(f"{r['stage']:34s} {r['calls']:10.0f} {r['tflops']:10.2f} {_duration(r['seconds']):>10s} "
                 f"{r['peak_gb_per_device']:15.2f}")
  lines.append(f"{'total':34s} {'':10s} {sum(r['tflops'] for r in plan['stages']):10.2f} "
               f"{_duration(plan['total_seconds']):>10s}")
  it = plan["iteration"]
  if it["on_policy_s"] is not None:
    lines.append(f"one iteration: on-policy {_duration(it['on_policy_s'])} (trajectories sampled in the step), "
                 f"with a frozen pool {_duration(it['pooled_s'])} plus the pool's build")
  else:
    lines.append(f"one iteration: pooled {_duration(it['pooled_s'])} plus the pool build, "
                 f"{_duration(it['pool_build_per_step_s'])} a step amortised")
  rates = ", ".join(f"{k} {v['flops_per_s'] / 1e12:.3g} TFLOP/s" for k, v in plan["rates"].items())
  lines.append(f"measured per device at {plan['probe']}: {rates}")
  return "\n".join(lines)


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.1f} s"
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main(argv) -> int:
  """`python -m t2vu_jax.scaling --plan --config=FILE [--config.x=y] [--model=SIZE] [--probe=...] [--out=FILE]`."""
  from absl import flags

  from t2vu_jax.cli import define_config_flag, error, loaded_config, parse_flags
  define_config_flag(None, "the erasure run config to plan")
  flags.DEFINE_string("model", "1.3b", "the model when model.path holds no pipeline: 1.3b, 14b (Wan2.1) or 5b "
                      "(Wan2.2 TI2V-5B)")
  flags.DEFINE_enum("probe", "auto", ["auto", "full", "small"], "sizes of the throughput probes (auto: run sizes "
                    "on accelerators, small on CPU)")
  flags.DEFINE_integer("repeats", 3, "timed calls per probe (the fastest counts)")
  flags.DEFINE_string("out", "", "JSON file to write (default: plan_<config name>.json)")
  parse_flags([sys.argv[0], *argv])
  config = loaded_config()
  FLAGS = flags.FLAGS
  from t2vu_jax.erase.run_config import ConfigError
  from t2vu_jax.io.errors import CheckpointError
  try:
    plan = make_plan(config, FLAGS.model, FLAGS.probe, FLAGS.repeats, progress=lambda m: print(m, file=sys.stderr))
  except (ConfigError, CheckpointError, ValueError, OSError) as e:
    return error(e)
  print(format_plan(plan))
  out = FLAGS.out or f"plan_{config.name}.json"
  with open(out, "w") as f:
    json.dump(plan, f, indent=2)
  print(f"wrote {out}")
  return 0
