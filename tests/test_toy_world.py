"""The toy world: exact renders, prompts with held-out wordings, the toy tokenizer, the exact classifier."""
import re

import numpy as np
import pytest
import transformers
from scipy import ndimage

from t2vu_jax import text
from t2vu_jax.erase.prompts import PromptPool
from t2vu_jax.toy import classifier, world
from t2vu_jax.toy.tokenizer import MAX_PROMPT_TOKENS, build_toy_tokenizer, vocabulary


def _accuracy(scenes, videos, size, **kwargs):
  hits = {k: 0 for k in world.KINDS}
  ious = []
  for s, v in zip(scenes, videos):
    r = classifier.classify(v, **kwargs)
    for k, ok in r.matches(s).items():
      hits[k] += ok
    ious.append(classifier.mask_iou(r.mask, world.object_mask(s, size=size)))
  return {k: n / len(scenes) for k, n in hits.items()}, np.array(ious)


@pytest.mark.parametrize("size", [16, 24])
def test_classifier_reads_rendered_scenes_exactly(size):
  videos, _, scenes = world.dataset(0, 300, size=size)
  assert {s.value(k) for s in scenes for k in world.KINDS} == {v for k in world.KINDS for v in world.VALUES[k]} | {
    "none"}  # every value of every kind, and plain backgrounds
  assert 0.4 < np.mean([s.pattern is not None for s in scenes]) < 0.6
  acc, ious = _accuracy(scenes, videos, size)
  assert min(acc.values()) >= 0.99, acc
  two = [i for i, s in enumerate(scenes) if s.pattern]  # both elements read in two-element scenes
  acc_two, _ = _accuracy([scenes[i] for i in two], videos[two], size)
  assert min(acc_two.values()) >= 0.99, acc_two
  assert ious.min() >= 0.9, ious.min()
  # The pipeline's conventions: uint8 [0, 255] and float [0, 1] frames read the same.
  r = classifier.classify(videos[0])
  unit = videos[0] / 2 + 0.5
  for video, kw in ((np.round(unit * 255).astype(np.uint8), {}), (unit, {"value_range": (0, 1)})):
    other = classifier.classify(video, **kw)
    assert (other.colour, other.shape, other.motion, other.pattern) == (r.colour, r.shape, r.motion, r.pattern)
    np.testing.assert_array_equal(other.mask, r.mask)
  np.testing.assert_allclose(r.track, scenes[0].centroids())


def test_classifier_is_robust_to_noise_blur_and_dimming():
  videos, _, scenes = world.dataset(1, 200)
  rng = np.random.default_rng(0)
  noisy = np.clip(videos + 0.1 * rng.standard_normal(videos.shape), -1, 1).astype(np.float32)
  acc, ious = _accuracy(scenes, noisy, world.SIZE)
  assert min(acc.values()) >= 0.95 and ious.mean() >= 0.9, (acc, ious.mean())
  # Soft edges and a dimmer object, as an imperfect generator might draw them.
  objects = np.stack([world.object_mask(s) for s in scenes])[..., None]
  dim = 1 - 0.3 * rng.uniform(size=(len(videos), 1, 1, 1, 1))  # the object up to 30% toward mid grey
  soft = ndimage.gaussian_filter(np.where(objects, videos * dim, videos), (0, 0, 0.7, 0.7, 0))
  soft = np.clip(soft + 0.1 * rng.standard_normal(videos.shape), -1, 1).astype(np.float32)
  acc, ious = _accuracy(scenes, soft, world.SIZE)
  assert min(acc.values()) >= 0.95 and ious.mean() >= 0.9, (acc, ious.mean())


def _background(pattern=None):
  return (world.background(pattern) * 2 - 1).astype(np.float32)


