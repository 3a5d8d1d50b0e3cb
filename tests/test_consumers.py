"""What MediaPipe Tasks and the TFLite Task Library run, edge_runtime runs the same way: score calibration from
the standard metadata, models with several outputs (one head read, ``--output`` to choose), grayscale models
batched, and every mode edgetl writes loading under the interpreter installed here (ai-edge-litert, or
tflite-runtime 2.14 in .venv-test-tflite). MediaPipe itself is compared in tests/mediapipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import colour_image, run_cli
from make_test_models import (
    CALIB_DEFAULT_SCORE,
    CALIB_LABELS,
    CALIBRATION,
    EDGETL_MODELS,
    LABELS,
    SHADE_LABELS,
)
from PIL import Image

from edge_runtime import Classifier, calibration, metadata, tflite_format
from edge_runtime import model as model_mod
from edge_runtime.errors import EdgetlError
from edge_runtime.preprocess import fit_like_mediapipe

TRANSFORMS = list(CALIBRATION)


def _photos(n=8, size=(70, 90)):
    kinds = ("red", "green", "blue")
    out = [colour_image(kinds[i % 3], np.random.default_rng([21, i]), (size[0] + 5 * i, size[1] + 3 * i))
           for i in range(n)]
    out += [np.random.default_rng([22, i]).integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(4)]
    return out


def _raw(path, tensor, output=0):
    """The model's dequantized output ``output`` for one input tensor, straight from a fresh interpreter."""
    m = model_mod.load(path, num_threads=1)
    it = m.interpreter
    it.set_tensor(m.input.index, tensor[None])
    it.invoke()
    o = m.outputs[output]
    r = it.get_tensor(o.index).reshape(-1).astype(np.float64)
    return (r - o.zero_point) * o.scale if o.quantized else r


def _mediapipe_reference(raw, lines, transform, default):
    """MediaPipe's ScoreCalibrationCalculator, written out per score (score_calibration_calculator.cc)."""

    def clamped_log(x, t=1e-16):
        return 2 * math.log(t) - math.log(2 * t - x) if x < t else math.log(x)

    out = []
    for x, line in zip(raw, lines):
        if not line:
            out.append(default)
            continue
        p = [float(v) for v in line.split(",")]
        scale, slope, offset = p[:3]
        if len(p) == 4 and x < p[3]:
            out.append(default)
            continue
        t = {"IDENTITY": x, "LOG": clamped_log(x) if transform == "LOG" else None,
             "INVERSE_LOGISTIC": clamped_log(x) - clamped_log(1 - x) if transform == "INVERSE_LOGISTIC" else None
             }[transform]
        s = t * slope + offset
        out.append(min(max(scale / (1 + math.exp(-s)), 0.0), scale))
    return np.array(out)


# ------------------------------------------------------------------ score calibration


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_score_calibration_is_applied_as_mediapipe_does(test_models, transform):
    path = test_models / f"calib_{transform}.tflite"
    clf = Classifier(path, num_threads=1)
    assert not clf.notes and clf.labels == CALIB_LABELS
    assert clf.calibration.score_transformation == transform and clf.calibration.default_score == CALIB_DEFAULT_SCORE
    assert "ScoreCalibrationOptions" in clf.sources["scores"] and not clf._softmax
    changed_top1 = below_min = 0
    for img in _photos():
        t = clf.from_pixels(fit_like_mediapipe(img, clf.input_size))
        raw = _raw(path, t)
        want = _mediapipe_reference(raw, CALIBRATION[transform], transform, CALIB_DEFAULT_SCORE)
        got = clf.run_tensor(t)
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert clf.classify(img, top_k=1)[0].index == int(np.argmax(want))
        changed_top1 += int(np.argmax(want)) != int(np.argmax(raw))
        below_min += want[2] == CALIB_DEFAULT_SCORE
    # the calibration matters on these photos: it changes the answer, and min_score both holds and cuts
    assert changed_top1 > 0 and 0 < below_min < len(_photos())
    r = run_cli("info", path)  # and `info` says it is there
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"calibration ScoreCalibrationOptions {transform}, {len(CALIBRATION[transform])} lines" in r.stdout


