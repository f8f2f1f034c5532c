"""The evaluate stage of a run: every evaluation prompt through each model on the same seeds, the
videos saved, scored by the configured scorer (`t2vu_jax.evaluate.scorers`) and summed up in an
evaluation record with a contact sheet."""
from __future__ import annotations

import json
import os

import jax
from tqdm.auto import tqdm

from t2vu_jax.erase.prompts import load_pool, split_paths
from t2vu_jax.evaluate import scorers
from t2vu_jax.evaluate.prompts_csv import read_prompt_csv
from t2vu_jax.evaluate.sheet import contact_sheet, thumbnails
from t2vu_jax.generate import write_video
from t2vu_jax.io.atomic import write_text

SHEET_PROMPTS = 4  # evaluation prompts in the report's contact sheet (one row per model each)


def evaluation_prompts(config) -> list[tuple[str, int]]:
  """(prompt, seed) pairs of `config.prompts.evaluate`: CSVs in the T2VUnlearning authors' format (their
  seeds, when given, are used) or JSONL pools; the first `eval.num_prompts` prompts, each with seeds
  0..eval.seeds-1 unless it has its own."""
  pairs = []
  for path in split_paths(config.prompts.evaluate):
    if path.endswith(".csv"):
      pairs += [(r.prompt, r.seed) for r in read_prompt_csv(path)]
    else:
      pairs += [(e.prompt, None) for e in load_pool(path).entries]
  pairs = pairs[:config.eval.num_prompts]
  return [(p, seed) if seed is not None else (p, s) for p, seed in pairs
          for s in ([seed] if seed is not None else range(config.eval.seeds))]


def evaluate_models(models: dict, config, out_dir: str, mesh, primary: bool = True, progress: bool = True,
                    erasers: dict | None = None) -> dict:
  """Generate the evaluation prompts with every pipeline of `models` (name -> (pipeline, erasers on)),
  write the videos to `out_dir/samples/`, and, on the primary process, score them and write
  `evaluation.json` and `contact_sheet.png`. `erasers` (which erasers were evaluated: step, sha256)
  goes into the record. Returns the evaluation record."""
  ev = config.eval
  scorer_cls = scorers.get(ev.scorer)
  scorer = scorer_cls(config) if scorer_cls is not None else None
  os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
  rows, scores, sheet = [], {name: [] for name in models}, []
  for n, (prompt, seed) in enumerate(tqdm(evaluation_prompts(config), desc="evaluating", disable=not progress)):
    row = {"prompt": prompt, "seed": seed}
    for name, (pipe, erasers_on) in models.items():
      with jax.set_mesh(mesh):
        frames = pipe.generate(prompt, height=ev.height, width=ev.width, num_frames=ev.frames, steps=ev.steps,
                               guidance=ev.guidance, guidance_2=ev.get("guidance_2"), seed=seed, progress=False,
                               erasers=erasers_on)[0]
      path = os.path.join(out_dir, "samples", f"{n:03d}_seed{seed}_{name}.mp4")
      row[name] = os.path.relpath(path, out_dir)
      if not primary:  # every process samples (the model is sharded); process 0 writes and scores
        continue
      write_video(path, frames, ev.fps)
      if scorer is not None:
        score = scorer.score(frames)
        scores[name].append(score)
        row[f"{name}_{scorer.field}"] = scorer.record(score)
      if n < SHEET_PROMPTS:
        sheet.append((thumbnails(frames), f"{name} | seed {seed} | {prompt}"))
    rows.append(row)
  # This evaluation's own settings: they may differ from the run's config.json, which records training.
  result = {"scorer": ev.scorer, "settings": {"eval": ev.to_dict(), "prompts": config.prompts.evaluate},
            "erasers": erasers, "videos": rows}
  if primary:
    if scorer is not None:
      result.update(scorer.summary())
      result["aggregate"] = {name: scorer.aggregate([r["prompt"] for r in rows], s) for name, s in scores.items()}
    videos, labels = zip(*sheet)
    contact_sheet(videos, labels, os.path.join(out_dir, "contact_sheet.png"),
                  scale=max(1, 96 // videos[0].shape[1]))
    write_text(os.path.join(out_dir, "evaluation.json"), json.dumps(result, indent=2))
  return result