def test_classifier_says_none_and_other():
  scene = world.Scene("red", "cross", "right", 0, 3)
  empty = classifier.classify(_background())  # the background alone
  assert (empty.colour, empty.shape, empty.motion, empty.pattern, empty.visible, empty.ok) == (
    "none", "none", "none", "none", 0, False)
  for pattern in world.PATTERNS:  # an erased object leaves its background readable
    empty = classifier.classify(_background(pattern))
    assert (empty.colour, empty.pattern, empty.pattern_agreement) == ("none", pattern, 1.0)
  flat = np.full((5, 16, 16, 3), -0.8, np.float32)  # a background without the world's clock is no background
  assert classifier.classify(flat).shape == "other"
  half = _background("stripes")
  half[:, :, 8:] = _background("dots")[:, :, 8:]  # half one pattern, half another: no pattern of the world
  assert classifier.classify(half).pattern == "other"
  grey = world.render(scene)
  grey[world.object_mask(scene)] = 0.0  # mid grey is on no colour's segment from the background
  r = classifier.classify(grey)
  assert (r.colour, r.shape, r.motion) == ("other", "cross", "right") and not r.ok
  blob = _background("checks")
  blob[:, 2:14, 2:14] = world.render(scene)[0, 3, 4]  # a 12x12 slab matches no 7x7 shape
  r = classifier.classify(blob)
  assert (r.colour, r.shape, r.motion, r.pattern) == ("red", "other", "still", "checks")
  diagonal = _background()
  for t in range(5):
    diagonal[t, 1 + 2 * t:8 + 2 * t, 1 + 2 * t:8 + 2 * t] = world.render(scene)[0, 3, 4]
  assert classifier.classify(diagonal).motion == "other"
  once = _background()
  once[2] = world.render(scene)[0]
  r = classifier.classify(once)
  assert (r.colour, r.shape, r.motion, r.visible) == ("red", "cross", "none", 1)
  specks = _background("dots")
  specks[:, 5, 5] = specks[:, 10, 12] = 1.0  # isolated pixels are noise, not an object
  assert (classifier.classify(specks).colour, classifier.classify(specks).pattern) == ("none", "dots")


@pytest.mark.parametrize("video, message", [
  (np.zeros((16, 16, 3), np.float32), r"\(F, H, W, 3\)"),
  (np.zeros((5, 16, 16, 4), np.float32), "3 \\(RGB\\) channels"),
  (np.zeros((5, 3, 16, 16), np.float32), "3 \\(RGB\\) channels"),
  (np.zeros((1, 16, 16, 3), np.float32), "at least 2 frames"),
  (np.zeros((5, 4, 4, 3), np.float32), "at least 7x7"),
  (np.zeros((5, 16, 16, 3), np.int32), "uint8 or floating point"),
  (np.zeros((5, 16, 16, 3), bool), "uint8 or floating point"),
  (np.full((5, 16, 16, 3), np.nan, np.float32), "NaN or infinite"),
  (np.full((5, 16, 16, 3), np.inf, np.float32), "NaN or infinite"),
  (np.full((5, 16, 16, 3), 200.0, np.float32), "outside the expected range"),
  (np.full((5, 16, 16, 3), -1.5, np.float32), "outside the expected range"),
])
def test_classifier_refuses_malformed_arrays(video, message):
  with pytest.raises(ValueError, match=message):
    classifier.classify(video)


def test_classifier_value_range_and_batches():
  videos, _, scenes = world.dataset(2, 3)
  with pytest.raises(ValueError, match="outside the expected range"):
    classifier.classify(videos[0], value_range=(0, 1))  # [-1, 1] frames declared as [0, 1]
  with pytest.raises(ValueError, match="high > low"):
    classifier.classify(videos[0], value_range=(1, 0))
  slightly_over = videos[0] * 1.05  # an unclipped model output a little past the range is clipped
  assert classifier.classify(slightly_over).matches(scenes[0]) == {k: True for k in world.KINDS}
  readings = classifier.classify_batch(videos)
  assert [r.matches(s) for r, s in zip(readings, scenes)] == [{k: True for k in world.KINDS}] * 3
  with pytest.raises(ValueError, match=r"\(B, F, H, W, 3\)"):
    classifier.classify_batch(videos[0])


