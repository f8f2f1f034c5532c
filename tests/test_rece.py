"""RECE's closed-form edit of the cross-attention: the least-squares solution it claims, exact on
preserved contexts orthogonal to the concept, adversarial rounds that close the gap they find, and an
edit that removes a toy concept while the other values stay."""
import dataclasses

import numpy as np
import pytest

from configs import toy
from t2vu_jax.erase.prompts import load_pool
from t2vu_jax.erase.rece import (RECEConfig, adversarial_context, edit_solve, rece_edit, rece_kernels,
                                  with_kernels)
from t2vu_jax.pipeline import load_pipeline

D = 12


def rows(rng, n, basis):
  return rng.standard_normal((n, basis.shape[0])) @ basis


def test_the_edit_is_the_least_squares_solution():
  rng = np.random.default_rng(0)
  x_c, x_t, x_p, kernel = (rng.standard_normal(s) for s in ((5, D), (5, D), (30, D), (D, D)))
  lam, mu = 0.7, 0.05
  delta = edit_solve(x_c, x_t, x_p, lam, mu) @ kernel
  # argmin |X_c (K + Δ) − X_t K|² / n_c + λ |X_p Δ|² / n_p + μ |Δ|², as one stacked least-squares problem
  a = np.concatenate([x_c / np.sqrt(5), np.sqrt(lam / 30) * x_p, np.sqrt(mu) * np.eye(D)])
  b = np.concatenate([(x_t - x_c) @ kernel / np.sqrt(5), np.zeros((30 + D, D))])
  direct = np.linalg.lstsq(a, b, rcond=None)[0]
  np.testing.assert_allclose(delta, direct, atol=1e-10, rtol=0)


def test_preserved_contexts_orthogonal_to_the_concept_keep_their_projections():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((D, D)))
  concept_space, kept_space = q[:, :4].T, q[:, 4:].T
  x_c, x_p = rows(rng, 6, concept_space), rows(rng, 40, kept_space)
  x_t = rng.standard_normal((6, D))
  kernels = {p: rng.standard_normal((3, D, D)) for p in ("to_k", "to_v")}
  edited, _ = rece_kernels(kernels, x_c, x_t, x_p, RECEConfig(iterations=0))
  for p in kernels:
    change = np.abs(np.einsum("nd,lde->lne", x_p, edited[p] - kernels[p])).max()
    moved = np.abs(np.einsum("nd,lde->lne", x_c, edited[p] - kernels[p])).max()
    assert change <= 1e-5 and moved > 0.1, (p, change, moved)


def test_adversarial_rounds_close_the_gap_they_find():
  rng = np.random.default_rng(2)
  x_c, x_t, x_p = rng.standard_normal((4, D)), rng.standard_normal((4, D)), rng.standard_normal((50, D))
  kernels = {p: rng.standard_normal((2, D, D)) for p in ("to_k", "to_v")}
  cfg = RECEConfig(iterations=1)
  flat = lambda k: [k[p][i] for p in ("to_k", "to_v") for i in range(2)]  # noqa: E731
  once, _ = rece_kernels(kernels, x_c, x_t, x_p, dataclasses.replace(cfg, iterations=0))
  twice, found = rece_kernels(kernels, x_c, x_t, x_p, cfg)
  concept = x_c.mean(0, keepdims=True)
  e = found[0]
  np.testing.assert_allclose(e, adversarial_context(concept, flat(kernels), flat(once), e_ridge(cfg, once)), atol=1e-12)

  def gap(edited, x):  # how far x's edited projections are from the concept's original ones
    return sum(np.sum((x @ k2 - concept @ k) ** 2) for k, k2 in zip(flat(kernels), flat(edited)))
  assert gap(once, e) < gap(once, concept)  # the context that brings the concept back through the first edit
  assert gap(twice, e) > 2 * gap(once, e)   # and the second edit takes it away


def e_ridge(cfg, edited):
  ks = [edited[p][i] for p in ("to_k", "to_v") for i in range(edited[p].shape[0])]
  return cfg.adversarial_ridge * float(np.mean([np.mean(np.linalg.svd(k, compute_uv=False) ** 2) for k in ks]))