def test_score_calibration_of_a_quantized_output(test_models):
    """A uint8 output is dequantized first, then calibrated (as MediaPipe does)."""
    path = test_models / "calib_uint8.tflite"
    clf = Classifier(path, num_threads=1)
    assert not clf.notes and clf.labels == LABELS and clf.model.output.quantized
    lines = [CALIBRATION["LOG"][i] for i in (0, 3, 1)]
    for img in _photos(4):
        t = clf.from_pixels(fit_like_mediapipe(img, clf.input_size))
        np.testing.assert_allclose(clf.run_tensor(t), _mediapipe_reference(_raw(path, t), lines, "LOG",
                                                                           CALIB_DEFAULT_SCORE), atol=1e-6)


def test_calibration_file_with_one_line_too_many_is_refused_with_its_reason(test_models):
    """A calibration file ending in a newline has one sigmoid more than the model has scores: MediaPipe then
    fails on every image; edge_runtime says why and gives the uncalibrated (softmax) scores."""
    clf = Classifier(test_models / "calib_newline.tflite", num_threads=1, warn=False)
    assert clf.calibration is None
    assert len(clf.notes) == 1 and "5 lines for 4 scores" in clf.notes[0] and "newline" in clf.notes[0]
    p = clf.probabilities(_photos(1)[0])
    assert abs(float(p.sum()) - 1) < 1e-5
    with pytest.warns(metadata.MetadataWarning, match="score calibration not applied"):
        Classifier(test_models / "calib_newline.tflite", num_threads=1)