def test_render_is_exact_and_scenes_stay_inside():
  videos, prompts, scenes = world.dataset(3, 200, frames=9, size=24)
  assert videos.shape == (200, 9, 24, 24, 3) and videos.dtype == np.float32 and len(prompts) == 200
  for s, v in zip(scenes, videos):
    mask = world.object_mask(s, 9, 24)
    assert (mask.sum(axis=(1, 2)) == world.SHAPES[s.shape].sum()).all()  # never clipped by the border
    np.testing.assert_array_equal(v[mask], np.tile((np.array(world.COLOURS[s.colour]) * 2 - 1).astype(np.float32),
                                                   (mask.sum(), 1)))
    # Off the object: the frame's grey, rising by one step per frame from LEVELS[0] to LEVELS[1] (the clock
    # that tells the two ends of a motion apart), PATTERN_CONTRAST brighter on the pattern's pixels.
    grey = np.linspace(*world.LEVELS, 9)[:, None, None] + world.PATTERN_CONTRAST * world.pattern_mask(s.pattern, 24)
    np.testing.assert_allclose(v[~mask], np.repeat((2 * grey - 1)[~mask][:, None], 3, 1), atol=1e-6)
    dx, dy = world.MOTIONS[s.motion]
    np.testing.assert_array_equal(s.corners(9)[-1] - s.corners(9)[0], [8 * world.SPEED * dx, 8 * world.SPEED * dy])
  with pytest.raises(ValueError, match="leaves the 16x16 frame"):
    world.render(world.Scene("red", "square", "left", 2, 0))
  with pytest.raises(ValueError, match="unknown colour 'orange'"):
    world.Scene("orange", "square", "left", 2, 0)
  with pytest.raises(ValueError, match="does not fit"):
    world.sample_scenes(0, 1, frames=11, size=16)


def test_dataset_is_deterministic():
  a, b, c = world.dataset(7, 50), world.dataset(7, 50), world.dataset(8, 50)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1:] == b[1:]
  assert a[1] != c[1] and not np.array_equal(a[0], c[0])
  assert world.prompt(a[2][0], 5) == world.prompt(a[2][0], 5)


def test_dataset_omit_leaves_one_attribute_unnamed():
  videos, full, scenes = world.dataset(7, 400)
  videos_o, omitted, scenes_o = world.dataset(7, 400, omit=0.3)
  np.testing.assert_array_equal(videos, videos_o)  # same scenes and videos: only prompts change
  assert scenes == scenes_o
  changed = [(f, o, s) for f, o, s in zip(full, omitted, scenes) if f != o]
  assert 0.2 < len(changed) / 400 < 0.4
  left_out = set()
  for f, o, s in changed:  # exactly one of the scene's attributes is no longer named
    words = f" {re.sub(r'[^a-z]+', ' ', o)} "
    missing = [k for k in s.kinds if not any(f" {w} " in words for w in world.wordings(k, s.value(k)))]
    assert len(missing) == 1 and len(o) < len(f), (f, o)
    left_out.add(missing[0])
  assert left_out == set(world.OBJECT_KINDS)  # a prompt naming no pattern means a plain background
  assert world.dataset(7, 400, omit=0.0)[1] == full
  with pytest.raises(ValueError, match="omit must be a share in"):
    world.dataset(7, 4, omit=1.5)