def test_rece_removes_a_toy_colour_and_keeps_the_others():
  from t2vu_jax.attack import AttackContext
  from t2vu_jax.toy import world
  from t2vu_jax.toy.classifier import classify_batch
  config = toy.get_config()
  config.attack.num_prompts = 16
  pipe = load_pipeline(config.model.path, "float32", progress=False)
  kernels, info = rece_edit(pipe, load_pool(config.prompts.erase).entries,
                            [e.prompt for e in load_pool(config.prompts.preserve).entries], RECEConfig())
  edited = dataclasses.replace(pipe, transformer=with_kernels(pipe.transformer, kernels))
  context = AttackContext(pipe, edited, config, progress=False, targets=("base", "erased"))
  prompts = context.embed(context.prompts)
  before, after = context.concept_rate("base", prompts), context.concept_rate("erased", prompts)
  others = [e.prompt for e in load_pool(config.prompts.evaluate).entries
            if world.read_prompt(e.prompt)["colour"] != "red"][:16]

  def accuracy(p):
    frames = p.generate(others, height=16, width=16, num_frames=5, steps=20, guidance=4.0, seed=0, progress=False,
                        output="float")
    return np.mean([r.colour == world.read_prompt(q)["colour"] for r, q in zip(classify_batch(frames, (0, 1)), others)])
  kept_base, kept_rece = accuracy(pipe), accuracy(edited)
  print(f"RECE on red: {info}; red rate {before:.0%} -> {after:.0%}; other colours {kept_base:.0%} -> {kept_rece:.0%}")
  assert before >= 0.9 and after <= 0.1 and kept_rece >= kept_base - 0.1


def test_bad_rece_settings():
  for bad in (dict(target="person"), dict(ridge=0.0), dict(iterations=-1), dict(preserve_weight=-1.0)):
    with pytest.raises(ValueError):
      RECEConfig(**bad)


def test_a_rece_run_edits_exports_and_evaluates(tmp_path):
  import torch
  from diffusers import WanTransformer3DModel
  from configs import toy_rece
  from t2vu_jax.erase.job import ErasureJob
  config = toy_rece.get_config()
  config.workdir = str(tmp_path / "run")
  config.eval.update(dict(num_prompts=2, steps=2))
  job = ErasureJob(config, progress=False)
  summary = job.run()
  assert summary["erase"]["method"] == "rece" and summary["erase"]["adversarial"] == 3
  assert summary["evaluate"]["erasers"]["sha256"] == summary["erase"]["erasers"]["sha256"]
  edited = job.erased_models()[0]
  exported = WanTransformer3DModel.from_pretrained(tmp_path / "run" / "export" / "merged", torch_dtype=torch.float32)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 3, 2, 16, 16)).astype(np.float32)
  text = rng.standard_normal((1, 20, edited.config.text_dim)).astype(np.float32)
  with torch.no_grad():
    theirs = exported(hidden_states=torch.from_numpy(x), timestep=torch.tensor([500.0]),
                      encoder_hidden_states=torch.from_numpy(text), return_dict=False)[0].numpy()
  ours = np.asarray(edited(x, np.array([500.0], np.float32), text))
  assert np.abs(theirs - ours).max() <= 2e-5
  base = np.asarray(job.pipeline().transformer(x, np.array([500.0], np.float32), text))
  assert np.abs(base - ours).max() > 1e-3  # the edit changed the model
  # A rerun reads the edit back: the same kernels.
  again = ErasureJob(config, progress=False).erased_models()[0]
  np.testing.assert_array_equal(np.asarray(again.blocks.attn2.to_k.kernel[...]),
                                np.asarray(edited.blocks.attn2.to_k.kernel[...]))


@pytest.mark.parametrize("change, message", [({"export.formats": "adapter"}, "config.export.formats: a RECE run"),
                                             ({"method": "uce"}, "config.method: 'uce' is unknown"),
                                             ({"rece.target": "person"}, "config.rece: target 'person'")])
def test_bad_rece_runs_are_refused_before_any_weights_load(change, message):
  from configs import toy_rece
  from t2vu_jax.erase.run_config import ConfigError, validate
  config = toy_rece.get_config()
  for key, value in change.items():
    *groups, field = key.split(".")
    node = config
    for g in groups:
      node = node[g]
    node[field] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)
