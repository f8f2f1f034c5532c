"""A run's report: `report.json` and `report.md` from its stage markers, training metrics and
evaluation record."""
from __future__ import annotations

import json
import os

from t2vu_jax.attack.common import report_lines as attack_report_lines
from t2vu_jax.evaluate import scorers
from t2vu_jax.io.atomic import write_text


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_report(run_dir: str, name: str, stages: dict) -> str:
  """Write `report.json` and `report.md` under `run_dir`; `stages` maps each finished stage to its
  marker's info. Returns the markdown path."""
  metrics = []
  if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      metrics = [json.loads(line) for line in f if line.strip()]
  evaluation = _read_json(os.path.join(run_dir, "evaluation.json"))
  erasers = evaluation.get("erasers") if evaluation else None
  report = {"name": name, "stages": stages, "final_metrics": metrics[-1] if metrics else None,
            "evaluation": evaluation and evaluation.get("aggregate"), "evaluated_erasers": erasers,
            "exported_erasers": stages.get("export", {}).get("erasers")}
  write_text(os.path.join(run_dir, "report.json"), json.dumps(report, indent=2))

  lines = [f"# Erasure run `{name}`", "", "| stage | seconds |", "|---|---|"]
  lines += [f"| {s} | {info.get('seconds', '')} |" for s, info in stages.items()]
  if metrics:
    lines += ["", "| step | loss | L_u | L_loc | L_pre | mask coverage |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['step']} | {m['loss']:.4g} | {m['l_u']:.4g} | {m['l_loc']:.4g} | {m['l_pre']:.4g} | "
              f"{m['mask_coverage']:.3f} |" for m in metrics]
  if evaluation:
    lines += ["", f"Evaluation ({evaluation['scorer']}, {len(evaluation['videos'])} videos per model; "
              "samples in `samples/`):", ""]
    if erasers:
      lines += [f"Erasers evaluated: step {erasers['step']}, sha256 `{erasers['sha256'][:16]}`.", ""]
      if erasers["step"] != erasers["latest_step"]:
        lines += [f"**Warning: the latest checkpoint (step {erasers['latest_step']}) could not be read; this "
                  f"evaluation used the erasers of step {erasers['step']}.**", ""]
    scorer = scorers.get(evaluation["scorer"])
    if scorer is not None and evaluation.get("aggregate"):
      lines += scorer.report_lines(evaluation)
  lines += attack_report_lines(run_dir)
  if os.path.exists(os.path.join(run_dir, "contact_sheet.png")):
    lines += ["", "First evaluation prompts, base and erased model on the same seed:", "",
              "![contact sheet](contact_sheet.png)"]
  path = os.path.join(run_dir, "report.md")
  write_text(path, "\n".join(lines) + "\n")
  return path