def test_calibration_file_parsing_follows_mediapipe():
    """The cases of MediaPipe's score_calibration_utils_test.cc."""
    f32 = [float(np.float32(x)) for x in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
    assert calibration.parse_file(b"\n0.1,0.2,0.3\n0.4,0.5,0.6,0.7") == [
        None, (f32[0], f32[1], f32[2], None), (f32[3], f32[4], f32[5], f32[6])]
    assert calibration.parse_file(b"\n0.1,0.2,0.3\n0.4,0.5,0.6,0.7\n")[-1] is None  # a 4th, empty sigmoid
    assert calibration.parse_file(b" 1 , 2e-1,-3\r") == [(1.0, f32[1], -3.0, None)]  # spaces, CR: whitespace
    for bad, why in ((b"", "empty"), (b"0.1,0.2,0.3\n0.1,0.2", "3 or 4 expected"),
                     (b"0.1,0.2,0.3\n0.1,foo,0.3\n", "'foo' is not a number"),
                     (b"0.1,0.2,0.3\n-0.1,0.2,0.3\n", "scale must be positive"), (b"\xff,1,1", "not UTF-8")):
        with pytest.raises(ValueError, match=why):
            calibration.parse_file(bad)


def test_score_calibration_metadata_round_trip():
    pytest.importorskip("flatbuffers", reason="writing metadata needs the flatbuffers package")
    md = {"name": "m", "subgraphs": [{"inputs": [{"name": "image"}], "outputs": [{
        "name": "score", "process_units": [{"type": "ScoreCalibrationOptions", "score_transformation": "LOG",
                                            "default_score": 0.25}],
        "associated_files": [{"name": "c.txt", "type": "TENSOR_AXIS_SCORE_CALIBRATION"}]}]}]}
    back = metadata.parse_model_metadata(metadata.build_model_metadata(md))
    out = back["subgraphs"][0]["outputs"][0]
    assert out["process_units"] == [{"type": "ScoreCalibrationOptions", "score_transformation": "LOG",
                                     "default_score": 0.25}]
    assert out["associated_files"][0]["type"] == "TENSOR_AXIS_SCORE_CALIBRATION"
    assert back["min_parser_version"] == "1.0.0"


# ------------------------------------------------------------------ several outputs


def test_model_with_three_heads_reads_the_first_labelled_one(test_models):
    path = test_models / "heads3.tflite"
    clf = Classifier(path, num_threads=1, warn=False)
    assert [list(o.shape) for o in clf.model.outputs] == [[1, 8], [1, 3], [1, 2]]
    assert clf.output_index == 1 and clf.output_name == "colour" and clf.labels == LABELS
    assert len(clf.notes) == 1 and "has 3 outputs" in clf.notes[0] and "output 1 'colour'" in clf.notes[0]
    with pytest.warns(metadata.MetadataWarning, match="pass output= to read another"):
        Classifier(path, num_threads=1)
    for img in _photos(4):
        t = clf.from_pixels(fit_like_mediapipe(img, clf.input_size))
        np.testing.assert_allclose(clf.run_tensor(t), _raw(path, t, 1), atol=1e-6)  # SOFTMAX head: as it is


@pytest.mark.parametrize("choice, index, labels", [(2, 2, SHADE_LABELS), ("shade", 2, SHADE_LABELS),
                                                   ("2", 2, SHADE_LABELS), (0, 0, [str(i) for i in range(8)]),
                                                   ("features", 0, [str(i) for i in range(8)])])
def test_output_chooses_the_head(test_models, choice, index, labels):
    path = test_models / "heads3.tflite"
    clf = Classifier(path, num_threads=1, output=choice, warn=False)
    no_labels = ("heads3.tflite carries no labels (no edgetl metadata, no label file in its TFLite metadata): "
                 "scores are reported by output index; pass labels=[...] (or a label file path)")
    assert clf.notes == ([] if index else [no_labels])
    assert clf.output_index == index and clf.labels == labels and clf.num_classes == len(labels)
    img = _photos(1)[0]
    t = clf.from_pixels(fit_like_mediapipe(img, clf.input_size))
    np.testing.assert_allclose(clf.run_tensor(t), _raw(path, t, index), atol=1e-6)  # SOFTMAX / LOGISTIC heads
    imgs = _photos(3)
    batch = clf.probabilities_batch(imgs)
    assert batch.shape == (len(imgs), len(labels))


@pytest.mark.parametrize("choice", [3, "7", "colours", -1])
def test_unknown_output_is_refused(test_models, choice):
    with pytest.raises(EdgetlError, match="has no output") as e:
        Classifier(test_models / "heads3.tflite", num_threads=1, output=choice)
    assert "0 'features' [1, 8]; 1 'colour' [1, 3] with labels; 2 'shade' [1, 2] with labels" in e.value.message


def test_cli_output_option(test_models, tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(_photos(1)[0]).save(photo)
    model = test_models / "heads3.tflite"
    r = run_cli("predict", model, photo, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["label"] in LABELS
    assert "has 3 outputs" in r.stderr and "pass --output to read another" in r.stderr
    r = run_cli("predict", model, photo, "--json", "--output", "shade")
    assert r.returncode == 0 and json.loads(r.stdout)["label"] in SHADE_LABELS and "outputs" not in r.stderr
    r = run_cli("predict", model, photo, "--output", "9")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2 and lines[0].startswith("error: heads3.tflite has no output '9'")
    assert lines[1].startswith("hint: pass --output with a position from 0 to 2")
    r = run_cli("bench", model, "--output", "2", "--runs", "3", "--warmup", "0", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["threads"] == 1


def test_cli_camera_output_option(test_models, tmp_path):
    import cv2

    video = tmp_path / "v.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for img in _photos(3, size=(48, 64)):
        vw.write(cv2.resize(img, (64, 48)))
    vw.release()
    r = run_cli("camera", test_models / "heads3.tflite", "--source", video, "--headless", "--output", "shade",
                "--max-frames", "2")
    assert r.returncode == 0, r.stderr
    frames = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert frames and all(f["top_k"][0]["label"] in SHADE_LABELS for f in frames)


def test_single_output_models_are_unchanged(test_models):
    clf = Classifier(test_models / "edgetl_uint8.tflite", num_threads=1)
    assert clf.output_index == 0 and not clf.notes and clf.sources["output"] == "the model's only output"
    with pytest.raises(EdgetlError, match="has no output"):
        Classifier(test_models / "edgetl_uint8.tflite", num_threads=1, output=1)


# ------------------------------------------------------------------ grayscale, batched


def test_grayscale_model_is_batched(test_models):
    clf = Classifier(test_models / "std_gray.tflite", num_threads=1)
    assert clf.channels == 1 and clf.model.input.shape_signature[0] == -1
    imgs = _photos(5)
    one_by_one = np.stack([clf.probabilities(im) for im in imgs])
    batched = clf.probabilities_batch(imgs, batch_size=len(imgs))
    assert clf._batch == len(imgs)  # the interpreter really ran one batch (input [n, 32, 32, 1])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    np.testing.assert_allclose(clf.probabilities_batch(imgs, batch_size=2), one_by_one, atol=1e-6)
    preds = clf.classify_batch(imgs, top_k=2)
    assert [p[0].index for p in preds] == [int(np.argmax(x)) for x in one_by_one]


# ------------------------------------------------------------------ every mode loads here


@pytest.mark.parametrize("name", list(EDGETL_MODELS))
def test_every_mode_loads_and_classifies_under_this_interpreter(test_models, name):
    """In .venv-test-tflite this is tflite-runtime 2.14: the dynamic-range model used to need 2.17
    (FULLY_CONNECTED version 12, per-channel dense weights)."""
    path = test_models / f"{name}.tflite"
    clf = Classifier(path, num_threads=1)
    preds = clf.classify(_photos(1)[0], top_k=3)
    assert [p.label for p in preds] != [] and {p.label for p in preds} == set(LABELS)
    flat_meta = {m["name"]: m for m in tflite_format.parse_model(path.read_bytes())["metadata"]}
    assert "min_runtime_version" in flat_meta
    content = path.read_bytes()
    spans = tflite_format.parse_model(content)["buffer_spans"]
    start, length = spans[flat_meta["min_runtime_version"]["buffer"]]
    version = content[start : start + length].rstrip(b"\0").decode()
    assert tuple(int(x) for x in version.split(".")) <= (2, 14, 0), f"{name} needs TFLite {version}"


@pytest.mark.parametrize("run_name", ["four_mode", "flowers_default"])
def test_every_model_of_a_run_loads_and_classifies_under_this_interpreter(test_models, run_name, tmp_path,
                                                                          cache_dir):
    """Real run folders of `edgetl build` (every mode; a default build): in .venv-test-tflite under
    tflite-runtime 2.14, `predict RUN --mode M` answers with every model in the run, and `bench RUN` ranks
    them all (none skipped as unloadable)."""
    import shutil

    src = test_models / run_name
    if not src.is_dir():
        pytest.skip(f"{run_name} was not made (flowers_default needs ../shared: set EDGETL_SHARED)")
    run = tmp_path / run_name
    shutil.copytree(src, run)
    modes = sorted(p.stem.removeprefix("model_") for p in run.glob("model_*.tflite"))
    assert modes == (["dynamic", "float16", "float32", "int8"] if run_name == "four_mode" else ["float32", "int8"])
    classes = json.loads((run / "report.json").read_text())["classes"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(_photos(3)[:3]):
        Image.fromarray(img).save(photos / f"p{i}.jpg", quality=95)
    for mode in modes:
        r = run_cli("predict", run, photos, "--mode", mode, "--json", timeout=300)
        assert r.returncode == 0, f"{mode}: {r.stderr[-1500:]}"
        assert f"model_{mode}.tflite" in r.stderr
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(rows) == 3 and all(x["label"] in classes and 0 < x["score"] <= 1 for x in rows), rows
    r = run_cli("bench", run, "--runs", "3", "--warmup", "0", "--threads", "1", "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    ch = json.loads(r.stdout)["choice"]
    assert sorted(x["mode"] for x in ch["ranking"]) == modes and not ch["skipped"], ch


# ------------------------------------------------------------------ consumer parity as a gate


def _bordered_dataset(root, per_class=10):
    """Wide photos (48 x 144): the centre square has the class's colour, both sides the next class's. A
    model trained on the centre crop answers differently when MediaPipe fits it the whole frame."""
    classes = ("blue", "green", "red")
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True)
        other = classes[(ci + 1) % 3]
        for i in range(per_class):
            rng = np.random.default_rng([ci, i, 5])
            img = np.concatenate([colour_image(other, rng, (48, 48)), colour_image(c, rng, (48, 48)),
                                  colour_image(other, rng, (48, 48))], axis=1)
            Image.fromarray(img).save(d / f"{c}_{i:02d}.jpg", quality=95)
    return root


def test_a_declared_consumer_that_falls_short_fails_the_gate(tmp_path):
    """A crop-trained model: MediaPipe's fit is measured but not gated by default (exit 0); declared with
    --consumers it falls short for real and the gate fails (exit 1), edge_runtime itself passing."""
    from conftest import HAVE_TF, TINY_TRAIN

    data = _bordered_dataset(tmp_path / "photos")
    r = run_cli("build", data, "--out", tmp_path / "x", "--consumers", "edge,phone", block_tf=True)
    assert r.returncode == 2 and "'phone' is not a consumer" in r.stderr and "Traceback" not in r.stderr
    if not HAVE_TF:
        pytest.skip("needs TensorFlow (pip install '.[train]')")
    run = tmp_path / "run"
    r = run_cli("build", data, "--out", run, *TINY_TRAIN, "--fine-tune-epochs", "0", "--resize", "crop",
                "--quantize", "float32")
    assert r.returncode == 0, r.stderr[-3000:]
    cons = json.loads((run / "report.json").read_text())["tflite"]["float32"]["consumers"]
    assert cons["edge"]["passed"] and cons["edge"]["agreement"] >= 0.97 and cons["edge"]["fit"] == "crop"
    mp = cons["mediapipe"]
    assert mp["measured"] and not mp["declared"] and "passed" not in mp and mp["n"] == 30
    assert mp["agreement"] < 0.9 and mp["agreement_with_edge"] < 0.9, mp
    assert "| float32 | MediaPipe Tasks / Task Library fit | mediapipe |" in (run / "report.md").read_text()
    r = run_cli("quantize", run, "--quantize", "float32", "--force", "--consumers", "edge,mediapipe",
                "--min-agreement", "0.9", "--max-drop", "100")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "under mediapipe: top-1 agreement" in r.stderr and "Traceback" not in r.stderr
    rep = json.loads((run / "report.json").read_text())
    f32 = rep["tflite"]["float32"]
    assert f32["passed"] is False and f32["consumers"]["mediapipe"]["passed"] is False
    assert f32["consumers"]["edge"]["passed"] is True and f32["consumers"]["mediapipe"]["declared"]
    assert "FAIL" in (run / "report.md").read_text()


def test_consumer_parity_measures_each_interpreter_or_says_why_not(test_models, tmp_path):
    """No TensorFlow needed: each consumer of a crop model measured on real files, against a reference
    (here edge_runtime's own scores). Under NumPy 2 tflite-runtime is "not measured" with the reason; in
    .venv-test-tflite it is the interpreter edge runs on."""
    from toolchain.core import parity

    path = test_models / "edgetl_float32.tflite"
    clf = Classifier(path, num_threads=1)
    files = []
    for i, img in enumerate(_photos()):
        files.append(tmp_path / f"p{i}.png")
        Image.fromarray(img).save(files[-1])
    tensors = np.stack([clf.prepare(np.asarray(Image.open(f).convert("RGB"))) for f in files])
    p_edge = clf.run_tensors(list(tensors))
    y = p_edge.argmax(1)
    per, failed = parity.consumer_parity(path, tensors, p_edge, p_edge, y, policy="crop", paths=[str(f) for f in files],
                                         test_n=4, max_drop=1.0, min_agreement=0.97,
                                         edge_backend=str(clf.model.backend))
    assert per["edge"]["agreement"] == 1.0 and per["edge"]["passed"] and per["edge"]["test_n"] == 4 and not failed
    mp = per["mediapipe"]
    assert mp["measured"] and not mp["declared"] and mp["n"] == len(files) and mp["fit"] == "mediapipe"
    expected = clf.run_tensors([clf.from_pixels(fit_like_mediapipe(np.asarray(Image.open(f).convert("RGB")),
                                                                   clf.input_size)) for f in files])
    assert mp["agreement"] == round(float((expected.argmax(1) == y).mean()), 4)
    tr = per["tflite-runtime"]
    assert tr["declared"]
    if str(clf.model.backend).startswith("tflite_runtime"):
        assert tr["measured"] and tr["agreement"] == 1.0
    else:
        assert tr["measured"] or tr["reason"]
    # declared, MediaPipe's fit of these odd-sized random photos falls short of a 100 % limit
    per, failed = parity.consumer_parity(path, tensors, p_edge, p_edge, y, policy="crop", paths=[str(f) for f in files],
                                         declared=["mediapipe"], min_agreement=1.0, max_drop=100,
                                         edge_backend=str(clf.model.backend))
    assert per["mediapipe"]["declared"] and (per["mediapipe"]["passed"] == (per["mediapipe"]["agreement"] == 1.0))
    assert bool(failed) == (per["mediapipe"]["agreement"] < 1.0)
