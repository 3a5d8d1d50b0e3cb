"""`edgetl build/train/finetune/quantize/parity` end to end through the CLI, on a tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_FLAGS, TINY_GATES, TINY_TRAIN, requires_tf, run_cli, run_python, write_dataset

from edge_runtime import Classifier, inspect_model
from edge_runtime import model as model_mod

pytestmark = requires_tf
MODES = ("int8", "float16", "dynamic", "float32")


def test_build_exit_code_and_run_folder_contract(tiny_run):
    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    from conftest import FORK_MARK

    assert FORK_MARK not in proc.stderr  # nothing forks beside TensorFlow's threads (cleanlab's pool did)
    assert f"deleted {run / 'cache'}/" in proc.stderr  # a successful build drops its cache (no --keep-cache)
    for name in ("split.json", "labels.txt", "model.keras", "stage1.keras", "report.json", "report.md",
                 "plots/training_curves.png", "plots/confusion_keras.png", "plots/size_accuracy_latency.png"):
        assert (run / name).is_file(), name
    rep = json.loads((run / "report.json").read_text())
    assert rep["classes"] == ["blue", "green", "red"]
    assert sum(rep["counts"]["test"].values()) == 6 and rep["skipped"] == []
    assert rep["weights"]["source"] == "none" and rep["config"]["image_size"] == 96
    assert 0 <= rep["keras"]["val_accuracy"] <= 1 and 0 <= rep["keras"]["test_accuracy"] <= 1
    fe, ft = rep["stages"]["feature_extraction"], rep["stages"]["fine_tune"]
    assert fe["epochs"] >= 1 and fe["seconds"] > 0
    assert ft["epochs"] >= 1 and ft["seconds"] > 0 and ft["kept"] in ("fine_tune", "feature_extraction")
    same = (run / "model.keras").read_bytes() == (run / "stage1.keras").read_bytes()
    assert same == (ft["kept"] == "feature_extraction")  # stage 2 not kept: stage 1's file, copied
    for mode in MODES:
        t = rep["tflite"][mode]
        for key in ("path", "size_bytes", "test_accuracy", "accuracy_drop_pt", "agreement", "kl_mean",
                    "full_integer", "latency_ms_p50", "convert_seconds"):
            assert key in t, (mode, key)
        assert (run / t["path"]).is_file() and (run / f"model_{mode}.json").is_file()
        assert (run / "plots" / f"confusion_{mode}.png").is_file()
        assert t["latency_ms"]["1"] > 0 and t["latency_ms"]["2"] > 0
    md = (run / "report.md").read_text()
    assert "## TFLite models" in md and "int8" in md and "plots/confusion_int8.png" in md


def test_build_gate_failure_exits_1_and_keeps_everything(tmp_path, tiny_data):
    """Calibrating int8 on a single photo clips most activations: the parity gate must catch it."""
    run = tmp_path / "run"
    r = run_cli("build", tiny_data, "--out", run, *TINY_FLAGS, "--calibration-size", "1", "--fine-tune-epochs", "0",
                "--quantize", "int8")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "parity gate failed for int8" in r.stderr and "Traceback" not in r.stderr
    rep = json.loads((run / "report.json").read_text())
    assert rep["status"] == "gate-failed" and rep["tflite"]["int8"]["passed"] is False
    assert rep["tflite"]["int8"]["reason"]
    for name in ("model.keras", "model_int8.tflite", "model_int8.json", "report.md", "cache/images.npy"):
        assert (run / name).is_file(), name  # the cache too: a later quantize is likely
    assert "FAIL" in (run / "report.md").read_text()


def test_every_mode_has_its_precision(tiny_run):
    run, _ = tiny_run
    rep = json.loads((run / "report.json").read_text())
    kinds = {}
    for mode in MODES:
        m = model_mod.load(run / f"model_{mode}.tflite", num_threads=1)
        kinds[mode] = inspect_model.precision(m)
        assert rep["tflite"][mode]["full_integer"] == (mode == "int8")
    assert kinds == {"int8": "full-integer", "float16": "float16-weights", "dynamic": "dynamic-range",
                     "float32": "float32"}
    m = model_mod.load(run / "model_int8.tflite", num_threads=1)
    assert m.input.dtype == np.uint8 and (m.input.scale, m.input.zero_point) == (1.0, 0)
    size = {mode: rep["tflite"][mode]["size_bytes"] for mode in MODES}
    assert size["int8"] * 2.5 < size["float32"] and size["float16"] < size["float32"]


def test_metadata_roundtrip_without_tensorflow(tiny_run, tiny_data):
    """A process where `import tensorflow` fails reads the metadata and classifies like the parity check."""
    run, _ = tiny_run
    photo = sorted((tiny_data / "red").iterdir())[0]
    code = (
        "import sys, json\n"
        "sys.modules['tensorflow'] = None\n"
        "from edge_runtime import Classifier, metadata\n"
        f"c = Classifier({str(run / 'model_int8.tflite')!r})\n"
        f"p = c.classify_path({str(photo)!r}, top_k=3)\n"
        "m = c.meta\n"
        "assert not [k for k in sys.modules if k.startswith('tensorflow') and sys.modules[k] is not None]\n"
        "print(json.dumps({'labels': c.labels, 'resize': c.resize, 'size': c.input_size, 'meta': m,\n"
        "                  'top': p[0].label, 'direct': c.direct_input}))\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    meta = d["meta"]
    rep = json.loads((run / "report.json").read_text())
    assert d["labels"] == ["blue", "green", "red"] == meta["labels"] and d["direct"]
    assert meta["input"]["size"] == [120, 120] and meta["input"]["color"] == "RGB" and meta["input"]["resize"] == "mediapipe"
    assert d["resize"] == "mediapipe" and "MediaPipe" in meta["input"]["interpolation"]  # the default policy
    assert meta["input"]["value_range"] == [0.0, 255.0] and meta["input"]["quantization"] == {"scale": 1.0,
                                                                                              "zero_point": 0}
    assert meta["output"]["probabilities"] is True and meta["mode"] == "int8" and meta["full_integer"] is True
    assert meta["keras_model_sha256"] == rep["keras"]["sha256"]
    assert meta["dataset"]["classes"] == ["blue", "green", "red"] and meta["dataset"]["total"] == 45
    assert meta["parity"]["agreement"] == rep["tflite"]["int8"]["agreement"] and meta["edgetl_version"]
    # labels.txt and the readable model_int8.json beside the model
    assert (run / "labels.txt").read_text().split() == meta["labels"]
    side = json.loads((run / "model_int8.json").read_text())
    assert side["metadata"]["labels"] == meta["labels"] and side["size_bytes"] == (run / "model_int8.tflite").stat().st_size


def test_tflite_predictions_match_parity_figures(tiny_run, tmp_path):
    """The runtime, fed the cached test photos, reproduces the accuracy the build reported."""
    from toolchain.core import data

    run, _ = tiny_run
    rep = json.loads((run / "report.json").read_text())
    ds = data.load(run, rebuild_into=tmp_path)  # the run is only read
    clf = Classifier(run / "model_int8.tflite", num_threads=1)
    probs = clf.run_tensors([np.asarray(ds.images[r]) for r in ds.rows("test")])
    acc = float((probs.argmax(1) == ds.labels("test")).mean())
    assert acc == pytest.approx(rep["tflite"]["int8"]["test_accuracy"], abs=1e-4)


def test_every_model_sees_the_centre_of_the_whole_frame_it_is_fed(tiny_run, tiny_data):
    """The default build's models take the whole frame at 96 / 0.8 = 120 px and keep its central 96 px inside
    the graph: pixels of the 12-px border change nothing, in the Keras model and in every TFLite model on the
    real interpreter, while the centre decides. So a consumer that fits the whole frame (MediaPipe, the Task
    Library) gets the crop's zoom from the model itself."""
    from toolchain.core import modeling

    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    assert rep["config"]["central_fraction"] == 0.8 and "central 96 px of a 120-px input" in (run / "report.md").read_text()
    from edge_runtime import preprocess

    rng = np.random.default_rng(0)
    photos = [sorted((tiny_data / c).iterdir())[i] for c, i in (("blue", 0), ("green", 1), ("red", 2), ("green", 3))]
    px = np.stack([preprocess.load_image(p, (120, 120)) for p in photos])  # real JPEGs, the default fit
    noisy = px.copy()
    border = np.ones((120, 120), bool)
    border[12:108, 12:108] = False
    noisy[:, border] = rng.integers(0, 256, (4, int(border.sum()), 3), dtype=np.uint8)  # another scene around it
    centre = px.copy()
    centre[:, 12:108, 12:108] = px[[2, 0, 1, 2], 12:108, 12:108]  # the same border around other centres
    keras = modeling.load(run / "model.keras")
    assert tuple(keras.inputs[0].shape[1:]) == (120, 120, 3)
    k = [keras.predict(x.astype(np.float32), verbose=0) for x in (px, noisy, centre)]
    np.testing.assert_allclose(k[0], k[1], atol=1e-6)
    assert np.abs(k[0] - k[2]).max() > 1e-3  # the centre decides
    for mode in MODES:
        clf = Classifier(run / f"model_{mode}.tflite", num_threads=1)
        assert clf.input_size == (120, 120), mode
        out = [clf.run_tensors([clf.from_pixels(p) for p in x]) for x in (px, noisy, centre)]
        np.testing.assert_array_equal(out[0], out[1], err_msg=mode)  # bit for bit: the border never enters
        assert np.abs(out[0] - out[2]).max() > 1e-3, mode
        loaded = model_mod.load(run / f"model_{mode}.tflite", num_threads=1)
        ops = loaded.op_counts()
        assert ops.get("STRIDED_SLICE", 0) + ops.get("SLICE", 0) == 1, (mode, ops)  # the crop, a slice: no resampling
        # both metadata say so: edgetl's (input.central_crop) and the standard description apps show
        assert loaded.meta["input"]["size"] == [120, 120] and loaded.meta["input"]["central_crop"] == [96, 96], mode
        assert "central 96x96 pixels of the 120x120 input" in loaded.standard["description"], mode


