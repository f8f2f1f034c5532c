"""Text to video with Wan2.1 in JAX: what diffusers' `WanPipeline` does, given the same initial noise.

prompt -> UMT5 embeddings (zero after each prompt's tokens) -> flow-matching sampling with
classifier-free guidance `v = v_uncond + g (v_cond - v_uncond)` (one jitted `lax.scan` over steps)
-> de-normalised latents -> VAE decode -> frames in [0, 1] -> uint8.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from t2vu_jax.models.wan_params import load_transformer
from t2vu_jax.io.errors import CheckpointError
from t2vu_jax.models.umt5_params import read_umt5
from t2vu_jax.models.vae_params import read_vae
from t2vu_jax import schedulers, text
from t2vu_jax.models.umt5 import UMT5Encoder
from t2vu_jax.models.vae import WanVAE, denormalize_latents
from t2vu_jax.models.wan import WanTransformer
from t2vu_jax.sharding import placer, to_host

SUBFOLDERS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")
PIXEL_STRIDE = (1, 1, 1)  # a pipeline without a VAE samples pixels (RGB in [-1, 1]) directly
VAE_STRIDE = (4, 8, 8)  # temporal, spatial compression of the Wan2.1 VAE


def vae_stride(vae_config) -> tuple[int, int, int]:
  """(temporal, spatial, spatial) latent stride of a VAE config (None: pixels), from the scale factors
  diffusers' pipeline sizes latents with (Wan2.1: 4, 8; Wan2.2: 4, 16)."""
  if vae_config is None:
    return PIXEL_STRIDE
  t, s = vae_config.scale_factor_temporal or VAE_STRIDE[0], vae_config.scale_factor_spatial or VAE_STRIDE[1]
  return (t, s, s)


def check_video_shape(height: int, width: int, num_frames: int) -> None:
  if height <= 0 or width <= 0 or height % 16 or width % 16:
    raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")
  if num_frames < 1 or (num_frames - 1) % VAE_STRIDE[0]:
    raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, ..., 81), got {num_frames}")


