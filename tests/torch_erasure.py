"""PyTorch reference of the T2VUnlearning erasure objective on a stock diffusers WanTransformer3DModel.

Erasers are attached with hooks, so the transformer itself is diffusers' own code:
- adapter: the output h of `attn2` ("cross_attn") or `attn1` ("self_attn") becomes h + o(h) with
  o(h) = gelu_exact(h @ down_w + down_b) @ up_w + up_b; the eraser output is o.
- lora: `attn2.to_q/to_k/to_v/to_out[0]` compute linear(x) + (alpha / r) (x @ A) @ B; the eraser output
  is attn2(inputs) with LoRA minus attn2(same inputs) without it.
Parameters are stacked over layers with a leading (num_layers,) axis.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

LORA_TARGETS = ("q", "k", "v", "out")


def _lora_linear(attn, target):
  return attn.to_out[0] if target == "out" else getattr(attn, f"to_{target}")


class TorchErasers(torch.nn.Module):
  """One eraser per transformer block, attached to `model` with hooks; on unless inside `off()`."""

  def __init__(self, model, kind="adapter", placement="cross_attn", rank=4, alpha=None, seed=0):
    super().__init__()
    if kind not in ("adapter", "lora"):
      raise ValueError(f"kind must be 'adapter' or 'lora', got {kind!r}")
    if placement not in ("cross_attn", "self_attn"):
      raise ValueError(f"placement must be 'cross_attn' or 'self_attn', got {placement!r}")
    if kind == "lora" and placement != "cross_attn":
      raise ValueError("lora erasers sit on attn2 only (placement='cross_attn')")
    self.kind, self.placement, self.rank = kind, placement, int(rank)
    self.alpha = float(rank if alpha is None else alpha)
    self.blocks = list(model.blocks)
    self.num_layers = len(self.blocks)
    self.dim = model.config.num_attention_heads * model.config.attention_head_dim
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in self.param_shapes().items():
      if name == "down_w" or name.endswith("_a"):
        params[name] = torch.randn(shape, generator=gen) / np.sqrt(shape[-2])
      else:
        params[name] = torch.zeros(shape)
    self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})
    self.enabled = True
    self._lora_on = True
    self.outputs = {}
    self._handles = []
    for layer, block in enumerate(self.blocks):
      if kind == "adapter":
        attn = block.attn2 if placement == "cross_attn" else block.attn1
        self._handles.append(attn.register_forward_hook(self._adapter_hook(layer)))
      else:
        for target in LORA_TARGETS:
          self._handles.append(_lora_linear(block.attn2, target).register_forward_hook(self._lora_hook(layer, target)))
        self._handles.append(block.attn2.register_forward_hook(self._lora_output_hook(layer), with_kwargs=True))

  def param_shapes(self):
    """name -> stacked shape (num_layers, ...)."""
    n, d, r = self.num_layers, self.dim, self.rank
    if self.kind == "adapter":
      return {"down_w": (n, d, r), "down_b": (n, r), "up_w": (n, r, d), "up_b": (n, d)}
    shapes = {}
    for target in LORA_TARGETS:
      lin = _lora_linear(self.blocks[0].attn2, target)
      shapes[f"lora_{target}_a"] = (n, lin.in_features, r)
      shapes[f"lora_{target}_b"] = (n, r, lin.out_features)
    return shapes

  def set_params(self, arrays):
    """Copy stacked numpy arrays (name -> (num_layers, ...)) into the eraser parameters; every name required."""
    if set(arrays) != set(self.params):
      raise KeyError(f"expected eraser params {sorted(self.params)}, got {sorted(arrays)}")
    with torch.no_grad():
      for name, value in arrays.items():
        p = self.params[name]
        value = torch.as_tensor(np.asarray(value))
        if tuple(value.shape) != tuple(p.shape):
          raise ValueError(f"{name}: expected shape {tuple(p.shape)}, got {tuple(value.shape)}")
        p.copy_(value.to(p.dtype))

  def get_params(self):
    """name -> stacked numpy array."""
    return {k: v.detach().cpu().numpy().copy() for k, v in self.params.items()}

  @contextlib.contextmanager
  def off(self):
    """Run the plain diffusers model inside this context."""
    prev, self.enabled = self.enabled, False
    try:
      yield
    finally:
      self.enabled = prev

  def remove(self):
    """Detach every hook from the model."""
    for h in self._handles:
      h.remove()
    self._handles = []

  def adapter(self, layer, h):
    """o = gelu_exact(h @ down_w + down_b) @ up_w + up_b."""
    p = self.params
    z = F.gelu(h @ p["down_w"][layer] + p["down_b"][layer], approximate="none")
    return z @ p["up_w"][layer] + p["up_b"][layer]

  def _adapter_hook(self, layer):
    def hook(module, args, out):
      if not self.enabled:
        return None
      h = out.to(self.params["up_w"].dtype)
      o = self.adapter(layer, h)
      self.outputs[layer] = o
      return (h + o).to(out.dtype)
    return hook

  def _lora_hook(self, layer, target):
    def hook(module, args, out):
      if not (self.enabled and self._lora_on):
        return None
      a, b = self.params[f"lora_{target}_a"][layer], self.params[f"lora_{target}_b"][layer]
      x = args[0].to(a.dtype)
      return (out.to(a.dtype) + (self.alpha / self.rank) * ((x @ a) @ b)).to(out.dtype)
    return hook

  def _lora_output_hook(self, layer):
    def hook(module, args, kwargs, out):
      if not (self.enabled and self._lora_on):
        return None
      self._lora_on = False
      try:
        base = module.forward(*args, **kwargs)
      finally:
        self._lora_on = True
      self.outputs[layer] = (out - base).to(self.params["lora_q_a"].dtype)
      return None
    return hook


def cross_attention_probs(attn, hidden_states, text):
  """P = softmax(q k^T / sqrt(head_dim)) over all text keys, (B, heads, S, L).

  q = norm_q(to_q(hidden_states)), k = norm_k(to_k(text)); heads split after the norms; no rope, no mask.
  """
  if attn.add_k_proj is not None:
    raise NotImplementedError("image-conditioned cross-attention is not covered")
  q = attn.norm_q(F.linear(hidden_states, attn.to_q.weight, attn.to_q.bias))
  k = attn.norm_k(F.linear(text, attn.to_k.weight, attn.to_k.bias))
  b, s, _ = q.shape
  q = q.unflatten(2, (attn.heads, -1)).transpose(1, 2)
  k = k.unflatten(2, (attn.heads, -1)).transpose(1, 2)
  logits = (q @ k.transpose(-1, -2)) / np.sqrt(q.shape[-1])
  return torch.softmax(logits, dim=-1)


@contextlib.contextmanager
def record_concept_attention(model, concept_mask):
  """Yield a dict layer -> A_l (B, S): head-mean cross-attention summed over the concept tokens.

  Filled during forwards inside the context, from attn2's inputs captured by a forward pre-hook.
  """
  maps = {}
  handles = []

  def make(layer):
    def pre_hook(module, args, kwargs):
      hidden = args[0] if args else kwargs["hidden_states"]
      text = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
      with torch.no_grad():
        p = cross_attention_probs(module, hidden, text).mean(dim=1)
        maps[layer] = (p * concept_mask.to(p.dtype)[:, None, :]).sum(-1)
      return None
    return pre_hook

  for layer, block in enumerate(model.blocks):
    handles.append(block.attn2.register_forward_pre_hook(make(layer), with_kwargs=True))
  try:
    yield maps
  finally:
    for h in handles:
      h.remove()


def localization_mask(attn_concept, grid, threshold=0.1):
  """M = ((A - min) / (max - min + 1e-8) > threshold) with min/max per (sample, latent frame) over (h, w).

  attn_concept (B, S) with S = F' * H' * W' tokens in (f, h, w) order; grid = (F', H', W'); returns (B, S) float.
  """
  b = attn_concept.shape[0]
  a = attn_concept.reshape(b, grid[0], grid[1] * grid[2])
  lo = a.min(dim=-1, keepdim=True).values
  hi = a.max(dim=-1, keepdim=True).values
  n = (a - lo) / (hi - lo + 1e-8)
  return (n > threshold).to(attn_concept.dtype).reshape(b, -1)


def velocity(model, x, text, t):
  """v(x, text, t): the transformer's output."""
  return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def localization_loss(outputs, masks):
  """mean over l, b of sum_s mean_d(o_l^2) (1 - M_l) / (sum_s (1 - M_l) + 1e-9)."""
  terms = []
  for o, m in zip(outputs, masks):
    keep = 1.0 - m.to(o.dtype)
    per_token = (o ** 2).mean(dim=-1)
    terms.append(((per_token * keep).sum(-1) / (keep.sum(-1) + 1e-9)).mean())
  return torch.stack(terms).mean()


