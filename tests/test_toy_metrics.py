"""Toy-experiment metrics on hand-built readings, attention maps and masks; contact sheets."""
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from t2vu_jax.evaluate.sheet import GAP, LABEL_HEIGHT, MARGIN, contact_sheet, sheet_size
from t2vu_jax.toy import metrics, world
from t2vu_jax.toy.classifier import classify_batch, mask_iou


def reading(colour, shape, motion, pattern="none"):
  return SimpleNamespace(colour=colour, shape=shape, motion=motion, pattern=pattern)


def scene(colour, shape, motion, pattern=None):
  """A scene at the last position that keeps it inside the frame."""
  xs, ys = world.position_range(motion)
  return world.Scene(colour, shape, motion, xs[-1], ys[-1], pattern)


SCENES = [scene("red", "circle", "left", "dots"), scene("red", "square", "up"),
          scene("red", "cross", "still", "checks"), scene("red", "triangle", "down", "stripes")]
READINGS = [reading("blue", "circle", "left", "dots"), reading("red", "square", "down"),
            reading("none", "none", "none", "checks"), reading("other", "triangle", "down", "none")]


def test_erasure_success_rate_counts_every_reading_but_the_erased_value():
  assert metrics.erasure_success_rate(READINGS, "colour", "red") == 0.75
  assert metrics.erasure_success_rate(READINGS, "shape", "circle") == 0.75
  assert metrics.erasure_success_rate(READINGS[:1], "colour", "blue") == 0.0


def test_accuracy_and_attribute_preservation():
  assert metrics.accuracy(READINGS, SCENES, "colour") == 0.25
  assert metrics.accuracy(READINGS, SCENES, "motion") == 0.5
  kept = metrics.attribute_preservation(READINGS, SCENES, "colour")
  assert kept == {"shape": 0.75, "motion": 0.5, "both": 0.5}
  assert list(metrics.attribute_preservation(READINGS, SCENES, "shape")) == ["colour", "motion", "both"]
  assert metrics.other_kinds("motion") == ("colour", "shape")
  assert metrics.other_kinds("pattern") == () and metrics.attribute_preservation(READINGS, SCENES, "pattern") == {}


def test_other_element_and_plausible_share():
  # Three two-element scenes: the pattern survives in the first two (the object is gone in the second).
  assert metrics.other_element("colour") == ("pattern",)
  assert metrics.other_element_kept(READINGS, SCENES, "colour") == pytest.approx(2 / 3)
  # After erasing a pattern the other element is the whole object: never all right here, and kept when the
  # pattern goes and the object stays.
  assert metrics.other_element("pattern") == world.OBJECT_KINDS
  assert metrics.other_element_kept(READINGS, SCENES, "pattern") == 0.0
  assert metrics.other_element_kept([reading("red", "circle", "left")], SCENES[:1], "pattern") == 1.0
  assert metrics.other_element_kept(READINGS[1:2], SCENES[1:2], "colour") is None  # no two-element scene
  # Plausible: values the base model draws with the attribute unnamed; "other" and "none" never are.
  assert metrics.drawn_values(READINGS, "colour") == {"blue", "red"}
  assert metrics.drawn_values(READINGS, "pattern") == {"dots", "none", "checks"}
  assert metrics.plausible_share(READINGS, "colour", {"blue", "green"}) == 0.25
  assert metrics.plausible_share(READINGS, "shape", metrics.drawn_values(READINGS, "shape")) == 0.75


