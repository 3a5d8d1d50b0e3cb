"""MediaPipe Tasks' ImageClassifier (the consumer a phone or board developer uses) on the files edgetl
writes and on the reference models of ../shared: it loads them, shows edgetl's labels, and on identical
pixels gives edge_runtime's top-1 and scores (within 1e-4). Runs in .venv-mediapipe (tests/mediapipe/run.sh);
skips where mediapipe is not installed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import colour_image
from make_test_models import EDGETL_MODELS, LABELS

vision = pytest.importorskip("mediapipe.tasks.python.vision", reason="needs mediapipe (bash tests/mediapipe/run.sh)")
import mediapipe as mp  # noqa: E402
from mediapipe.tasks.python import BaseOptions  # noqa: E402

from edge_runtime import Classifier, preprocess  # noqa: E402
from edge_runtime.preprocess import fit_like_mediapipe  # noqa: E402

MEDIAPIPE_MODES = [n for n, (_, io) in EDGETL_MODELS.items() if io != "int8"]


def _classifier(path):
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    return vision.ImageClassifier.create_from_options(opts)


def _scores(mpc, pixels, n):
    """Every category MediaPipe returns, as a score vector by index, and the names by index."""
    r = mpc.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels)))
    scores, names = np.full(n, np.nan, np.float64), [None] * n
    for c in r.classifications[0].categories:
        scores[c.index], names[c.index] = c.score, c.category_name
    return scores, names


def _same_on_pixels(mpc, clf, img):
    """Fit ``img`` as MediaPipe does, then check MediaPipe's scores and names against edge_runtime's on those
    very pixels (within 1e-4, same top-1). Returns (pixels, edge_runtime's scores)."""
    px = fit_like_mediapipe(img, clf.input_size)
    scores, names = _scores(mpc, px, clf.num_classes)
    assert names == clf.labels
    ours = clf.run_tensor(clf.from_pixels(px))
    np.testing.assert_allclose(scores, ours, atol=1e-4)
    assert int(np.argmax(scores)) == int(np.argmax(ours))
    return px, ours


def _photos(shared=None):
    out = [colour_image(k, np.random.default_rng([5, i]), (120 + 7 * i, 90 + 11 * i))
           for i, k in enumerate(("red", "green", "blue", "red", "green"))]
    if shared is not None:
        out += [preprocess.decode_image(shared / "images" / n) for n in ("grace_hopper.bmp", "parrot.jpg", "cat.bmp")]
    return out


@pytest.mark.parametrize("name", MEDIAPIPE_MODES)
def test_mediapipe_runs_every_mode_with_edgetl_labels(test_models, name):
    path = test_models / f"{name}.tflite"
    clf = Classifier(path, num_threads=1)
    with _classifier(path) as mpc:
        for img in _photos():
            px = preprocess.fit(img, clf.input_size, clf.resize)  # fitted once: both see identical pixels
            scores, names = _scores(mpc, px, clf.num_classes)
            assert names == LABELS  # the labels come from the file's standard metadata
            ours = clf.run_tensor(clf.from_pixels(px))
            assert int(np.argmax(scores)) == int(np.argmax(ours))
            np.testing.assert_allclose(scores, ours, atol=1e-4)


def test_mediapipe_refuses_int8_inputs(test_models):
    """MediaPipe Tasks take uint8 or float32 image tensors only: `--io int8` models are for other runtimes
    (edge_runtime, the TFLite interpreter); the default uint8 and `--io float32` load."""
    with pytest.raises(Exception, match="uint8/float32, got INT8"):
        _classifier(test_models / "edgetl_int8io.tflite")


def test_fit_like_mediapipe_is_what_mediapipe_feeds(test_models):
    """A model whose outputs are its input shows the pixels MediaPipe made of a frame: the same as
    edge_runtime's fit_like_mediapipe, and not what an area-averaging resize makes."""
    rng = np.random.default_rng(0)
    with _classifier(test_models / "identity32.tflite") as mpc:
        for h, w in ((97, 131), (64, 64), (20, 25), (480, 640), (32, 32)):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            fed, _ = _scores(mpc, img, 32 * 32 * 3)
            np.testing.assert_array_equal(fed.reshape(32, 32, 3), fit_like_mediapipe(img, (32, 32)))
            if (h, w) != (32, 32):
                assert np.abs(fed.reshape(32, 32, 3) - preprocess.fit(img, (32, 32), "squash")).max() > 8


REFERENCE = ["tf2_mobilenet_v2_1.0_224_ptq.tflite", "mobilenet_v2_1.0_224_quant.tflite",
             "mobilenet_v2_1.0_224_float_metadata.tflite", "mediapipe_model_maker/flowers10_float32.tflite",
             "mediapipe_model_maker/flowers10_int8.tflite"]


@pytest.mark.parametrize("rel", REFERENCE, ids=lambda r: r.split("/")[-1].replace(".tflite", ""))
def test_reference_models_identical_pixels(shared, rel):
    path = shared / "models" / rel
    clf = Classifier(path, num_threads=1)
    assert not clf.notes
    ref = json.loads((shared / "models" / "mediapipe_reference.json").read_text())["results"][rel]
    with _classifier(path) as mpc:
        for img in _photos(shared):
            _same_on_pixels(mpc, clf, img)
        for photo, top in ref.items():  # raw photos, MediaPipe fitting them itself: the stored reference
            img = preprocess.decode_image(shared / "images" / photo)
            scores, _ = _scores(mpc, img, clf.num_classes)
            assert int(np.argmax(scores)) == top[0]["index"]
            assert clf.classify(img, top_k=1)[0].index == top[0]["index"]


# ------------------------------------------------------------------ foreign models: calibration, several heads


def _mp_heads(mpc, pixels):
    """MediaPipe's classification lists, one per head: [(head_index, head_name, {index: (name, score)})]."""
    r = mpc.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels)))
    return [(h.head_index, h.head_name, {c.index: (c.category_name, c.score) for c in h.categories})
            for h in r.classifications]


