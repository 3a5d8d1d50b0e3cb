"""MediaPipe Tasks' ImageClassifier (the consumer a phone or board developer uses) on the files edgetl
writes and on the reference models of ../shared: it loads them, shows edgetl's labels, and on identical
pixels gives edge_runtime's top-1 and scores (within 1e-4). Runs in .venv-mediapipe (tests/mediapipe/run.sh);
skips where mediapipe is not installed."""

from __future__ import annotations

import json

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
            px = fit_like_mediapipe(img, clf.input_size)
            scores, names = _scores(mpc, px, clf.num_classes)
            assert names == clf.labels
            ours = clf.run_tensor(clf.from_pixels(px))
            assert int(np.argmax(scores)) == int(np.argmax(ours))
            np.testing.assert_allclose(scores, ours, atol=1e-4)
        for photo, top in ref.items():  # raw photos, MediaPipe fitting them itself: the stored reference
            img = preprocess.decode_image(shared / "images" / photo)
            scores, _ = _scores(mpc, img, clf.num_classes)
            assert int(np.argmax(scores)) == top[0]["index"]
            assert clf.classify(img, top_k=1)[0].index == top[0]["index"]