def test_wordings_held_out_are_disjoint_from_training():
  for kind, values in world.WORDINGS.items():
    train = {p for v in values for p in world.wordings(kind, v, held_out=False)}
    held = {p for v in values for p in world.wordings(kind, v, held_out=True)}
    assert held and not train & held
    train_words = {w for p in train for w in p.split()}
    assert not train_words & {w for p in held for w in p.split()}, kind
    for value in values:  # every wording names exactly one value
      for p in world.wordings(kind, value):
        assert world.value_of(kind, p) == value and world.is_held_out(kind, p) == (p in held)
  rng = np.random.default_rng(0)
  for s in world.sample_scenes(rng, 200):
    p = world.prompt(s, rng, held_out=False)
    assert not any(world.is_held_out(k, p.phrase(k)) for k in s.kinds)
    assert all(world.value_of(k, p.phrase(k)) == s.value(k) for k in s.kinds)
    assert (p.phrase("pattern") is None) == (s.pattern is None) == (p.form is None)
    q = world.prompt(s, rng, held_out={"colour": True})
    assert world.is_held_out("colour", q.phrase("colour"))
    assert world.is_held_out("motion", world.prompt(s, rng, held_out=True).phrase("motion"))


def _all_prompts():
  """Every template, without a pattern and in every pattern form, with every wording of each kind (the
  other kinds' wordings drawn at random)."""
  rng = np.random.default_rng(0)
  everything = {k: [p for v in world.VALUES[k] for p in world.wordings(k, v)] for k in world.KINDS}
  out = []
  for template in range(len(world.TEMPLATES)):
    for form in (None, *range(len(world.PATTERN_FORMS))):
      kinds = world.OBJECT_KINDS if form is None else world.KINDS
      for kind in kinds:
        for phrase in everything[kind]:
          phrases = {k: everything[k][rng.integers(len(everything[k]))] for k in kinds}
          out.append(world.compose(template, {**phrases, kind: phrase}, form))
  return out