def test_force_protection(tiny_run, tiny_data):
    run, _ = tiny_run
    before = (run / "model.keras").stat().st_mtime_ns
    r = run_cli("build", tiny_data, "--out", run, *TINY_FLAGS)
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert (run / "model.keras").stat().st_mtime_ns == before
    r = run_cli("quantize", run, "--mode", "int8")
    assert r.returncode == 2 and "--force" in r.stderr
    # with --force a run's model is converted again (float32 is deterministic: same file) and the report
    # keeps every mode
    before = (run / "model_float32.tflite").read_bytes()
    r = run_cli("quantize", run, "--mode", "float32", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(run / "model_float32.tflite")
    from edge_runtime import metadata

    assert metadata.split((run / "model_float32.tflite").read_bytes())[0] == metadata.split(before)[0]
    md = (run / "report.md").read_text()
    assert all(f"| {m} |" in md for m in MODES)


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_data):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    r = run_cli("train", tiny_data, "--out", precious, "--force", *TINY_TRAIN)
    assert r.returncode == 2 and "not an edgetl run folder" in r.stderr
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_train_then_finetune(tmp_path, tiny_data):
    run = tmp_path / "run"
    r = run_cli("train", tiny_data, "--out", run, *TINY_TRAIN)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    assert "fine_tune" not in rep["stages"] and rep["keras"]["stage"] == "feature_extraction"
    assert not list(run.glob("*.tflite"))
    md = (run / "report.md").read_text()  # train alone writes the report too
    assert "## Training" in md and "- stage 1:" in md and "| train |" in md and "## TFLite" not in md
    assert (run / "plots" / "training_curves.png").is_file() and (run / "cache" / "images.npy").is_file()
    r = run_cli("finetune", run, "--fine-tune-epochs", "1", "--fine-tune-from", "block_13_expand")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (run / "report.md").read_text()
    assert "- stage 2: 1 of 1 epochs" in md and "| finetune |" in md
    rep = json.loads((run / "report.json").read_text())
    assert [s["step"] for s in rep["timing"]["steps"]] == ["train", "finetune"]
    assert rep["stages"]["fine_tune"]["from_layer_name"] == "block_13_expand"
    assert rep["stages"]["fine_tune"]["epochs"] == 1
    r = run_cli("finetune", run)
    assert r.returncode == 2 and "already fine-tuned" in r.stderr