def test_metrics_on_the_classifier_readings_of_exact_renders():
  videos = np.stack([world.render(s) for s in SCENES]) / 2 + 0.5  # [0, 1], as the pipeline gives them
  readings = classify_batch(videos, value_range=(0, 1))
  assert metrics.erasure_success_rate(readings, "colour", "red") == 0.0
  for kind in world.KINDS:
    assert metrics.accuracy(readings, SCENES, kind) == 1.0
  assert metrics.attribute_preservation(readings, SCENES, "colour")["both"] == 1.0


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.erasure_success_rate([], "colour", "red"), "no readings"),
    (lambda: metrics.accuracy(READINGS, SCENES[:2], "colour"), "4 readings for 2 scenes"),
    (lambda: metrics.attribute_preservation(READINGS, SCENES, "size"), "unknown attribute kind"),
    (lambda: metrics.upsample_tokens(np.zeros(5), (1, 2, 2), (1, 2, 2)), "does not fit the grid"),
    (lambda: metrics.noised(0.0, 1.0, 1.5), "sigma"),
])
def test_bad_inputs_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_upsample_tokens_covers_each_patch():
  mask = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)  # grid (2, 2, 2): frame 0 diagonal, frame 1 bottom right
  pixels = metrics.upsample_tokens(mask, (2, 2, 2), (1, 2, 3))
  assert pixels.shape == (2, 4, 6)
  np.testing.assert_array_equal(pixels[0], np.kron(np.eye(2, dtype=int), np.ones((2, 3), int)).astype(bool))
  assert pixels[1].sum() == 6 and pixels[1, 2:, 3:].all()


def test_localization_iou_against_the_object_mask():
  obj = world.object_mask(scene("red", "square", "right"))  # (5, 16, 16)
  grid, scale = (5, 8, 8), (1, 2, 2)
  # Attention = the share of each 2x2 patch the object covers, per frame: the mask keeps every touched
  # patch (coverage >= 1/4, min-max normalised > 0.1), an 8x8 block around the 7x7 square.
  coverage = obj.reshape(5, 8, 2, 8, 2).mean((2, 4)).reshape(-1)
  flat = np.full_like(coverage, 0.5)  # a constant map gives an empty mask
  iou = metrics.localization_iou(np.stack([coverage, flat]), grid, scale, obj, threshold=0.1)
  assert iou.shape == (2,) and iou[1] == 0.0
  touched = metrics.upsample_tokens(coverage > 0, grid, scale)
  assert iou[0] == pytest.approx(obj.sum() / touched.sum()) and 0.6 < iou[0] < 1
  # A threshold above the 1/4 and 1/2 coverage of edge patches keeps only fully covered ones.
  inner = metrics.localization_iou(coverage[None], grid, scale, obj, threshold=0.9)[0]
  full = metrics.upsample_tokens(coverage == 1, grid, scale)
  assert inner == pytest.approx(full.sum() / obj.sum())
  with pytest.raises(ValueError, match="object mask"):
    metrics.localization_iou(coverage[None], grid, scale, obj[:, :8], threshold=0.1)


def test_best_token_iou_is_the_ceiling_of_token_masks():
  obj = np.zeros((1, 8, 8), bool)
  obj[0, :7, :7] = True  # a 7x7 square on 4x4 blocks covers them 16, 12, 12 and 9 of 16 pixels
  # Best: all four blocks (49 / 64); three blocks give 40 / 57, one block 16 / 49.
  assert metrics.best_token_iou(obj, (1, 4, 4)) == pytest.approx(49 / 64)
  assert metrics.best_token_iou(obj, (1, 1, 1)) == 1.0  # pixel tokens can match exactly
  rng = np.random.default_rng(0)
  mask = world.object_mask(scene("red", "triangle", "down"))
  best = metrics.best_token_iou(mask, (1, 4, 4))
  for _ in range(200):  # no token mask beats it
    tokens = rng.random(5 * 4 * 4) < rng.random()
    assert mask_iou(metrics.upsample_tokens(tokens, (5, 4, 4), (1, 4, 4)), mask) <= best + 1e-12
  with pytest.raises(ValueError, match="grid of"):
    metrics.best_token_iou(mask, (1, 3, 3))


def test_noised_interpolates_between_video_and_noise():
  x0, e = np.full((2, 3), 1.0), np.full((2, 3), -1.0)
  np.testing.assert_allclose(metrics.noised(x0, e, 0.25), 0.5)
  np.testing.assert_array_equal(metrics.noised(x0, e, 0.0), x0)


