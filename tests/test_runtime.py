"""edge_runtime on real TFLite models with a real interpreter: reference models from ../shared and small
models made by TensorFlow's converter (tests/make_test_models.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import IMAGENET_LABELS, REF_PTQ, REF_QAT, run_cli, run_python
from PIL import Image

from edge_runtime import Classifier, metadata, preprocess
from edge_runtime.errors import EdgetlError


@pytest.mark.parametrize("model", [REF_PTQ, REF_QAT], ids=["tf2_ptq", "tf1_qat"])
def test_reference_models_grace_hopper(shared, model):
    clf = Classifier(model, labels=IMAGENET_LABELS, num_threads=2, warn=False)
    preds = clf.classify_path(shared / "images" / "grace_hopper.bmp", top_k=3)
    assert preds[0].label == "military uniform"
    assert preds[0].index == 653 and 0 < preds[0].score <= 1
    assert preds[0].score >= preds[1].score >= preds[2].score
    assert clf.direct_input  # uint8 input: raw pixels, no float round trip
    assert not clf._softmax  # the model ends in SOFTMAX: not applied twice


def test_reference_more_photos_and_bgr(shared):
    clf = Classifier(REF_PTQ, labels=IMAGENET_LABELS, num_threads=2, warn=False)
    expect = {"parrot.jpg": "macaw", "hot_dog.jpg": "hotdog, hot dog, red hot", "cat.bmp": "Egyptian cat"}
    for name, label in expect.items():
        assert clf.classify_path(shared / "images" / name)[0].label == label
    rgb = preprocess.decode_image(shared / "images" / "grace_hopper.bmp")
    p_rgb = clf.probabilities(rgb)
    p_bgr = clf.probabilities(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True)
    np.testing.assert_array_equal(p_rgb, p_bgr)
    # the wrong channel order changes the answer: BGR must be asked for
    assert not np.array_equal(clf.probabilities(np.ascontiguousarray(rgb[:, :, ::-1])), p_rgb)


def test_ties_go_to_the_lower_index(test_models):
    """Equal scores (common with uint8 outputs) are ordered by class index, whatever the CPU."""
    from edge_runtime.classifier import top_indices

    clf = Classifier(test_models / "edgetl_uint8.tflite", num_threads=1)
    assert [p.index for p in clf.top(np.array([0.2, 0.4, 0.4], np.float32), 3)] == [1, 2, 0]
    assert [p.label for p in clf.top(np.array([0.4, 0.2, 0.4], np.float32), 1)] == ["blue"]
    rng = np.random.default_rng(0)
    for _ in range(200):  # many ties at the k-th place: the lowest tied indices are kept, best first
        p = rng.integers(0, 4, size=1001).astype(np.float32) / 4
        for k in (1, 3, 5):
            got = top_indices(p, k)
            want = sorted(range(p.size), key=lambda i: (-p[i], i))[:k]
            assert got.tolist() == want


def test_min_score_is_one_rule_compared_in_float32(test_models):
    """The Classifier (predict, camera) and the build's reports (diagnose) answer "unknown" by one rule,
    compared in float32 as MediaPipe compares its float score threshold: at 0.7 (0.69999999 in float32) a
    score of exactly float32(0.7) is not below it, one step lower is."""
    from edge_runtime.classifier import answers, below_min_score

    clf = Classifier(test_models / "edgetl_uint8.tflite", num_threads=1, min_score=0.7)
    at = np.float32(0.7)
    below = np.nextafter(at, np.float32(0))
    for best, unknown in ((at, False), (below, True), (np.float32(0.9), False)):
        p = np.array([best, (1 - best) / 2, (1 - best) / 2], np.float32)
        assert below_min_score(best, 0.7) is unknown
        assert (clf.top(p, 1)[0].label == "unknown") is unknown
        assert answers(p[None], 0.7).tolist() == [-1 if unknown else 0]
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=500).astype(np.float32)
    probs[::7, 1] = probs[::7, 2] = probs[::7].max(axis=1)  # ties at the top: the lower index
    for ms in (0.0, 0.4, 0.55, 0.7):
        clf.min_score = ms
        want = [(-1 if r[0].label == "unknown" else r[0].index) for r in (clf.top(p, 1) for p in probs)]
        assert answers(probs, ms).tolist() == want


def test_batched_equals_single(shared):
    clf = Classifier(REF_PTQ, labels=IMAGENET_LABELS, num_threads=2, warn=False)
    imgs = [preprocess.decode_image(shared / "images" / n) for n in ("grace_hopper.bmp", "cat.bmp", "parrot.jpg")]
    batch = clf.classify_batch(imgs, top_k=2)
    single = [clf.classify(im, top_k=2) for im in imgs]
    assert [[p.label for p in b] for b in batch] == [[p.label for p in s] for s in single]


@pytest.mark.parametrize("model", [REF_PTQ, REF_QAT], ids=["tf2_ptq", "tf1_qat"])
def test_reference_models_read_their_standard_metadata(shared, model, recwarn):
    """The Coral models carry standard TFLite metadata (labels as an associated file): no --labels, no
    warning (this test assumed "no metadata" before the runtime read the standard form)."""
    clf = Classifier(model, num_threads=1)
    assert not [w for w in recwarn.list if issubclass(w.category, UserWarning)] and not clf.notes
    assert len(clf.labels) == 1001 and clf.labels[0] == "background"
    assert clf.labels == [ln.strip() for ln in IMAGENET_LABELS.read_text().splitlines() if ln.strip()]
    assert clf.sources["labels"] == "TFLite metadata (imagenet_labels.txt)" and clf.resize == "mediapipe"
    assert clf.classify_path(shared / "images" / "grace_hopper.bmp")[0].label == "military uniform"


def test_model_without_labels_warns_once(test_models):
    """Only a model that nothing describes gets a warning, phrased for the API (labels=) or the CLI."""
    with pytest.warns(UserWarning, match="carries no labels") as rec:
        clf = Classifier(test_models / "bare_uint8.tflite")
    assert len(rec) == 1 and "labels=" in str(rec[0].message) and "--labels" not in str(rec[0].message)
    assert clf.labels == ["0", "1", "2"] and clf.resize == "mediapipe"
    clf = Classifier(test_models / "bare_uint8.tflite", warn=False, cli=True)
    assert len(clf.notes) == 1 and "--labels FILE" in clf.notes[0]
    clf = Classifier(test_models / "bare_uint8.tflite", labels=["a", "b", "c"], warn=False)
    assert not clf.notes  # labels given, uint8 input fed raw: nothing is missing


def test_label_count_mismatch(shared, tmp_path):
    (tmp_path / "l.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgetlError, match="3 labels but the model"):
        Classifier(REF_PTQ, labels=tmp_path / "l.txt", warn=False)


def test_edgetl_metadata_sets_labels_and_preprocessing(test_models):
    clf = Classifier(test_models / "edgetl_uint8.tflite", num_threads=1)
    assert clf.labels == ["blue", "green", "red"]
    assert clf.meta["input"]["resize"] == "crop" and clf.input_size == (96, 96)
    assert clf.direct_input  # scale 1, zero point 0: pixels go in as they are
    assert not clf.notes  # no warning for a model with metadata


def test_input_mapping_per_input_type(test_models):
    """Three conversions of one Keras model: the runtime maps pixels per input type (a lookup table for
    int8 I/O, float for float32) so they all see the same image."""
    from conftest import colour_image

    rng = np.random.default_rng(5)
    imgs = [colour_image(k, rng, (120, 90)) for k in ("red", "green", "blue", "red")]
    u8 = Classifier(test_models / "edgetl_uint8.tflite", num_threads=1)
    i8 = Classifier(test_models / "edgetl_int8io.tflite", num_threads=1)
    f32 = Classifier(test_models / "edgetl_float32.tflite", num_threads=1)
    assert i8.input_dtype == np.int8 and i8._lut is not None and not i8.direct_input
    pu = np.stack([u8.probabilities(im) for im in imgs])
    pi = np.stack([i8.probabilities(im) for im in imgs])
    pf = np.stack([f32.probabilities(im) for im in imgs])
    np.testing.assert_allclose(pu, pi, atol=1e-6)  # same integer graph, same input after the LUT
    px = preprocess.fit(imgs[0], (96, 96))
    np.testing.assert_array_equal(i8.from_pixels(px).astype(np.int16), px.astype(np.int16) - 128)
    t = f32.from_pixels(px)  # the model takes raw 0..255 floats: no rescaling outside the model
    assert t.dtype == np.float32 and np.array_equal(t, px.astype(np.float32))
    np.testing.assert_allclose(pf.sum(1), 1.0, atol=1e-5)


def test_logits_get_softmax_and_float_needs_range(test_models, tmp_path):
    with pytest.raises(EdgetlError, match="pixel range is unknown") as e:
        Classifier(test_models / "logits_float.tflite", warn=False)
    assert "input_range=" in e.value.hint
    with pytest.raises(EdgetlError, match="pixel range is unknown") as e:
        Classifier(test_models / "logits_float.tflite", warn=False, cli=True)
    assert "--input-range" in e.value.hint
    clf = Classifier(test_models / "logits_float.tflite", input_range="-1,1", warn=False)
    assert clf._softmax
    p = clf.probabilities(np.full((50, 50, 3), 128, np.uint8))
    assert abs(float(p.sum()) - 1.0) < 1e-5 and (p > 0).all()
    with pytest.raises(EdgetlError, match="bad input range"):
        Classifier(test_models / "logits_float.tflite", input_range="1,-1", warn=False)


def test_non_image_model(test_models):
    with pytest.raises(EdgetlError, match="not an image"):
        Classifier(test_models / "nonimage.tflite", warn=False)


def test_bad_model_files(tmp_path, shared):
    with pytest.raises(EdgetlError, match="not found"):
        Classifier(tmp_path / "missing.tflite")
    (tmp_path / "text.tflite").write_text("definitely not a model")
    with pytest.raises(EdgetlError, match="not a TFLite model"):
        Classifier(tmp_path / "text.tflite")
    data = REF_PTQ.read_bytes()
    for cut in (len(data) // 2, 5000, 200):
        (tmp_path / "trunc.tflite").write_bytes(data[:cut])
        with pytest.raises(EdgetlError, match="truncated or corrupt"):
            Classifier(tmp_path / "trunc.tflite")


def test_metadata_trailer_roundtrip_and_loads(test_models, tmp_path):
    data = (test_models / "edgetl_uint8.tflite").read_bytes()
    flat, meta = metadata.split(data)
    assert meta["labels"] == ["blue", "green", "red"] and len(flat) < len(data)
    meta["labels"] = ["x", "y", "z"]
    again = metadata.write(data, edgetl=meta)  # replaces edgetl's JSON, keeps the flatbuffer (pure Python)
    assert metadata.split(again)[0] == flat
    (tmp_path / "m.tflite").write_bytes(again)
    assert Classifier(tmp_path / "m.tflite").labels == ["x", "y", "z"]
    assert metadata.read(REF_PTQ.read_bytes() if REF_PTQ.exists() else flat) is None


# ------------------------------------------------------------------ CLI verbs


def _write_photo(path, seed=0):
    from conftest import colour_image

    Image.fromarray(colour_image("red", np.random.default_rng(seed), (80, 100))).save(path)


def test_predict_cli_formats_and_bad_files(shared, tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.open(shared / "images" / "grace_hopper.bmp").save(d / "sub" / "hopper.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    args = ["predict", REF_PTQ, d, "--labels", IMAGENET_LABELS, "--threads", "1"]
    r = run_cli(*args, "--json")
    assert r.returncode == 2, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    good = [x for x in lines if "label" in x]
    bad = [x for x in lines if "error" in x]
    assert good[0]["label"] == "military uniform" and len(good[0]["top_k"]) == 3
    assert bad[0]["path"].endswith("broken.jpg") and "image" in bad[0]["error"]
    assert "1 of 2 file(s) could not be classified" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*args[:2], d / "sub", "--labels", IMAGENET_LABELS, "--csv", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    assert rows[0] == "path,label,score,top_k" and "military uniform" in rows[1]
    r = run_cli("predict", REF_PTQ, d / "sub", "--labels", IMAGENET_LABELS)
    assert r.returncode == 0 and "military uniform" in r.stdout


@pytest.mark.parametrize("case", ["missing", "notmodel", "truncated", "labels"])
def test_cli_bad_input_exit_2(shared, tmp_path, case):
    _write_photo(tmp_path / "p.jpg")
    model, extra = REF_PTQ, ["--labels", IMAGENET_LABELS]
    if case == "missing":
        model = tmp_path / "nope.tflite"
    elif case == "notmodel":
        model = tmp_path / "p.jpg"
    elif case == "truncated":
        model = tmp_path / "t.tflite"
        model.write_bytes(REF_PTQ.read_bytes()[:100000])
    else:
        (tmp_path / "l.txt").write_text("a\nb\n")
        extra = ["--labels", tmp_path / "l.txt"]
    r = run_cli("predict", model, tmp_path / "p.jpg", *extra)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "hint:" in r.stderr


def test_info_cli(shared, test_models):
    r = run_cli("info", REF_PTQ, "--json")
    d = json.loads(r.stdout)
    assert d["precision"] == "full-integer" and d["op_counts"]["CONV_2D"] == 36
    assert d["inputs"][0]["quantization"]["zero_point"] == 127 and d["edgetl_metadata"] is None
    std = d["standard_metadata"]  # the Coral model's own TFLITE_METADATA (it has no edgetl metadata)
    assert std["name"] == "ImageClassifier" and std["labels_file"] == "imagenet_labels.txt"
    assert std["input"]["normalization"] == {"mean": [127.5], "std": [127.5]} and len(std["labels"]) == 1001
    r = run_cli("info", test_models / "edgetl_uint8.tflite")
    assert r.returncode == 0 and "labels   3: blue | green | red" in r.stdout  # " | ": labels may hold commas
    assert "resize crop" in r.stdout
    r = run_cli("info", test_models / "edgetl_float32.tflite", "--json")
    assert json.loads(r.stdout)["precision"] == "float32"


def test_bench_cli(shared):
    r = run_cli("bench", REF_PTQ, "--threads", "1,2", "--runs", "15", "--warmup", "2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [x["threads"] for x in d["results"]] == [1, 2]
    for x in d["results"]:
        c = x["classify_ms"]
        assert 0 < c["p50"] <= c["p90"] <= c["p99"] and x["fps"] > 0
        assert x["invoke_ms"]["p50"] > 0
    assert d["size_bytes"] == REF_PTQ.stat().st_size and d["peak_rss_mb"] > 10 and d["backend"]
    r = run_cli("bench", REF_PTQ, "--threads", "zero")
    assert r.returncode == 2 and "thread counts" in r.stderr


def test_backend_choice(shared):
    from edge_runtime import backends

    be = backends.resolve()
    assert be.name in backends.ORDER
    with pytest.raises(EdgetlError, match="unknown backend"):
        backends.resolve("onnx")
    r = run_cli("info", REF_PTQ, "--backend", "nonesuch")
    assert r.returncode == 2 and "unknown backend" in r.stderr


def test_no_interpreter_installed_says_what_to_install(shared):
    r = run_cli("info", REF_PTQ, block=("ai_edge_litert", "tflite_runtime", "tensorflow"))
    assert r.returncode == 2 and "no TFLite interpreter is installed" in r.stderr
    assert "pip install ai-edge-litert" in r.stderr and "Traceback" not in r.stderr


def test_tflite_runtime_under_numpy2_is_refused():
    """tflite-runtime 2.14 crashes under NumPy 2: it must be refused with the reason, not loaded."""
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") is None:
        pytest.skip("tflite-runtime not installed in this environment")
    from edge_runtime import backends

    if int(np.__version__.split(".")[0]) < 2:
        assert backends.resolve("tflite_runtime").name == "tflite_runtime"
    else:
        with pytest.raises(EdgetlError, match="built for NumPy 1.x") as e:
            backends.resolve("tflite_runtime")
        assert "numpy<2" in e.value.hint
        # auto-selection skips it and picks the next usable backend
        assert backends.resolve().name != "tflite_runtime"


def test_runtime_never_imports_tensorflow(shared, tmp_path):
    _write_photo(tmp_path / "p.jpg")
    code = (
        "import sys, time\n"
        "t = time.perf_counter(); import edge_runtime; dt = time.perf_counter() - t\n"
        "from edge_runtime import Classifier\n"
        f"c = Classifier({str(REF_PTQ)!r}, labels={str(IMAGENET_LABELS)!r}, warn=False)\n"
        f"c.classify_path({str(tmp_path / 'p.jpg')!r})\n"
        "from edge_runtime import camera, bench, inspect_model\n"
        "bad = [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.') or m == 'keras']\n"
        "print(dt, bad)\n"
        "assert not bad, bad\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[0]) < 0.5


def test_cli_help_does_not_import_tensorflow():
    code = ("import sys; from toolchain.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "assert 'cv2' not in sys.modules\n")
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert "build" in r.stdout and "camera" in r.stdout


# ------------------------------------------------------------------ predict: what is skipped, what fails


def _json_lines(text):
    def no_nan(x):
        raise ValueError(f"not valid JSON: {x}")

    return [json.loads(x, parse_constant=no_nan) for x in text.splitlines()]


def _one_error_one_hint(stderr):
    lines = stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    hints = [ln for ln in lines if ln.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1 and "Traceback" not in stderr, stderr
    return errors[0], hints[0]


def _strays(d):
    """A labels file, a named pipe, a socket and a link to /dev/zero: real entries that are not images."""
    import os
    import socket

    (d / "labels.txt").write_text("blue\ngreen\nred\n")
    os.mkfifo(d / "pipe.jpg")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock.png"))
    s.close()
    os.symlink("/dev/zero", d / "zero.jpg")


def test_predict_skips_non_images_and_exits_0(test_models, tmp_path):
    """Photos all classified, plus files that are not images: exit 0, the strays listed on stderr. (Before:
    exit 2 for the labels file, and a read that never ended on the pipe or /dev/zero.)"""
    d = tmp_path / "holiday"
    d.mkdir()
    _write_photo(d / "a.jpg", 1)
    _write_photo(d / "b.png", 2)
    _strays(d)
    r = run_cli("predict", test_models / "edgetl_uint8.tflite", d, "--json", "--threads", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = _json_lines(r.stdout)
    assert sorted(x["path"].rsplit("/", 1)[-1] for x in lines if "label" in x) == ["a.jpg", "b.png"]
    skipped = {x["path"].rsplit("/", 1)[-1]: x["skipped"] for x in lines if "skipped" in x}
    assert skipped == {"labels.txt": "not an image (unrecognised format)",
                       "pipe.jpg": "not a regular file (named pipe)", "sock.png": "not a regular file (socket)",
                       "zero.jpg": "not a regular file (character device, via a symbolic link to /dev/zero)"}
    assert not any(ln.startswith("error:") for ln in r.stderr.splitlines())
    assert f"skipped: {d / 'pipe.jpg'}: not a regular file (named pipe)" in r.stderr
    assert "4 file(s) skipped: not images (listed above); 2 classified" in r.stderr
    # a pipe named on the command line is skipped the same way, without blocking
    r = run_cli("predict", test_models / "edgetl_uint8.tflite", d / "a.jpg", d / "pipe.jpg", "--threads", "1",
                timeout=120)
    assert r.returncode == 0 and "pipe.jpg: not a regular file (named pipe)" in r.stderr, r.stderr


def test_predict_exit_2_when_nothing_classified_or_a_photo_is_corrupt(test_models, tmp_path):
    model = test_models / "edgetl_uint8.tflite"
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "labels.txt").write_text("a\nb\n")
    r = run_cli("predict", model, only_text, timeout=120)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and "no file could be classified: of 1, 1 is not an image" in err
    assert "classified" not in hint and "pass photos" in hint  # no false "the others were classified"

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write_photo(mixed / "good.jpg")
    (mixed / "broken.jpg").write_bytes((mixed / "good.jpg").read_bytes()[:300])  # a truncated photo
    (mixed / "notes.txt").write_text("not a photo")
    r = run_cli("predict", model, mixed, "--json", timeout=120)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and "1 of 3 file(s) could not be classified" in err
    assert hint == ("hint: fix or remove the files listed as failed; 1 other file(s) were classified and 1 "
                    "skipped as not images")
    by = {x["path"].rsplit("/", 1)[-1]: x for x in _json_lines(r.stdout)}
    assert "label" in by["good.jpg"] and "truncated" in by["broken.jpg"]["error"] and "skipped" in by["notes.txt"]

    # text content under a photo's name is a damaged photo, not a stray file
    (mixed / "broken.jpg").unlink()
    (mixed / "photo.png").write_text("<html>saved a web page, not the picture</html>")
    r = run_cli("predict", model, mixed, timeout=120)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and "failed: " in r.stderr and "despite its .png name" in r.stderr

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    r = run_cli("predict", model, only_bad, timeout=120)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and "no file could be classified: of 1, 1 failed" in err
    assert "classified" not in hint and "fix or remove" in hint


def test_predict_unreadable_folder_is_a_failure(test_models, tmp_path):
    import subprocess

    from test_preprocess import unprivileged_python

    d = tmp_path / "photos"
    (d / "locked").mkdir(parents=True)
    _write_photo(d / "a.jpg")
    _write_photo(d / "locked" / "b.jpg")
    (d / "locked").chmod(0)
    try:
        code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
        r = subprocess.run(unprivileged_python() + ["-c", code, "predict", str(test_models / "edgetl_uint8.tflite"),
                                                    str(d)], capture_output=True, text=True, timeout=120)
    finally:
        (d / "locked").chmod(0o755)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and f"failed: {d / 'locked'}: cannot read folder (permission denied)" in r.stderr
    assert "a.jpg" in r.stdout and "1 other file(s) were classified" in hint


def test_predict_json_is_valid_when_scores_are_not_finite(test_models, tmp_path):
    """A float model fed values so large its output overflows: that file is an error entry, never NaN."""
    _write_photo(tmp_path / "p.jpg")
    r = run_cli("predict", test_models / "logits_float.tflite", tmp_path / "p.jpg", "--input-range=-1e38,1e38",
                "--json", timeout=120)
    lines = _json_lines(r.stdout)  # valid JSON: no NaN or Infinity
    assert len(lines) == 1 and "not finite" in lines[0]["error"] and "label" not in lines[0]
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and "--input-range" in hint


@pytest.mark.parametrize("verb,flag,value", [
    ("predict", "--top-k", "0"), ("predict", "--top-k", "-2"), ("predict", "--threads", "0"),
    ("camera", "--top-k", "0"), ("camera", "--threads", "0"), ("camera", "--threads", "-1"),
    ("bench", "--threads", "0"), ("bench", "--threads", "2,0"),
])
def test_bad_counts_name_the_flag(tmp_path, verb, flag, value):
    """Checked before the model is opened: the error names the flag even when the model is missing too."""
    _write_photo(tmp_path / "p.jpg")
    extra = {"predict": [tmp_path / "p.jpg"], "camera": ["--headless"], "bench": []}[verb]
    r = run_cli(verb, tmp_path / "missing.tflite", *extra, f"{flag}={value}", timeout=120)
    err, hint = _one_error_one_hint(r.stderr)
    assert r.returncode == 2 and flag in err and "missing.tflite" not in err and "model" not in err, err


# ------------------------------------------------------------------ bench: one interleaved loop


def test_time_interleaved_alternates_the_two_calls():
    from edge_runtime.bench import time_interleaved

    calls = []
    a, b = time_interleaved(lambda: calls.append("a"), lambda: calls.append("b"), runs=4, warmup=2)
    assert len(a) == len(b) == 4 and all(x >= 0 for x in a + b)
    assert "".join(calls) == "ab" "ba" + "ab" "ba" "ab" "ba"  # warm-up, then the timed runs, order alternating


def test_bench_figures_are_consistent_and_threads_checked(test_models):
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    model = test_models / "edgetl_uint8.tflite"
    r = run_cli("bench", model, "--threads", f"1,{cores + 1}", "--runs", "20", "--warmup", "2", "--json",
                timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["cores"] == cores and d["fps_basis"] == "1000 / mean classify ms"
    for x in d["results"]:
        c, i = x["classify_ms"], x["invoke_ms"]
        if x["threads"] <= cores:  # (more threads than cores: both figures are mostly contention noise)
            # classify includes an invoke and is measured in the same loop: not faster (10% for noise on a
            # loaded machine; the reported bug was classify at less than half of invoke)
            assert c["p50"] >= 0.9 * i["p50"], x
        assert x["fps"] == pytest.approx(1000.0 / c["mean"], rel=2e-3, abs=0.06)
    assert f"--threads {cores + 1} exceeds the {cores} core(s)" in r.stderr
    r = run_cli("bench", model, "--threads", "1", "--runs", "10", "--warmup", "1", timeout=300)
    assert r.returncode == 0 and "exceeds" not in r.stderr
    assert "mean ms" in r.stdout and "FPS = 1000 / mean classify ms" in r.stdout