def test_bad_data_exits_2_and_leaves_nothing(tmp_path):
    one = write_dataset(tmp_path / "one", classes=("red",), per_class=4)
    r = run_cli("train", one, "--out", tmp_path / "run", *TINY_TRAIN)
    assert r.returncode == 2 and "only one class" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
    r = run_cli("build", tmp_path / "missing", "--out", tmp_path / "run2", *TINY_FLAGS)
    assert r.returncode == 2 and "not found" in r.stderr
    r = run_cli("build", one, "--image-size", "100")
    assert r.returncode == 2 and "image size 100" in r.stderr


def test_offline_imagenet_fails_first_and_leaves_nothing(tmp_path, tiny_data):
    """No cached weights and no network (a dead proxy): a clear error before any run folder exists."""
    dead = "http://127.0.0.1:9"
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
           "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    r = run_cli("build", tiny_data, "--out", tmp_path / "run", "--alpha", "0.35", "--image-size", "96", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "could not download the ImageNet weights" in r.stderr and "--weights PATH" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_training_without_tensorflow_says_how_to_install(tmp_path, tiny_data):
    # --weights none: with the default ImageNet weights and none in Keras' cache (a fresh machine, offline)
    # the weights check speaks first (test_first_use: it runs before TensorFlow is imported)
    r = run_cli("train", tiny_data, "--out", tmp_path / "run", "--weights", "none", block_tf=True)
    assert r.returncode == 2 and "pip install" in r.stderr and "[train]" in r.stderr
    assert "Traceback" not in r.stderr


