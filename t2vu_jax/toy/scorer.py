"""`eval.scorer=toy`: the toy world's exact classifier reads every video of a toy run."""
from __future__ import annotations

from t2vu_jax.erase.prompts import load_pools, split_paths
from t2vu_jax.evaluate.scorers import Scorer, register
from t2vu_jax.toy.classifier import Reading, classify
from t2vu_jax.toy import metrics
from t2vu_jax.toy.metrics import erased_concept, percent, prompt_scores
from t2vu_jax.toy.world import KINDS, read_prompt


@register("toy")
class ToyScorer(Scorer):
  """ESR on the prompts naming the erased value, PSR on those naming another value of its attribute,
  the erased element's other attributes' accuracy and the other element kept in two-element scenes
  (`t2vu_jax.toy.metrics.prompt_scores`)."""
  field = "reading"

  @classmethod
  def concept(cls, config) -> tuple[str, str]:
    """(kind, value) the run erases, from its erase pools' concept phrases."""
    return erased_concept(load_pools(split_paths(config.prompts.erase)).concepts)

  @classmethod
  def check(cls, config) -> None:
    try:
      cls.concept(config)
    except ValueError as e:
      raise ValueError(f"'toy' scores toy-world runs only: {e}") from None

  def __init__(self, config):
    super().__init__(config)
    self.kind, self.value = self.concept(config)

  def score(self, frames) -> Reading:
    return classify(frames)

  def names_concept(self, prompt: str) -> bool:
    return read_prompt(prompt)[self.kind] == self.value

  def shows_concept(self, reading: Reading) -> bool:
    return getattr(reading, self.kind) == self.value

  def record(self, reading: Reading) -> dict:
    return {k: getattr(reading, k) for k in KINDS}

  def aggregate(self, prompts, readings) -> dict:
    return prompt_scores(prompts, readings, self.kind, self.value)

  def summary(self) -> dict:
    return {"concept": [self.kind, self.value]}

  @staticmethod
  def report_lines(evaluation: dict) -> list[str]:
    kind, value = evaluation["concept"]
    any_scores = next(iter(evaluation["aggregate"].values()))
    others = list(any_scores["attributes"] or {})
    element = " and ".join(metrics.other_element(kind))
    lines = [f"Erased {kind} `{value}`: ESR = share of the {any_scores['erased_prompts']} prompts naming it whose "
             f"video does not show it; PSR = {kind} accuracy on the {any_scores['other_prompts']} prompts naming "
             f"another {kind}; the other attributes' accuracy on the prompts naming `{value}`; other element = "
             f"share of those prompts' two-element scenes whose {element} reads right.", "",
             "| model | ESR | PSR | " + "".join(f"{k} | " for k in others) + "other element |",
             "|---|---|---|" + "---|" * len(others) + "---|"]
    for name, a in evaluation["aggregate"].items():
      attrs = a["attributes"] or {}
      lines.append(f"| {name} | {percent(a['esr'])} | {percent(a['psr'])} | "
                   + "".join(f"{percent(attrs.get(k))} | " for k in others) + f"{percent(a.get('other_element'))} |")
    return lines
