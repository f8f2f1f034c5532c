"""The embedded default: a tiny Wan2.1-architecture model that runs on a laptop CPU in seconds."""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = "runs/toy"
  c.seed = 0
  c.dtype = "float32"
  c.model = ml_collections.ConfigDict(dict(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
      text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2))
  c.latent_shape = (1, 4, 3, 8, 8)  # (B, C, F, H, W)
  c.text_len = 16
  return c