def test_parity_cli_pass_and_json(tiny_run, tiny_data):
    run, _ = tiny_run
    r = run_cli("parity", run / "model.keras", run / "model_float32.tflite", tiny_data, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    for key in ("n", "keras_accuracy", "tflite_accuracy", "accuracy_drop_pt", "agreement", "kl_mean",
                "cosine_mean", "max_prob_diff", "passed"):
        assert key in d
    assert d["n"] == 45 and d["agreement"] == 1.0 and d["passed"] is True and d["kl_mean"] < 1e-4
    r = run_cli("parity", run / "model.keras", run / "model_int8.tflite", run)  # a RUN: its test split
    assert r.returncode in (0, 1) and "top-1 agreement" in r.stdout


def test_parity_gate_fails_on_a_broken_model(tiny_run, tmp_path):
    """A deliberately broken TFLite model (its output layer's classes rotated) must fail the gate: exit 1."""
    from toolchain.core import convert
    from toolchain.core import modeling

    run, _ = tiny_run
    model = modeling.load(run / "model.keras")
    dense = model.get_layer("head").get_layer("probabilities")
    k, b = dense.get_weights()
    dense.set_weights([np.roll(k, 1, axis=1), np.roll(b, 1)])
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(convert.convert(model, "float32"))
    shutil.copy(run / "labels.txt", tmp_path / "labels.txt")
    r = run_cli("parity", run / "model.keras", broken, run, "--labels", run / "labels.txt", "--input-range", "0,255",
                "--json")
    assert r.returncode == 1, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["passed"] is False and d["agreement"] < 0.5 and "agreement" in d["reason"]
    assert "parity gate failed" in r.stderr


def test_full_integer_check_catches_hybrids(tiny_run, tmp_path):
    from edge_runtime.errors import EdgetlError
    from toolchain.core import convert
    from toolchain.core import modeling

    run, _ = tiny_run
    # a dynamic-range model is a hybrid: int8 weights, float activations
    with pytest.raises(EdgetlError, match="not full-integer") as e:
        convert.check_full_integer(run / "model_dynamic.tflite")
    assert "CONV_2D" in e.value.message or "FULLY_CONNECTED" in e.value.message
    # an "int8" conversion that silently kept an op in float (no int8 kernel, float fallback allowed)
    tf, keras = modeling.import_keras()
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.Lambda(lambda t: tf.math.sin(t))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    m = keras.Model(inp, out)
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([np.random.rand(1, 8, 8, 3).astype(np.float32) * 255] for _ in range(8))
    (tmp_path / "hybrid.tflite").write_bytes(conv.convert())
    with pytest.raises(EdgetlError, match="SIN"):
        convert.check_full_integer(tmp_path / "hybrid.tflite")
    convert.check_full_integer(run / "model_int8.tflite")  # the real one passes


def test_quantize_foreign_keras_model(test_models, tmp_path, tiny_data):
    model = test_models / "logits_float.keras"
    if not model.is_file():
        pytest.skip("test models made without the Keras file")
    r = run_cli("quantize", model, "--calibration", tiny_data, "--out", tmp_path)
    assert r.returncode == 2 and "--labels" in r.stderr and "--input-range" in r.stderr
    (tmp_path / "l.txt").write_text("blue\ngreen\nred\n")
    bad = tmp_path / "cal"
    write_dataset(bad, classes=("cyan", "magenta"), per_class=2)
    r = run_cli("quantize", model, "--calibration", bad, "--out", tmp_path, "--labels", tmp_path / "l.txt",
                "--input-range", "-1,1")
    assert r.returncode == 2 and "not labels of the model" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("quantize", model, "--calibration", tmp_path / "empty", "--out", tmp_path, "--labels",
                tmp_path / "l.txt", "--input-range", "-1,1")
    assert r.returncode == 2 and "holds no files" in r.stderr
    assert not list(tmp_path.glob("*.tflite"))  # nothing written on bad input
    r = run_cli("quantize", model, "--calibration", tiny_data, "--out", tmp_path, "--labels", tmp_path / "l.txt",
                "--input-range", "-1,1", "--mode", "int8", "--max-drop", "100", "--min-agreement", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    clf = Classifier(tmp_path / "logits_float_int8.tflite")
    assert clf.labels == ["blue", "green", "red"] and clf.value_range == (-1.0, 1.0)
    assert clf._softmax  # the foreign model outputs logits: the runtime applies softmax
    r = run_cli("quantize", test_models / "nonimage.keras", "--calibration", tiny_data, "--out", tmp_path / "x",
                "--labels", tmp_path / "l.txt", "--input-range", "0,1")
    assert r.returncode == 2 and "not an image" in r.stderr


def test_quantize_float_io_and_bare_model(tiny_run, tmp_path, tiny_data):
    """An edgetl Keras model outside its run: labels from the labels.txt beside it, calibration from a
    folder; --io float32 keeps the graph integer with float conversions only at the boundary."""
    run, _ = tiny_run
    shutil.copy(run / "model.keras", tmp_path / "pets.keras")
    shutil.copy(run / "labels.txt", tmp_path / "labels.txt")
    out = tmp_path / "out"
    r = run_cli("quantize", tmp_path / "pets.keras", "--calibration", tiny_data, "--io", "float32", "--out", out,
                "--mode", "int8", "--mode", "float16", *TINY_GATES)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.tflite")) == ["pets_float16.tflite", "pets_int8.tflite"]
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    m = model_mod.load(out / "pets_int8.tflite", num_threads=1)
    assert m.input.dtype == np.float32 and inspect_model.precision(m) == "full-integer"
    meta = m.meta
    assert meta["io"] == "float32" and meta["parity"]["n"] == 45 and str(tiny_data) in meta["parity"]["data"]
    assert Classifier(out / "pets_int8.tflite").classify_path(sorted((tiny_data / "red").iterdir())[0])


def test_parity_rejects_mismatched_models(tiny_run, test_models):
    run, _ = tiny_run
    r = run_cli("parity", run / "model.keras", test_models / "nonimage.tflite", run)
    assert r.returncode == 2 and "not an image" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("parity", run / "model.keras", test_models / "logits_float.tflite", run, "--input-range", "-1,1",
                "--labels", run / "labels.txt")
    assert r.returncode == 2 and "120x120" in r.stderr and "32x32" in r.stderr


def test_final_model_is_copied_from_stage1_only_when_it_is_that_model(tmp_path):
    """pipeline.save_final: stage1.keras is copied (not saved again) when it says the same about itself; a
    stage1.keras with other info (another edgetl, other labels) is not, the model is saved."""
    from types import SimpleNamespace

    from toolchain.cfg import config
    from toolchain.commands import pipeline
    from toolchain.core import modeling

    _, keras = modeling.import_keras()
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(inp))
    ds = SimpleNamespace(classes=["a", "b"])
    cfg = config.resolve(None, image_size=96)
    stage1 = tmp_path / "stage1.keras"
    modeling.save(model, stage1, pipeline.keras_info(ds, cfg))
    sha = pipeline.save_final(model, tmp_path, ds, cfg, saved=stage1)
    assert (tmp_path / "model.keras").read_bytes() == stage1.read_bytes()
    assert sha == runfolder_sha(stage1)
    other = SimpleNamespace(classes=["a", "c"])
    pipeline.save_final(model, tmp_path, other, cfg, saved=stage1)
    assert (tmp_path / "model.keras").read_bytes() != stage1.read_bytes()
    assert modeling.read_info(tmp_path / "model.keras")["labels"] == ["a", "c"]


def runfolder_sha(path):
    from toolchain.rundir import runfolder

    return runfolder.sha256_file(path)