def erasure_objective(model, erasers, batch, *, eta, lambda_loc, lambda_pre, threshold=0.1,
                      sigma_weighting=False, guidance_sigma_min=0.0):
  """L = L_u + lambda_loc L_loc + lambda_pre L_pre, and its gradients w.r.t. the eraser parameters.

  batch: x_t (B,C,F,H,W), t (B,), sigma (B,) (only read with sigma_weighting), cond / uncond (B,L,text_dim),
  concept_mask (B,L) 0/1, optionally x_pre, t_pre, cond_pre (all or none) and anchor (B,L,text_dim).
  target = v_a - eta (v_cond - v_a), v_a = v(anchor) if given else v(uncond), all with erasers off;
  L_u = mean(w (v_on - target)^2), w = sigma[b]^2 if sigma_weighting else 1;
  L_pre = mean((v'(pre) - v(pre))^2) or 0 without preservation inputs.
  """
  if not erasers.enabled:
    raise RuntimeError("erasure_objective needs the erasers enabled (it turns them off where the math says)")
  model.requires_grad_(False)
  x_t, t, cond, uncond = batch["x_t"], batch["t"], batch["cond"], batch["uncond"]
  pt, ph, pw = model.config.patch_size
  grid = (x_t.shape[2] // pt, x_t.shape[3] // ph, x_t.shape[4] // pw)
  n_layers = len(model.blocks)

  with torch.no_grad(), erasers.off():
    v_anchor = velocity(model, x_t, uncond if batch.get("anchor") is None else batch["anchor"], t)
    with record_concept_attention(model, batch["concept_mask"]) as maps:
      v_cond = velocity(model, x_t, cond, t)
  attn_concept = [maps[l] for l in range(n_layers)]
  masks = [localization_mask(a, grid, threshold) for a in attn_concept]
  eta_b = torch.tensor([eta if float(s) >= guidance_sigma_min else 0.0 for s in batch["sigma"]])
  target = v_anchor - eta_b.reshape(-1, *([1] * (v_anchor.ndim - 1))) * (v_cond - v_anchor)

  erasers.outputs = {}
  v_on = velocity(model, x_t, cond, t)
  outputs = [erasers.outputs[l] for l in range(n_layers)]
  erasers.outputs = {}

  sq = (v_on - target) ** 2
  if sigma_weighting:
    sq = sq * (batch["sigma"].to(sq.dtype) ** 2).reshape(-1, *([1] * (sq.ndim - 1)))
  l_u = sq.mean()
  l_loc = localization_loss(outputs, masks)

  pre_keys = ("x_pre", "t_pre", "cond_pre")
  given = [batch.get(k) is not None for k in pre_keys]
  if any(given) and not all(given):
    raise ValueError(f"preservation needs all of {pre_keys}")
  if all(given):
    with torch.no_grad(), erasers.off():
      v_pre_ref = velocity(model, batch["x_pre"], batch["cond_pre"], batch["t_pre"])
    v_pre = velocity(model, batch["x_pre"], batch["cond_pre"], batch["t_pre"])
    erasers.outputs = {}
    l_pre = ((v_pre - v_pre_ref) ** 2).mean()
  else:
    l_pre = torch.zeros((), dtype=l_u.dtype)

  loss = l_u + lambda_loc * l_loc + lambda_pre * l_pre
  names = list(erasers.params)
  grads = torch.autograd.grad(loss, [erasers.params[k] for k in names], allow_unused=True)
  grads = {k: (torch.zeros_like(erasers.params[k]) if g is None else g).detach().cpu().numpy()
           for k, g in zip(names, grads)}

  def np_stack(ts):
    return torch.stack([x.detach() for x in ts]).cpu().numpy()

  return dict(loss=loss.item(), l_u=l_u.item(), l_loc=l_loc.item(), l_pre=l_pre.item(),
              masks=np_stack(masks), attn_concept=np_stack(attn_concept), grads=grads,
              v_on=v_on.detach().cpu().numpy(), v_cond=v_cond.cpu().numpy(),
              v_anchor=v_anchor.cpu().numpy(), target=target.cpu().numpy(),
              eraser_outputs=np_stack(outputs))
