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
    assert clf.sources["labels"] == "TFLite metadata (imagenet_labels.txt)" and clf.resize == "squash"
    assert clf.classify_path(shared / "images" / "grace_hopper.bmp")[0].label == "military uniform"


def test_model_without_labels_warns_once(test_models):
    """Only a model that nothing describes gets a warning, phrased for the API (labels=) or the CLI."""
    with pytest.warns(UserWarning, match="carries no labels") as rec:
        clf = Classifier(test_models / "bare_uint8.tflite")
    assert len(rec) == 1 and "labels=" in str(rec[0].message) and "--labels" not in str(rec[0].message)
    assert clf.labels == ["0", "1", "2"] and clf.resize == "squash"
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
    assert r.returncode == 0 and "labels   3: blue, green, red" in r.stdout
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