def test_tokenizer_round_trip_and_concept_spans(tmp_path):
  tokenizer = build_toy_tokenizer()
  assert len(tokenizer) < 200
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
  tokenizer.save_pretrained(tmp_path / "tokenizer")
  loaded = text.load_tokenizer(str(tmp_path))  # a pipeline directory holding tokenizer/
  auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
  assert len(loaded) == len(tokenizer)
  for word in vocabulary():  # every word of the world is one token
    assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
  prompts = _all_prompts()
  for p in prompts:
    kinds = world.OBJECT_KINDS if p.form is None else world.KINDS
    assert all(p.phrase(k) in p.text for k in kinds)
    ids = tokenizer(p.text)["input_ids"]
    assert ids == loaded(p.text)["input_ids"] == auto(p.text)["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(p.text.replace(",", " ,").replace(":", " :").split()) + 1
    for kind in kinds:
      start, end = text.concept_token_span(loaded, p.text, p.phrase(kind))
      assert loaded.decode(ids[start:end]).strip() == p.phrase(kind), (p, kind)
  # Each phrase is where the erasure objective will look for it, at several positions across templates.
  for kind in world.KINDS:
    pool = PromptPool(tuple({p.text: p.entry(kind) for p in prompts if p.phrase(kind)}.values()), kind)
    starts = {text.concept_token_span(loaded, e.prompt, e.concept)[0] for e in pool}
    assert len(starts) >= 3, (kind, starts)
  assert tokenizer.unk_token_id not in tokenizer("An Orange blob, Moving Diagonally!")["input_ids"]
  # Token counts add up over phrases, so the longest wording of each kind gives the longest prompt.
  longest = {k: max((p for v in world.VALUES[k] for p in world.wordings(k, v)), key=lambda p: len(p.split()))
             for k in world.KINDS}
  lengths = [len(tokenizer(world.compose(i, longest, f).text)["input_ids"]) for i in range(len(world.TEMPLATES))
             for f in range(len(world.PATTERN_FORMS))]
  assert max(lengths) == MAX_PROMPT_TOKENS


def test_read_prompt_inverts_every_template_and_wording():
  _, prompts, scenes = world.dataset(5, 500)
  for p, s in zip(prompts, scenes):
    assert world.read_prompt(p) == {k: s.value(k) for k in world.KINDS}, p
  assert world.read_prompt("A Plus Sign in jade, heading west") == {"colour": "green", "shape": "cross",
                                                                    "motion": "left", "pattern": "none"}
  assert world.read_prompt("Gingham background: a ruby loop resting")["pattern"] == "checks"
  with pytest.raises(ValueError, match="names several"):
    world.read_prompt("a red square moving up on a dotted striped background")
  with pytest.raises(ValueError, match=r"names several \(\['blue', 'red'\]\) colour"):
    world.read_prompt("a red blue square moving up")
  with pytest.raises(ValueError, match="names no shape"):
    world.read_prompt("a red thing moving up")


def test_the_clock_tells_a_motion_from_its_reversal():
  """A video played backwards runs the background's clock backwards: it is no video of the world, so time
  has a direction. The reversal the direction diagnostic uses keeps the clock and reverses the track."""
  from t2vu_jax.toy.direction import reversed_track
  scene = world.Scene("blue", "triangle", "right", 0, 4, "stripes")
  video, back = world.render(scene), world.render(reversed_track(scene))
  assert reversed_track(scene).motion == "left"
  assert not classifier.classify(video[::-1]).ok  # a backwards clock is no background of the world
  r = classifier.classify(back)
  assert (r.colour, r.shape, r.motion, r.pattern) == ("blue", "triangle", "left", "stripes")
  mask = world.object_mask(scene)
  np.testing.assert_array_equal(world.object_mask(reversed_track(scene)), mask[::-1])
  grey = (2 * world.background("stripes") - 1).astype(np.float32)
  np.testing.assert_allclose(back[~mask[::-1]], grey[~mask[::-1]], atol=1e-6)  # the clock runs forward
  still = world.Scene("red", "cross", "still", 4, 4)
  assert reversed_track(still) == still


def test_patterns_and_their_bad_inputs():
  masks = {name: world.pattern_mask(name) for name in world.PATTERNS}
  for name, m in masks.items():  # whole 2x2 blocks, at least a quarter of the pixels apart from any other
    assert (m.reshape(8, 2, 8, 2).all((1, 3)) == m.reshape(8, 2, 8, 2).any((1, 3))).all(), name
    assert m.mean() >= 0.25
    assert all((m != o).mean() >= 0.25 for other, o in masks.items() if other != name)
  assert not world.pattern_mask(None).any() and world.pattern_mask("dots", 8, 12).shape == (8, 12)
  assert all(s.pattern is None for s in world.sample_scenes(0, 20, pattern_share=0.0))
  assert all(s.pattern for s in world.sample_scenes(0, 20, pattern_share=1.0))
  with pytest.raises(ValueError, match="unknown pattern 'zigzag'"):
    world.Scene("red", "square", "left", 9, 0, "zigzag")
  with pytest.raises(ValueError, match="unknown pattern 'zigzag'"):
    world.pattern_mask("zigzag")
  with pytest.raises(ValueError, match="pattern_share must be a share"):
    world.sample_scenes(0, 2, pattern_share=1.5)
  with pytest.raises(ValueError, match="a pattern form needs a pattern phrase"):
    world.compose(0, {"colour": "red", "shape": "box", "motion": "rising"}, form=1)
  with pytest.raises(ValueError, match="form must be an integer"):
    world.compose(0, {"colour": "red", "shape": "box", "motion": "rising", "pattern": "dotted"}, form=7)
  with pytest.raises(ValueError, match="'wavy' is not a pattern wording"):
    world.compose(0, {"colour": "red", "shape": "box", "motion": "rising", "pattern": "wavy"})
  with pytest.raises(ValueError, match="names no pattern"):
    world.compose(0, {"colour": "red", "shape": "box", "motion": "rising"}).entry("pattern")
  p = world.compose(0, {"colour": "red", "shape": "box", "motion": "rising", "pattern": "dotted"}, form=2)
  assert p.text == "dotted background: a red box rising"
  assert world.leave_out(p, "colour") == "dotted background: a box rising"