@pytest.mark.parametrize("name", ["calib_IDENTITY", "calib_LOG", "calib_INVERSE_LOGISTIC", "calib_uint8"])
def test_score_calibration_gives_mediapipes_scores(test_models, shared, name):
    """A model whose standard metadata carries ScoreCalibrationOptions (sigmoids, an empty line for the
    default score, a min_score): on the same pixels edge_runtime's scores are MediaPipe's within 1e-4,
    and the calibration changes the answer on some photos (uncalibrated scores would fail this test)."""
    path = test_models / f"{name}.tflite"
    clf = Classifier(path, num_threads=1)
    assert not clf.notes and clf.calibration is not None
    changed = 0
    with _classifier(path) as mpc:
        for img in _photos(shared):
            px, ours = _same_on_pixels(mpc, clf, img)
            clf.calibration, cal = None, clf.calibration
            changed += int(np.argmax(clf.run_tensor(clf.from_pixels(px)))) != int(np.argmax(ours))
            clf.calibration = cal
    assert changed > 0


def test_calibration_mediapipe_refuses_is_reported(test_models):
    """A calibration file with one line more than the scores (it ends in a newline): MediaPipe fails on
    every image; edge_runtime says why when the model is opened and gives uncalibrated scores."""
    path = test_models / "calib_newline.tflite"
    clf = Classifier(path, num_threads=1, warn=False)
    assert clf.calibration is None and "5 lines for 4 scores" in clf.notes[0]
    # in a process of its own: a MediaPipe graph that failed cannot be closed cleanly (it raises again, and
    # its finalizer once more), which must not disturb the other tests
    code = ("import sys, numpy as np, mediapipe as mp\n"
            "from mediapipe.tasks.python import vision, BaseOptions\n"
            "o = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]))\n"
            "c = vision.ImageClassifier.create_from_options(o)\n"
            "try:\n"
            "    c.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((32, 32, 3), np.uint8)))\n"
            "    print('classified')\n"
            "except Exception as e:\n"
            "    print('refused:', str(e).replace(chr(10), ' '))\n"
            "sys.stdout.flush()\n"
            "import os; os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert "refused:" in r.stdout and "Mismatch between number of sigmoids (5)" in r.stdout, r.stdout + r.stderr[-2000:]


def test_every_head_of_a_model_with_several_outputs(test_models, shared):
    """MediaPipe gives one classification list per output; edge_runtime reads one head (the first with labels
    by default, any with output=) and gives that head's list: same labels, scores within 1e-4."""
    path = test_models / "heads3.tflite"
    default = Classifier(path, num_threads=1, warn=False)
    with _classifier(path) as mpc:
        for img in _photos(shared):
            px = fit_like_mediapipe(img, default.input_size)
            heads = _mp_heads(mpc, px)
            assert [(i, n) for i, n, _ in heads] == [(0, "features"), (1, "colour"), (2, "shade")]
            assert default.output_index == 1
            for index, _, cats in heads:
                clf = Classifier(path, num_threads=1, output=index, warn=False)
                ours = clf.run_tensor(clf.from_pixels(px))
                theirs = np.array([cats[i][1] for i in range(clf.num_classes)])
                np.testing.assert_allclose(theirs, ours, atol=1e-4)
                if index:  # labelled heads: MediaPipe's names are edge_runtime's labels
                    assert [cats[i][0] for i in range(clf.num_classes)] == clf.labels


@pytest.mark.parametrize("name", ["edgetl_uint8", "edgetl_float32"])
def test_min_score_threshold_is_applied_by_mediapipe(test_models, tmp_path, name):
    """--min-score / --unknown's threshold, written as ScoreThresholdingOptions in the standard metadata:
    MediaPipe returns no category exactly where edge_runtime answers ``unknown``."""
    from edge_runtime import metadata

    src = test_models / f"{name}.tflite"
    plain = Classifier(src, num_threads=1, warn=False)
    photos = [preprocess.fit(img, plain.input_size, plain.resize) for img in _photos()]
    best = sorted(float(plain.run_tensor(plain.from_pixels(px)).max()) for px in photos)
    assert best[0] < best[-1], "the photos must straddle the threshold"
    meta = dict(metadata.read(src))
    meta["min_score"] = (best[len(best) // 2 - 1] + best[len(best) // 2]) / 2
    path = tmp_path / f"{name}_threshold.tflite"
    path.write_bytes(metadata.embed(src.read_bytes(), meta))  # both metadata forms written again
    clf = Classifier(path, num_threads=1)
    assert clf.min_score == pytest.approx(meta["min_score"])
    unknown = 0
    with _classifier(path) as mpc:
        for px in photos:
            r = mpc.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(px)))
            cats = r.classifications[0].categories
            ours = clf.top(clf.run_tensor(clf.from_pixels(px)), top_k=1)[0]
            if ours.label == "unknown":
                unknown += 1
                assert cats == [], (ours, cats)
            else:
                assert max(cats, key=lambda c: c.score).category_name == ours.label
    assert 0 < unknown < len(photos)


# ------------------------------------------------------------------ a default build's model on real photos


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_default_build_agrees_with_mediapipe_on_real_photos(test_models, shared, mode):
    """A real default build (tests/make_test_models.py: `edgetl build` with the defaults on 12 photos of each
    flowers10 class): on the other flowers10 photos, MediaPipe Tasks given the raw photo to fit itself
    answer as edge_runtime does on the same photo (what `edgetl predict` prints), and are as accurate."""
    from make_test_models import FLOWERS_TRAIN_PER_CLASS

    path = test_models / "flowers_default" / f"model_{mode}.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing: made by tests/make_test_models.py when ../shared is there")
    clf = Classifier(path, num_threads=2)
    assert clf.resize == "mediapipe" and not clf.notes
    flowers = shared / "datasets" / "flowers10"
    photos = [(d.name, p) for d in sorted(x for x in flowers.iterdir() if x.is_dir())
              for p in sorted(d.iterdir())[FLOWERS_TRAIN_PER_CLASS:FLOWERS_TRAIN_PER_CLASS + 8]]
    same = mp_right = edge_right = crop_same = 0
    crop = Classifier(path, num_threads=2, resize="crop")
    with _classifier(path) as mpc:
        for label, p in photos:
            img = preprocess.decode_image(p)
            scores, names = _scores(mpc, img, clf.num_classes)
            ours = clf.classify(img, top_k=1)[0]
            same += int(np.argmax(scores)) == ours.index
            mp_right += names[int(np.argmax(scores))] == label
            edge_right += ours.label == label
            crop_same += int(np.argmax(scores)) == crop.classify(img, top_k=1)[0].index
    n = len(photos)
    # near-ties of a small model can flip where the two bilinear implementations round a few pixels apart
    assert n == 80 and same >= 0.95 * n, f"MediaPipe = edge_runtime on {same} of {n} photos"
    assert abs(mp_right - edge_right) <= 2 and edge_right > n / 2, (mp_right, edge_right, n)
    # what the test tells apart: the same model fitted with edgetl's crop (the old default) answers otherwise
    assert crop_same < same, (crop_same, same)