def latent_shape(batch: int, channels: int, height: int, width: int, num_frames: int,
                 stride=VAE_STRIDE) -> tuple[int, ...]:
  t, s, _ = stride
  return (batch, channels, (num_frames - 1) // t + 1, height // s, width // s)


def loop_callable(model: nnx.Module):
  """`model` as a plain function for use inside `jax.lax` loops.

  Each call rebuilds the module from plain arrays, so its Variables belong to the trace level of the
  loop body (a module captured from an outer trace cannot run its own `nnx.scan` there).
  """
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  return lambda *args, **kwargs: nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(*args, **kwargs)


def cfg_velocity(velocity, latents, t, cond, uncond, guidance, **model_kwargs):
  """Guided velocity v_u + g (v_c - v_u) of the callable `velocity(x, t, text, **model_kwargs)`;
  conditional and unconditional passes share one batched forward. `uncond=None`: v_c only."""
  if uncond is None:
    return velocity(latents, jnp.broadcast_to(t, latents.shape[:1]), cond, **model_kwargs)
  b = latents.shape[0]
  both = velocity(jnp.concatenate([latents, latents]), jnp.broadcast_to(t, (2 * b,)),
                  jnp.concatenate([cond, uncond]), **model_kwargs)
  v_cond, v_uncond = both[:b], both[b:]
  return v_uncond + guidance * (v_cond - v_uncond)


def expert_switch(scheduler: schedulers.Scheduler, boundary: float | None) -> int:
  """The first sampling step of the low-noise expert: steps whose timestep is >= `boundary` run the
  high-noise one (Wan2.2 A14B, as diffusers' `WanPipeline`); all steps without a boundary."""
  if boundary is None:
    return scheduler.num_steps
  return int(np.sum(np.asarray(scheduler.timesteps) >= boundary))


def sample(model: WanTransformer, scheduler: schedulers.Scheduler, latents, cond, uncond=None,
           guidance: float = 5.0, steps=None, on_step=None, model_2: WanTransformer | None = None,
           boundary: float | None = None, guidance_2: float | None = None, **model_kwargs):
  """Run sampling steps [0, steps) from `latents` (all steps by default; pure, jit it).

  `steps` may be a traced integer (a partial trajectory). `uncond=None` disables guidance.
  With `model_2` (Wan2.2 A14B's low-noise expert) the steps whose timestep is below `boundary`
  (`boundary_ratio` x the training timesteps) run `model_2` with guidance `guidance_2` (default
  `guidance`). `on_step(i)` is called on the host after each step (a progress bar). `model_kwargs` go
  to the models (e.g. `erasers=False`). Returns the latents at sigma_steps.
  """
  if (model_2 is None) != (boundary is None):
    raise ValueError("a second expert needs a boundary timestep, and a boundary a second expert")
  dtype = model.dtype
  timesteps = jnp.asarray(scheduler.timesteps)
  cond = cond.astype(dtype)
  uncond = None if uncond is None else uncond.astype(dtype)

  def run(expert, g, lower, upper, carry):
    velocity = loop_callable(expert)

    def body(i, carry):
      x, state = carry
      v = cfg_velocity(velocity, x.astype(dtype), timesteps[i], cond, uncond, g, **model_kwargs)
      x, state = scheduler.step(state, v.astype(jnp.float32), x)
      if on_step is not None:  # unordered: ordered callbacks cannot run in a program over several devices
        jax.debug.callback(on_step, i)
      return x, state
    return jax.lax.fori_loop(lower, upper, body, carry)

  latents = latents.astype(jnp.float32)
  steps = scheduler.num_steps if steps is None else steps
  switch = expert_switch(scheduler, boundary)
  first = min(switch, steps) if isinstance(steps, int) else jnp.minimum(switch, steps)
  carry = run(model, guidance, 0, first, (latents, scheduler.init(latents)))
  if model_2 is not None:
    carry = run(model_2, guidance if guidance_2 is None else guidance_2, switch, steps, carry)
  return carry[0]


@dataclasses.dataclass
class WanPipeline:
  """Loaded Wan T2V components; `generate` turns prompts into videos. Without a VAE (`vae=None`)
  the transformer works in pixel space: its "latents" are the RGB frames in [-1, 1]. A Wan2.2 A14B
  pipeline has a second, low-noise expert `transformer_2`, which samples the steps whose timestep is
  below `boundary_ratio` x the scheduler's training timesteps. The VAE decodes `decode_chunk` latent
  frames at a time (after the first): memory grows with the chunk, not the video."""
  transformer: WanTransformer
  text_encoder: UMT5Encoder
  tokenizer: object
  vae: WanVAE | None
  scheduler_config: dict
  embedding_cache: text.EmbeddingCache | None = None
  transformer_2: WanTransformer | None = None
  boundary_ratio: float | None = None
  decode_chunk: int = 1

  @property
  def boundary(self) -> float | None:
    """The timestep below which `transformer_2` samples (None: one transformer)."""
    if self.transformer_2 is None:
      return None
    return self.boundary_ratio * self.scheduler_config.get("num_train_timesteps", 1000)

  @property
  def text_length(self) -> int:
    return text.text_length(self.tokenizer)

  def encode(self, prompts: list[str], progress: bool = False) -> jax.Array:
    return text.encode_prompts(self.text_encoder, self.tokenizer, prompts, self.text_length,
                               cache=self.embedding_cache, progress=progress)

  def scheduler(self, steps: int, shift: float | None = None, name: str | None = None) -> schedulers.Scheduler:
    """The checkpoint's scheduler (or `name`: "unipc" | "euler") for `steps` steps and `shift`."""
    own = schedulers.scheduler_from_config(self.scheduler_config, steps, shift)
    return own if name is None else schedulers.make_scheduler(name, steps, own.shift)

  def decode(self, latents) -> np.ndarray:
    """Latents (B, C, T, H, W) -> float frames (B, F, H, W, 3) in [0, 1]."""
    if isinstance(latents, jax.Array) and not latents.is_fully_addressable:  # split across processes
      latents = to_host(latents)
    latents = jnp.asarray(latents, jnp.float32)
    if self.vae is None:
      return np.asarray(_pixels_to_frames(latents))
    return np.asarray(_decode(self.vae, latents, self.decode_chunk))

  @property
  def stride(self) -> tuple[int, int, int]:
    """(temporal, spatial, spatial) stride from video frames to the transformer's latents."""
    return vae_stride(None if self.vae is None else self.vae.config)

  def latent_shape(self, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
    return latent_shape(batch, self.transformer.config.in_channels, height, width, num_frames, self.stride)

  def generate_latents(self, prompts, negative_prompt="", height=480, width=832, num_frames=81,
                       steps=50, guidance=5.0, shift=None, seed=0, latents=None, scheduler=None,
                       progress=True, erasers: bool = True, guidance_2: float | None = None) -> jax.Array:
    """Prompts to final (not yet de-normalised) latents. `latents` fixes the initial noise;
    `erasers=False` samples with the base model when erasers are attached; `guidance_2` is the low-noise
    expert's guidance (diffusers' `guidance_scale_2`, default `guidance`)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
      raise ValueError("generate needs at least one prompt (got an empty list)")
    check_video_shape(height, width, num_frames)
    multiple = self.stride[1] * self.transformer.config.patch_size[1]  # latents split into the DiT's patches
    if height % multiple or width % multiple:
      raise ValueError(f"height and width must be multiples of {multiple} for this pipeline, got {height}x{width}")
    if steps < 1:
      raise ValueError(f"steps must be >= 1, got {steps}")
    negative = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negative) != len(prompts):
      raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
    use_cfg = guidance > 1.0  # as diffusers: guidance <= 1 means no unconditional pass
    embeddings = self.encode(prompts + (negative if use_cfg else []))
    cond, uncond = embeddings[:len(prompts)], embeddings[len(prompts):] if use_cfg else None
    return self.sample_embeddings(cond, uncond, height, width, num_frames, steps, guidance, shift, seed, latents,
                                  scheduler, progress, erasers, guidance_2)

  def sample_embeddings(self, cond, uncond=None, height=480, width=832, num_frames=81, steps=50, guidance=5.0,
                        shift=None, seed=0, latents=None, scheduler=None, progress=True, erasers: bool = True,
                        guidance_2: float | None = None) -> jax.Array:
    """Prompt embeddings (B, L, D) to final latents, as `generate_latents` samples its prompts'; `uncond`
    (B, L, D) or None (no guidance). Attacks edit embeddings and sample them here."""
    shape = self.latent_shape(len(cond), height, width, num_frames)
    if latents is None:
      latents = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    elif tuple(np.shape(latents)) != shape:
      raise ValueError(f"initial latents have shape {tuple(np.shape(latents))}, expected {shape} for "
                       f"{len(cond)} prompt(s) at {num_frames}x{height}x{width}")
    if uncond is not None and np.shape(uncond) != np.shape(cond):
      raise ValueError(f"unconditional embeddings have shape {np.shape(uncond)}, the prompts' {np.shape(cond)}")
    sched = self.scheduler(steps, shift, scheduler)
    with tqdm(total=steps, desc="sampling", unit="step", disable=not progress) as bar:
      _progress_bars.append(bar)
      try:
        g2 = float(guidance if guidance_2 is None else guidance_2)
        out = jax.block_until_ready(_sample(self.transformer, sched, jnp.asarray(latents, jnp.float32),
                                            jnp.asarray(cond), None if uncond is None else jnp.asarray(uncond),
                                            float(guidance), bool(erasers), self.transformer_2, self.boundary, g2))
      finally:
        _progress_bars.pop()
    return out

  def generate(self, prompts, negative_prompt="", height=480, width=832, num_frames=81, steps=50,
               guidance=5.0, shift=None, seed=0, latents=None, scheduler=None, progress=True,
               output="uint8", erasers: bool = True, guidance_2: float | None = None) -> np.ndarray:
    """Prompts to videos (B, F, H, W, 3): uint8 by default, or `output="float"` frames in [0, 1]."""
    if output not in ("uint8", "float"):
      raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
    final = self.generate_latents(prompts, negative_prompt, height, width, num_frames, steps, guidance,
                                  shift, seed, latents, scheduler, progress, erasers, guidance_2)
    frames = self.decode(final)
    return frames if output == "float" else np.round(frames * 255).astype(np.uint8)


_progress_bars = []  # the bar of the sampling run in progress, advanced from inside the jitted loop


def _advance_progress(i):
  if _progress_bars:
    _progress_bars[-1].update(1)


@nnx.jit(static_argnums=(1, 6, 8))
def _sample(model, scheduler, latents, cond, uncond, guidance, erasers, model_2, boundary, guidance_2):
  return sample(model, scheduler, latents, cond, uncond, guidance, on_step=_advance_progress, model_2=model_2,
                boundary=boundary, guidance_2=guidance_2, erasers=erasers)


def _pixels_to_frames(video):
  """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) in [0, 1]."""
  return jnp.clip(jnp.transpose(video, (0, 2, 3, 4, 1)) / 2 + 0.5, 0.0, 1.0)


@nnx.jit(static_argnums=(2,))
def _decode(vae: WanVAE, latents, chunk: int):
  return _pixels_to_frames(vae.decode(denormalize_latents(latents, vae.config), chunk))


def is_absent(meta: dict, component: str) -> bool:
  """Whether `model_index.json` declares the component empty (`[null, null]`)."""
  return component in meta and meta[component] in (None, [None, None])


def check_pipeline_dir(path: str) -> dict:
  """The `model_index.json` of a diffusers Wan T2V pipeline directory, or a clear error."""
  path = str(path)
  index = os.path.join(path, "model_index.json")
  if not os.path.isfile(index):
    raise CheckpointError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
  with open(index) as f:
    meta = json.load(f)
  cls = meta.get("_class_name")
  if cls != "WanPipeline":
    raise CheckpointError(f"{index}: pipeline class {cls!r} is not supported; only text-to-video "
                          "'WanPipeline' checkpoints are")
  two = "transformer_2" in meta and not is_absent(meta, "transformer_2")
  ratio = meta.get("boundary_ratio")
  if two != (ratio is not None):
    raise CheckpointError(f"{index}: " + ("transformer_2 needs a boundary_ratio" if two else
                                          f"boundary_ratio {ratio} is set but there is no transformer_2"))
  if two and not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
    raise CheckpointError(f"{index}: boundary_ratio must be a number in (0, 1), got {ratio!r}")
  missing = [s for s in SUBFOLDERS + (("transformer_2",) if two else ())
             if not os.path.isdir(os.path.join(path, s)) and not is_absent(meta, s)]
  if missing:
    raise CheckpointError(f"{path}: missing pipeline subfolder(s) {', '.join(missing)} "
                          f"(a Wan pipeline has {', '.join(SUBFOLDERS)})")
  return meta


def load_pipeline(path: str, dtype="float32", text_dtype=None, vae_dtype="float32",
                  transformer: str | None = None, cache_dir: str | None = None,
                  progress: bool = True, mesh=None, **model_kwargs) -> WanPipeline:
  """Load a diffusers Wan T2V pipeline directory: Wan2.1, Wan2.2 A14B (`transformer_2`) or Wan2.2 TI2V-5B
  (`expand_timesteps`, the Wan2.2 VAE; text to video, where every token has the step's timestep, so the
  plain per-sample timestep gives the same modulation).

  `dtype` is the transformer's dtype, `text_dtype` the encoder's (default: `dtype`). `transformer`
  replaces the pipeline's transformer (any path `load_transformer` reads, e.g. erased weights).
  `cache_dir` enables the on-disk prompt embedding cache. With a `mesh` the transformer is read
  straight into its shards and the text encoder is sharded the same way (`t2vu_jax.sharding`).
  `model_kwargs` go to the transformers (`remat`, `attention`).
  """
  path = str(path)
  meta = check_pipeline_dir(path)
  config_path = os.path.join(path, "scheduler", "scheduler_config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{path}/scheduler has no scheduler_config.json")
  with open(config_path) as f:
    scheduler_config = json.load(f)
  schedulers.scheduler_from_config(scheduler_config, 1)  # unsupported options fail before loading weights
  tokenizer = text.load_tokenizer(path)
  place = placer(mesh) if mesh is not None else None
  encoder = read_umt5(path, jnp.dtype(text_dtype or dtype), progress=progress, place=place)
  text.check_vocab(tokenizer, encoder)
  transformer = load_transformer(transformer or os.path.join(path, "transformer"), dtype, progress=progress,
                                 mesh=mesh, **model_kwargs)
  if transformer.config.text_dim != encoder.config.d_model:
    raise CheckpointError(f"{path}: the transformer expects {transformer.config.text_dim}-wide text "
                          f"embeddings but the text encoder gives {encoder.config.d_model}")
  transformer_2 = None
  if meta.get("boundary_ratio") is not None:
    transformer_2 = load_transformer(os.path.join(path, "transformer_2"), dtype, progress=progress, mesh=mesh,
                                     **model_kwargs)
    for field in ("in_channels", "out_channels", "text_dim", "patch_size"):
      if getattr(transformer_2.config, field) != getattr(transformer.config, field):
        raise CheckpointError(f"{path}: transformer_2 has {field} {getattr(transformer_2.config, field)}, "
                              f"transformer {getattr(transformer.config, field)}; the two experts must agree")
  vae = None if is_absent(meta, "vae") else read_vae(path, jnp.dtype(vae_dtype), progress=progress)
  if vae is None and transformer.config.in_channels != 3:
    raise CheckpointError(f"{path}: a pipeline without a VAE samples RGB pixels, but the transformer has "
                          f"{transformer.config.in_channels} input channels")
  if vae is not None and transformer.config.in_channels != vae.config.z_dim:
    raise CheckpointError(f"{path}: the transformer has {transformer.config.in_channels} input channels but the "
                          f"VAE's latents have {vae.config.z_dim}")
  cache = None
  if cache_dir:
    files = [os.path.join(path, "text_encoder", f) for f in os.listdir(os.path.join(path, "text_encoder"))
             if f.endswith(".safetensors")]
    cache = text.EmbeddingCache.for_files(cache_dir, files, path)
  return WanPipeline(transformer, encoder, tokenizer, vae, scheduler_config, cache, transformer_2,
                     meta.get("boundary_ratio"))
