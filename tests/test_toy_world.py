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
  assert {s.value(k) for s in scenes for k in world.KINDS} == {v for k in world.KINDS for v in world.VALUES[k]}
  acc, ious = _accuracy(scenes, videos, size)
  assert min(acc.values()) >= 0.99, acc
  assert ious.min() >= 0.9, ious.min()
  # The pipeline's conventions: uint8 [0, 255] and float [0, 1] frames read the same.
  r = classifier.classify(videos[0])
  unit = videos[0] / 2 + 0.5
  for video, kw in ((np.round(unit * 255).astype(np.uint8), {}), (unit, {"value_range": (0, 1)})):
    other = classifier.classify(video, **kw)
    assert (other.colour, other.shape, other.motion) == (r.colour, r.shape, r.motion)
    np.testing.assert_array_equal(other.mask, r.mask)
  np.testing.assert_allclose(r.track, scenes[0].centroids())


def test_classifier_is_robust_to_noise_blur_and_dimming():
  videos, _, scenes = world.dataset(1, 200)
  rng = np.random.default_rng(0)
  noisy = np.clip(videos + 0.1 * rng.standard_normal(videos.shape), -1, 1).astype(np.float32)
  acc, ious = _accuracy(scenes, noisy, world.SIZE)
  assert min(acc.values()) >= 0.95 and ious.mean() >= 0.9, (acc, ious.mean())
  # Soft edges and a dimmer object, as an imperfect generator might draw them.
  soft = ndimage.gaussian_filter(videos, (0, 0, 0.7, 0.7, 0))
  dim = 1 - 0.3 * rng.uniform(size=(len(videos), 1, 1, 1, 1))
  soft = np.clip(soft * dim + 0.1 * rng.standard_normal(videos.shape), -1, 1).astype(np.float32)
  acc, ious = _accuracy(scenes, soft, world.SIZE)
  assert min(acc.values()) >= 0.95 and ious.mean() >= 0.9, (acc, ious.mean())


def test_classifier_says_none_and_other():
  scene = world.Scene("red", "cross", "right", 0, 3)
  empty = classifier.classify(np.full((5, 16, 16, 3), -0.8, np.float32))  # the background alone
  assert (empty.colour, empty.shape, empty.motion, empty.visible, empty.ok) == ("none", "none", "none", 0, False)
  grey = world.render(scene)
  grey[world.object_mask(scene)] = 0.0  # mid grey is on no colour's segment from the background
  r = classifier.classify(grey)
  assert (r.colour, r.shape, r.motion) == ("other", "cross", "right") and not r.ok
  blob = np.full((5, 16, 16, 3), -0.8, np.float32)
  blob[:, 2:14, 2:14] = world.render(scene)[0, 3, 4]  # a 12x12 slab matches no 7x7 shape
  r = classifier.classify(blob)
  assert (r.colour, r.shape, r.motion) == ("red", "other", "still")
  diagonal = np.full((5, 16, 16, 3), -0.8, np.float32)
  for t in range(5):
    diagonal[t, 1 + 2 * t:8 + 2 * t, 1 + 2 * t:8 + 2 * t] = world.render(scene)[0, 3, 4]
  assert classifier.classify(diagonal).motion == "other"
  once = np.full((5, 16, 16, 3), -0.8, np.float32)
  once[2] = world.render(scene)[0]
  r = classifier.classify(once)
  assert (r.colour, r.shape, r.motion, r.visible) == ("red", "cross", "none", 1)
  specks = np.full((5, 16, 16, 3), -0.8, np.float32)
  specks[:, 5, 5] = specks[:, 10, 12] = 1.0  # isolated pixels are noise, not an object
  assert classifier.classify(specks).colour == "none"


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
    for where, rgb in ((mask, world.COLOURS[s.colour]), (~mask, world.BACKGROUND)):
      np.testing.assert_array_equal(v[where], np.tile((np.array(rgb) * 2 - 1).astype(np.float32), (where.sum(), 1)))
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
    missing = [k for k in world.KINDS if not any(f" {w} " in words for w in world.wordings(k, s.value(k)))]
    assert len(missing) == 1 and len(o) < len(f), (f, o)
    left_out.add(missing[0])
  assert left_out == set(world.KINDS)
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
    assert not any(world.is_held_out(k, p.phrase(k)) for k in world.KINDS)
    assert all(world.value_of(k, p.phrase(k)) == s.value(k) for k in world.KINDS)
    q = world.prompt(s, rng, held_out={"colour": True})
    assert world.is_held_out("colour", q.phrase("colour"))
    assert world.is_held_out("motion", world.prompt(s, rng, held_out=True).phrase("motion"))


def _all_prompts():
  """Every template with every wording of each kind (the other kinds' wordings drawn at random)."""
  rng = np.random.default_rng(0)
  everything = {k: [p for v in world.VALUES[k] for p in world.wordings(k, v)] for k in world.KINDS}
  out = []
  for template in range(len(world.TEMPLATES)):
    for kind in world.KINDS:
      for phrase in everything[kind]:
        phrases = {k: everything[k][rng.integers(len(everything[k]))] for k in world.KINDS}
        out.append(world.compose(template, {**phrases, kind: phrase}))
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
    assert all(p.phrase(k) in p.text for k in world.KINDS)
    ids = tokenizer(p.text)["input_ids"]
    assert ids == loaded(p.text)["input_ids"] == auto(p.text)["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(p.text.replace(",", " ,").split()) + 1
    for kind in world.KINDS:
      start, end = text.concept_token_span(loaded, p.text, p.phrase(kind))
      assert loaded.decode(ids[start:end]).strip() == p.phrase(kind), (p, kind)
  # Each phrase is where the erasure objective will look for it, at several positions across templates.
  for kind in world.KINDS:
    pool = PromptPool(tuple({p.text: p.entry(kind) for p in prompts}.values()), kind)
    starts = {text.concept_token_span(loaded, e.prompt, e.concept)[0] for e in pool}
    assert len(starts) >= 3, (kind, starts)
  assert tokenizer.unk_token_id not in tokenizer("An Orange blob, Moving Diagonally!")["input_ids"]
  # Token counts add up over phrases, so the longest wording of each kind gives the longest prompt.
  longest = {k: max((p for v in world.VALUES[k] for p in world.wordings(k, v)), key=lambda p: len(p.split()))
             for k in world.KINDS}
  lengths = [len(tokenizer(world.compose(i, longest).text)["input_ids"]) for i in range(len(world.TEMPLATES))]
  assert max(lengths) == MAX_PROMPT_TOKENS


def test_read_prompt_inverts_every_template_and_wording():
  _, prompts, scenes = world.dataset(5, 500)
  for p, s in zip(prompts, scenes):
    assert world.read_prompt(p) == {k: s.value(k) for k in world.KINDS}, p
  assert world.read_prompt("A Plus Sign in jade, heading west") == {"colour": "green", "shape": "cross",
                                                                    "motion": "left"}
  with pytest.raises(ValueError, match=r"names several \(\['blue', 'red'\]\) colour"):
    world.read_prompt("a red blue square moving up")
  with pytest.raises(ValueError, match="names no shape"):
    world.read_prompt("a red thing moving up")