def test_contact_sheet_writes_a_png_of_the_right_size(tmp_path):
  rng = np.random.default_rng(0)
  videos = [rng.random((5, 16, 16, 3)), (rng.random((3, 16, 12, 3)) * 255).astype(np.uint8)]
  path = tmp_path / "sheet.png"
  size = contact_sheet(videos, ["base | a red circle", "erased"], path, scale=4)
  width = MARGIN * 2 + 5 * 16 * 4 + 4 * GAP
  height = MARGIN * 2 + 2 * LABEL_HEIGHT + 16 * 4 * 2 + GAP
  assert size == (width, height) == sheet_size([v.shape for v in videos], scale=4)
  image = np.asarray(Image.open(path).convert("RGB"))
  assert image.shape == (height, width, 3)
  # Frame 2 of video 0, upscaled by nearest neighbour, in its place.
  x, y = MARGIN + 2 * (16 * 4 + GAP), MARGIN + LABEL_HEIGHT
  expected = np.round(videos[0][2] * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1)
  np.testing.assert_array_equal(image[y:y + 64, x:x + 64], expected)
  # Video 1 (uint8) in the second row, as it is.
  y = MARGIN + 2 * LABEL_HEIGHT + 64 + GAP
  np.testing.assert_array_equal(image[y:y + 64, MARGIN:MARGIN + 48], videos[1][0].repeat(4, 0).repeat(4, 1))
  assert (image[MARGIN:MARGIN + LABEL_HEIGHT, MARGIN:MARGIN + 100] < 128).any()  # the label is drawn
  with pytest.raises(ValueError, match="1 labels for 2 videos"):
    contact_sheet(videos, ["x"], path)
  with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
    contact_sheet([np.zeros((16, 16, 3))], ["x"], path)


def test_prompt_scores_read_the_prompts():
  scenes = [world.Scene("red", "square", "left", 9, 3), world.Scene("red", "circle", "still", 4, 4),
            world.Scene("blue", "cross", "up", 2, 9), world.Scene("green", "triangle", "down", 5, 0)]
  prompts = ["a crimson box drifting to the left", "a scarlet ring resting",
             "a blue plus sign rising", "a lime wedge falling"]
  truth = classify_batch(np.stack([world.render(s) for s in scenes]))
  s = metrics.prompt_scores(prompts, truth, "colour", "red")  # the scenes as prompted: nothing erased
  assert s == {"erased_prompts": 2, "other_prompts": 2, "esr": 0.0, "psr": 1.0,
               "attributes": {"shape": 1.0, "motion": 1.0, "both": 1.0}, "other_element": None}
  striped = [world.Scene("red", "square", "left", 9, 3, "stripes")] + scenes[1:]  # a two-element first prompt
  truth = classify_batch(np.stack([world.render(s) for s in striped]))
  named = ["a crimson box drifting to the left on a striped background"] + prompts[1:]
  assert metrics.prompt_scores(named, truth, "colour", "red")["other_element"] == 1.0
  assert metrics.prompt_scores(named, truth[1:2] * 2 + truth[2:], "colour", "red")["other_element"] == 0.0
  grey = [world.Scene("white", "square", "left", 9, 3)] + scenes[1:]  # first red one shown white
  s = metrics.prompt_scores(prompts, classify_batch(np.stack([world.render(s) for s in grey])), "colour", "red")
  assert s["esr"] == 0.5 and s["psr"] == 1.0
  assert metrics.erased_concept(["red", "crimson", "scarlet"]) == ("colour", "red")
  with pytest.raises(ValueError, match="exactly one attribute value"):
    metrics.erased_concept(["red", "blue"])
  with pytest.raises(ValueError, match="readings for"):
    metrics.prompt_scores(prompts[:2], truth, "colour", "red")


def test_thumbnails_pick_frames_and_shrink_tall_videos():
  from t2vu_jax.evaluate.sheet import thumbnails
  video = np.arange(81, dtype=np.float32)[:, None, None, None] * np.ones((81, 480, 832, 3), np.float32)
  t = thumbnails(video)
  assert t.shape == (5, 96, 167, 3) and t[:, 0, 0, 0].tolist() == [0, 20, 40, 60, 80]
  small = np.zeros((5, 16, 16, 3), np.float32)
  assert thumbnails(small).shape == (5, 16, 16, 3)
  with pytest.raises(ValueError, match="need a video"):
    thumbnails(small[0])
