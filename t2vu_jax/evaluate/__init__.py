"""Evaluation: NudeNet scoring of generated videos, the authors' evaluation-prompt CSVs, contact sheets."""
from t2vu_jax.evaluate.nudity import (
    DEFAULT_THRESHOLD, EXPOSED_CLASSES, AggregateScore, NudityScorer, VideoScore, aggregate, load_detector)
from t2vu_jax.evaluate.prompts_csv import PromptCSVError, PromptRecord, read_prompt_csv
from t2vu_jax.evaluate.sheet import contact_sheet

__all__ = [
    "DEFAULT_THRESHOLD", "EXPOSED_CLASSES", "AggregateScore", "NudityScorer", "VideoScore", "aggregate",
    "load_detector", "PromptCSVError", "PromptRecord", "read_prompt_csv", "contact_sheet"]
