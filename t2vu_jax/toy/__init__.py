"""The toy world: synthetic text-to-video data, prompts with held-out wordings, a tokenizer and an
exact classifier, small enough to pretrain and erase on a CPU (DESIGN.md section 8)."""
from t2vu_jax.toy.classifier import Reading, classify, classify_batch, mask_iou
from t2vu_jax.toy.tokenizer import MAX_PROMPT_TOKENS, build_toy_tokenizer, vocabulary
from t2vu_jax.toy.world import (COLOURS, FRAMES, KINDS, MOTIONS, OBJECT_KINDS, PATTERN_FORMS, PATTERNS, SHAPES, SIZE,
                                TEMPLATES, VALUES, WORDINGS, Prompt, Scene, background, compose, dataset, is_held_out,
                                object_mask, pattern_mask, prompt, read_prompt, render, sample_scenes, value_of,
                                wordings)

__all__ = ["COLOURS", "FRAMES", "KINDS", "MAX_PROMPT_TOKENS", "MOTIONS", "OBJECT_KINDS", "PATTERNS", "PATTERN_FORMS",
           "SHAPES", "SIZE", "TEMPLATES", "VALUES", "WORDINGS", "Prompt", "Reading", "Scene", "background",
           "build_toy_tokenizer", "classify", "classify_batch", "compose", "dataset", "is_held_out", "mask_iou",
           "object_mask", "pattern_mask", "prompt", "read_prompt", "render", "sample_scenes", "value_of",
           "vocabulary", "wordings"]
