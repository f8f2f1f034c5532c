"""NudeNet scoring of videos (real detector offline on synthetic frames, aggregation with a fake one) and
the evaluation-prompt CSV reader."""
import json
import socket

import numpy as np
import pytest

from t2vu_jax.evaluate import (
    EXPOSED_CLASSES, NudityScorer, PromptCSVError, PromptRecord, aggregate, load_detector, read_prompt_csv)
from t2vu_jax.evaluate import nudity

H, W = 48, 64


def synthetic_frames():
  rng = np.random.default_rng(0)
  plain = [np.full((H, W, 3), c, np.uint8) for c in ((0, 0, 0), (255, 255, 255), (128, 128, 128), (224, 172, 140))]
  noise = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
  ramp = np.broadcast_to(np.linspace(0, 255, W, dtype=np.uint8)[None, :, None], (H, W, 3))
  return np.stack(plain + noise + [ramp])


@pytest.fixture
def offline(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("network access attempted")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  nudity._detector.cache_clear()
  yield
  nudity._detector.cache_clear()


def test_labels_are_nudenets():
  from nudenet import nudenet as nn
  labels = getattr(nn, "__labels")
  assert set(EXPOSED_CLASSES) <= set(labels) and len(set(EXPOSED_CLASSES)) == 8
  assert not {"ANUS_EXPOSED", "FACE_FEMALE", "FEMALE_BREAST_COVERED"} & set(EXPOSED_CLASSES)


def test_real_detector_offline_on_synthetic_frames(offline):
  frames = synthetic_frames()
  detect = load_detector()
  raw = [detect(f) for f in frames]
  assert all(isinstance(r, list) for r in raw)
  assert not [d for r in raw for d in r if d["class"] in EXPOSED_CLASSES and d["score"] >= 0.2]
  s = NudityScorer().score_video(frames)
  assert (s.frames_scored, s.frames_flagged, s.flagged, s.frame_rate) == (len(frames), 0, False, 0.0)
  assert s.class_frames == dict.fromkeys(EXPOSED_CLASSES, 0)


def test_frames_reach_nudenet_as_bgr_like_an_image_file(offline, tmp_path):
  from PIL import Image
  from nudenet import nudenet as nn
  rng = np.random.default_rng(1)
  frame = np.stack([np.tile(np.arange(W, dtype=np.uint8) * 4, (H, 1)), np.full((H, W), 90, np.uint8),
                    rng.integers(0, 256, (H, W), dtype=np.uint8)], -1)
  Image.fromarray(frame).save(tmp_path / "f.png")
  seen = []
  det = nudity._detector(None)
  det.detect = lambda a: seen.append(a) or []
  load_detector()(frame)
  np.testing.assert_array_equal(seen[0], frame[..., ::-1])
  np.testing.assert_array_equal(nn._read_image(seen[0])[0], nn._read_image(str(tmp_path / "f.png"))[0])
  assert not np.array_equal(nn._read_image(frame)[0], nn._read_image(seen[0])[0])


def test_missing_nudenet_is_a_clear_error(monkeypatch):
  nudity._detector.cache_clear()
  monkeypatch.setitem(__import__("sys").modules, "nudenet", None)
  with pytest.raises(ImportError, match=r"pip install nudenet==3\.4\.2 onnxruntime"):
    NudityScorer().score_video(synthetic_frames())
  nudity._detector.cache_clear()


def test_missing_model_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.onnx"):
    load_detector(str(tmp_path / "nope.onnx"))


def canned(per_frame):
  """A fake detector: frame i (its first pixel holds i) gets per_frame[i]; records the frames it saw."""
  seen = []
  def detect(frame):
    i = int(frame[0, 0, 0])
    seen.append(i)
    return [{"class": c, "score": s, "box": [0, 0, 1, 1]} for c, s in per_frame.get(i, [])]
  detect.seen = seen
  return detect


def video(n):
  return np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)


def test_class_filter_and_gate():
  det = canned({
      0: [("FACE_FEMALE", 0.9), ("FEMALE_BREAST_COVERED", 0.9), ("ANUS_EXPOSED", 0.9)],  # not counted
      1: [("BELLY_EXPOSED", 0.19)],                                                       # under the gate
      2: [("BELLY_EXPOSED", 0.2)],                                                        # at the gate
      3: [("FEET_EXPOSED", 0.5), ("FEET_EXPOSED", 0.7), ("ARMPITS_EXPOSED", 0.3)],
      4: [("MALE_GENITALIA_EXPOSED", 0.95)]})
  s = NudityScorer(det).score_video(video(6))
  assert s.frame_flags == (False, False, True, True, True, False)
  assert (s.frames_scored, s.frames_flagged, s.flagged) == (6, 3, True)
  assert s.frame_rate == pytest.approx(0.5)
  assert s.class_frames == dict.fromkeys(EXPOSED_CLASSES, 0) | {
      "BELLY_EXPOSED": 1, "FEET_EXPOSED": 1, "ARMPITS_EXPOSED": 1, "MALE_GENITALIA_EXPOSED": 1}
  strict = NudityScorer(det, threshold=0.6).score_video(video(6))
  assert strict.frame_flags == (False, False, False, True, True, False)
  assert strict.class_frames["ARMPITS_EXPOSED"] == 0
  only = NudityScorer(det, classes=["ANUS_EXPOSED"]).score_video(video(6))
  assert only.frame_flags == (True, False, False, False, False, False) and only.class_frames == {"ANUS_EXPOSED": 1}


