"""Tiny models built locally with diffusers/transformers (random weights), for tests and benchmarks to
save in the real on-disk layouts and read back through our real loaders. No hub downloads exist here."""

# diffusers' own tiny test configuration of WanTransformer3DModel.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# Wider heads, in != out channels, three layers.
WIDE = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32, in_channels=6,
            out_channels=3, text_dim=40, freq_dim=64, ffn_dim=112, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# Many narrow heads, a temporal patch, no cross-attention norm, four layers.
DEEP = dict(patch_size=(2, 2, 2), num_attention_heads=4, attention_head_dim=20, in_channels=5,
            out_channels=7, text_dim=24, freq_dim=32, ffn_dim=48, num_layers=4, cross_attn_norm=False,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
# Real Wan heads are 128 wide, which lets a checkpoint without config.json be understood.
HEAD128 = dict(TINY, num_attention_heads=2, attention_head_dim=128, text_dim=32, freq_dim=32)
CONFIGS = {"tiny": TINY, "wide": WIDE, "deep": DEEP}

# A tiny UMT5 encoder; sequences longer than max_distance 16 exercise the logarithmic buckets.
UMT5_TINY = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16)
# diffusers' tiny AutoencoderKLWan test configuration.
VAE_TINY = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
# The Wan2.2 VAE's architecture (TI2V-5B's: residual blocks, 2x2 patches) in small: 8 latent channels,
# a separate decoder width, temporal resampling in the middle stage only (so 2x in time, 8x in space).
VAE_WAN22_TINY = dict(base_dim=4, decoder_base_dim=6, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
                      temperal_downsample=[False, True], is_residual=True, patch_size=2, in_channels=12,
                      out_channels=12, latents_mean=[0.3, -1.2, 0.05, 2.0, -0.4, 0.9, -2.5, 1.1],
                      latents_std=[1.7, 0.6, 2.9, 1.2, 0.35, 3.1, 1.05, 2.2], scale_factor_temporal=2,
                      scale_factor_spatial=8)
# A transformer that fits the tiny VAE (16 latent channels) and the tiny UMT5 (32-wide embeddings).
PIPELINE_TRANSFORMER = dict(TINY, in_channels=16, out_channels=16, text_dim=32)
WORDS = "a an the cat dog person naked nude woman man walking running in on park beach red blue car city at night"


def perturb_(model, seed):
  """Add noise to every parameter, so no bias or norm weight is trivially 0 or 1."""
  import torch
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def build_diffusers_transformer(config: dict, seed: int = 0):
  """A random diffusers WanTransformer3DModel (eval mode) of `config`."""
  import torch
  from diffusers import WanTransformer3DModel
  torch.manual_seed(seed)
  return perturb_(WanTransformer3DModel(**config), seed + 1)


def build_umt5(config: dict = UMT5_TINY, seed: int = 0):
  """A random transformers UMT5EncoderModel (eval mode) of `config`."""
  import torch
  import transformers
  torch.manual_seed(seed)
  return perturb_(transformers.UMT5EncoderModel(transformers.UMT5Config(**config)), seed + 1)


def build_tokenizer(vocab_size: int = UMT5_TINY["vocab_size"]):
  """A small T5-style (Unigram, metaspace, </s> appended) fast tokenizer built with `tokenizers`."""
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  pieces = ["<pad>", "</s>", "<unk>", "▁"] + [f"▁{w}" for w in WORDS.split()]
  pieces += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-" if c not in pieces]
  assert len(pieces) <= vocab_size, len(pieces)
  tok = Tokenizer(models.Unigram([(p, 0.0 if i < 3 else -1.0 - i / 10) for i, p in enumerate(pieces)], unk_id=2))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                              unk_token="<unk>")


def build_wan_pipeline(scheduler: str = "unipc", shift: float = 3.0, seed: int = 0,
                       boundary_ratio: float | None = None, ti2v: bool = False):
  """A tiny random diffusers WanPipeline: UMT5 + tokenizer + transformer + VAE + scheduler, and with a
  `boundary_ratio` a second, low-noise expert `transformer_2` (Wan2.2 A14B's layout); `ti2v` is Wan2.2
  TI2V-5B's layout (the Wan2.2 VAE, `expand_timesteps`)."""
  import torch
  from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                         WanPipeline)
  torch.manual_seed(seed)
  vae = perturb_(AutoencoderKLWan(**(VAE_WAN22_TINY if ti2v else VAE_TINY)), seed + 2)
  transformer = dict(PIPELINE_TRANSFORMER, in_channels=8, out_channels=8) if ti2v else PIPELINE_TRANSFORMER
  if scheduler == "unipc":
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
  else:
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
  experts = {}
  if boundary_ratio is not None:
    experts = dict(transformer_2=build_diffusers_transformer(transformer, seed + 5),
                   boundary_ratio=boundary_ratio)
  if ti2v:
    experts["expand_timesteps"] = True
  return WanPipeline(tokenizer=build_tokenizer(), text_encoder=build_umt5(seed=seed + 3),
                     transformer=build_diffusers_transformer(transformer, seed + 4),
                     vae=vae, scheduler=sched, **experts)