def test_subsampling():
  det = canned({1: [("BUTTOCKS_EXPOSED", 0.9)], 3: [("BUTTOCKS_EXPOSED", 0.9)], 4: [("FEET_EXPOSED", 0.9)]})
  s = NudityScorer(det, every=2).score_video(video(7))
  assert det.seen == [0, 2, 4, 6]
  assert (s.frames_scored, s.frames_flagged, s.class_frames["BUTTOCKS_EXPOSED"]) == (4, 1, 0)
  assert s.frame_rate == pytest.approx(0.25)


def test_aggregate():
  scorer = NudityScorer(canned({0: [("FEMALE_BREAST_EXPOSED", 0.8)], 1: [("FEMALE_BREAST_EXPOSED", 0.8),
                                                                         ("BELLY_EXPOSED", 0.4)]}))
  scores = scorer.score_videos([video(4), video(2), video(1) + 5])  # rates 2/4, 2/2, 0/1
  a = aggregate(scores)
  assert (a.videos, a.videos_flagged, a.frames_scored, a.frames_flagged) == (3, 2, 7, 4)
  assert a.video_rate == pytest.approx(2 / 3)
  assert a.mean_frame_rate == pytest.approx((0.5 + 1.0 + 0.0) / 3)
  assert a.pooled_frame_rate == pytest.approx(4 / 7)
  assert a.class_frames["FEMALE_BREAST_EXPOSED"] == 4 and a.class_frames["BELLY_EXPOSED"] == 2
  assert a.class_videos["FEMALE_BREAST_EXPOSED"] == 2 and a.class_videos["FEET_EXPOSED"] == 0
  d = json.loads(json.dumps(a.to_dict()))
  assert d["video_rate"] == pytest.approx(2 / 3) and d["class_frames"]["BELLY_EXPOSED"] == 2
  assert json.loads(json.dumps(scores[0].to_dict()))["frame_rate"] == 0.5
  with pytest.raises(ValueError, match="no video scores"):
    aggregate([])


@pytest.mark.parametrize("frames, match", [
    (np.zeros((4, 4, 3), np.uint8), r"\(F, H, W, 3\)"), (np.zeros((2, 4, 4, 4), np.uint8), r"\(F, H, W, 3\)"),
    (np.zeros((2, 4, 4, 3), np.float32), "uint8"), (np.zeros((0, 4, 4, 3), np.uint8), "no frames")])
def test_bad_frames(frames, match):
  with pytest.raises(ValueError, match=match):
    NudityScorer(canned({})).score_video(frames)


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": -0.1}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"every": 0}, "every"),
    ({"every": 1.5}, "every"), ({"classes": []}, "classes")])
def test_bad_scorer_args(kwargs, match):
  with pytest.raises(ValueError, match=match):
    NudityScorer(canned({}), **kwargs)


def write(tmp_path, text, name="p.csv", encoding="utf-8"):
  path = tmp_path / name
  path.write_bytes(text.encode(encoding))
  return path


@pytest.mark.parametrize("text, expected", [
    ("prompt,seed\na cat,3\nthe sea, 7 \n", [("a cat", 3, 2), ("the sea", 7, 3)]),
    ("prompt,evaluation_seed,evaluation_guidance\na cat,11,7.5\n", [("a cat", 11, 2)]),
    ("seed,prompt,evaluation_seed\n1,a cat,2\n", [("a cat", 2, 2)]),
    ("prompt\na cat\n\nthe sea\n", [("a cat", None, 2), ("the sea", None, 4)]),
    ("case_number,prompt,categories,nudity_percentage\n0,\"a, b, and \"\"c\"\"\",sexual,55.5\n",
     [('a, b, and "c"', None, 2)]),
    ("\ufeffprompt,seed\n\"two\nlines\",42.0\nnext,0\n", [("two\nlines", 42, 2), ("next", 0, 4)]),
    (" prompt , seed \r\na cat,5\r\n", [("a cat", 5, 2)]),
    ("\nprompt\na cat\n", [("a cat", None, 3)]),
])
def test_csv_good(tmp_path, text, expected):
  records = read_prompt_csv(write(tmp_path, text))
  assert records == [PromptRecord(*e) for e in expected]


def test_csv_bom_bytes(tmp_path):
  path = write(tmp_path, "prompt,evaluation_seed\na cat,9\n", encoding="utf-8-sig")
  assert path.read_bytes().startswith(b"\xef\xbb\xbf")
  assert read_prompt_csv(str(path)) == [("a cat", 9, 2)]


@pytest.mark.parametrize("text, match", [
    ("", r"p\.csv is empty"),
    ("\n\n", r"p\.csv is empty"),
    ("prompt,seed\n", r"p\.csv has a header but no prompts"),
    ("text,seed,Prompt\na,1,b\n", r"p\.csv: no 'prompt' column; columns found: 'text', 'seed', 'Prompt'"),
    ("prompt,seed\na cat,1\n  ,2\n", r"p\.csv, row 3: empty prompt"),
    ("seed,prompt\n1\n", r"p\.csv, row 2: empty prompt"),
    ("prompt,seed\na cat,x1\n", r"p\.csv, row 2: seed 'x1' is not an integer"),
    ("prompt,evaluation_seed\na cat,1.5\n", r"p\.csv, row 2: evaluation_seed '1.5' is not an integer"),
    ("prompt,seed\na cat,1\nb,-4\n", r"p\.csv, row 3: seed -4 is negative"),
    ("prompt,seed\na cat,\n", r"p\.csv, row 2: empty seed"),
])
def test_csv_bad(tmp_path, text, match):
  with pytest.raises(PromptCSVError, match=match):
    read_prompt_csv(write(tmp_path, text))


def test_csv_missing_and_not_utf8(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.csv not found"):
    read_prompt_csv(tmp_path / "missing.csv")
  with pytest.raises(PromptCSVError, match=r"p\.csv: not UTF-8"):
    read_prompt_csv(write(tmp_path, "prompt\n\xe9t\xe9\n", encoding="latin-1"))
