"""What a new user trips over (issue 17): messages, help and skip reasons that say what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_tf, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_skip_reason_for_missing_shared_names_edgetl_shared(tmp_path):
    """Tests that need ../shared skip with a reason that says how to point them at a copy elsewhere."""
    env = dict(os.environ, EDGETL_SHARED=str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "test_runtime.py"), "-k", "reference or shared or ptq"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    skips = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert skips, r.stdout[-2000:]
    assert all("EDGETL_SHARED" in ln for ln in skips if "shared" in ln), skips


# ------------------------------------------------------------------ the command line: help, -h, bare edgetl

VERBS = ("build", "train", "finetune", "quantize", "parity", "clean", "predict", "camera", "bench", "info")

_HELP_SCRIPT = r"""
import contextlib, io, json, sys
from toolchain.cli import main
out = {}
for args in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            main(args)
        except SystemExit as x:
            code = x.code
    out[" ".join(args)] = [code, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


def _help_outputs(argvs) -> dict:
    import json

    r = subprocess.run([sys.executable, "-c", _HELP_SCRIPT, json.dumps(argvs)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _description_columns(help_text: str) -> dict:
    """Section name -> the set of columns where the descriptions of its entries (and their continuation
    lines) start."""
    cols: dict = {}
    section = None
    for line in help_text.splitlines():
        if line and not line.startswith(" "):
            section = line.rstrip(":") if line.endswith(":") else None
            continue
        if section not in ("Arguments", "Options") or not line.strip():
            continue
        body = line[2:]
        if body.startswith(" "):  # a continuation line: the description goes on
            cols.setdefault(section, set()).add(len(line) - len(line.lstrip()))
        else:  # "NAME  description": the description starts after the first run of 2+ spaces
            i = body.find("  ")
            if i >= 0:
                j = i + len(body[i:]) - len(body[i:].lstrip())
                cols.setdefault(section, set()).add(2 + j)
    return cols


def test_dash_h_is_help_everywhere_bare_edgetl_is_help_and_columns_line_up():
    """`-h` = `--help` for edgetl and every verb; bare `edgetl` prints the same help on stdout, exit 0 (a
    request for help, as `-h`); a verb missing its argument stays a usage error (exit 2, error + hint)."""
    argvs = [[], ["-h"], ["--help"]] + [[v, flag] for v in VERBS for flag in ("-h", "--help")] + [["build"]]
    res = _help_outputs(argvs)
    code, out, err = res[""]
    assert code == 0 and err == "" and out == res["--help"][1] == res["-h"][1], (code, err)
    assert "Usage: edgetl" in out and "Commands:" in out
    for v in VERBS:
        for flag in ("-h", "--help"):
            c, o, e = res[f"{v} {flag}"]
            assert c == 0 and e == "" and o.startswith(f"Usage: edgetl {v}"), (v, flag, c, e)
        assert res[f"{v} -h"][1] == res[f"{v} --help"][1]
        cols = _description_columns(res[f"{v} -h"][1])
        assert cols.get("Options"), v
        for section, starts in cols.items():
            assert len(starts) == 1, f"edgetl {v} -h: {section} descriptions start in columns {sorted(starts)}"
    c, o, e = res["build"]
    assert c == 2 and o == "" and e.startswith("error: missing argument") and "\nhint: " in e


def test_help_alignment_check_sees_a_misaligned_column():
    """The alignment check above would fail on the help this issue reported (descriptions shifted)."""
    bad = "Arguments:\n  MODEL  A .tflite model, or a run folder: its fastest model that\n" \
          "                passed parity on this device.\n"
    assert len(_description_columns(bad)["Arguments"]) == 2


# ------------------------------------------------------------------ parity figures: which photos, how sure


def test_drop_interval_matches_newcombes_method_and_covers():
    from toolchain.core import metrics

    # Cavo et al. 2012 (Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8):
    # 59 both, 6 first only, 16 second only, 80 neither -> -0.0621, 95% CI -0.1186 to -0.0046
    lo, hi = metrics.paired_drop_interval(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    swapped = metrics.paired_drop_interval(59, 16, 6, 80)  # the two models' roles exchanged
    assert abs(swapped[0] + hi) < 1e-12 and abs(swapped[1] + lo) < 1e-12
    # no disagreement at all on 240 photos still leaves an interval; it narrows with more photos
    lo240, hi240 = metrics.paired_drop_interval(240, 0, 0, 0)
    hi800 = metrics.paired_drop_interval(800, 0, 0, 0)[1]
    assert lo240 < 0 < hi240 and hi800 < hi240
    # coverage of the true drop, by simulation (seeded): a 95 % interval covers it about 95 % of the time
    import numpy as np

    rng = np.random.default_rng(0)
    probs, n = [0.6, 0.15, 0.1, 0.15], 60
    hits = sum(lo <= 0.05 <= hi for lo, hi in (metrics.paired_drop_interval(*rng.multinomial(n, probs))
                                             for _ in range(2000)))
    assert 0.93 <= hits / 2000 <= 0.985


def test_parity_figures_carry_the_interval_of_the_drop():
    import numpy as np

    from toolchain.core import metrics

    y = np.array([0] * 70 + [1] * 10)
    keras = np.eye(2)[y]
    tfl = keras.copy()
    tfl[:1] = [0.0, 1.0]  # one photo that the TFLite model gets wrong: 1.25 points of 80
    r = metrics.parity(keras, tfl, y)
    assert r["accuracy_drop_pt"] == 1.25
    lo, hi = r["accuracy_drop_ci95_pt"]
    assert lo < 0 and r["accuracy_drop_pt"] < hi < 10  # one photo in 80 says little: the interval reaches below 0


def _parity_rep():
    """Parity over all 800 photos passes (0.12 pt) while the 80 test photos drop 1.25 pt: the case
    issue 17 found contradictory."""
    def model(size, test_acc, test_drop, test_ci, drop, ci, lat):
        return {"size_bytes": size, "full_integer": True, "test_accuracy": test_acc, "test_n": 80,
                "test_accuracy_drop_pt": test_drop, "test_accuracy_drop_ci95_pt": test_ci, "n": 800,
                "keras_accuracy": 0.99, "tflite_accuracy": 0.989, "accuracy_drop_pt": drop,
                "accuracy_drop_ci95_pt": ci, "agreement": 0.996, "kl_mean": 0.001, "latency_ms": {"1": lat, "2": lat},
                "convert_seconds": 10.0, "passed": True, "parity_data": "800 photos of the run: test 80, val 80, "
                "train 640", "backend": "ai_edge_litert"}
    return {"classes": ["a", "b"], "keras": {"test_accuracy": 0.9375, "n": 80, "test_split": "test"},
            "tflite": {"int8": model(3_000_000, 0.925, 1.25, [-2.9, 6.7], 0.12, [-0.4, 0.7], 2.0),
                       "float32": model(9_000_000, 0.9375, 0.0, [-4.6, 4.6], 0.0, [-0.5, 0.5], 5.0)}}


def test_report_labels_each_figure_with_its_photos_and_interval(tmp_path):
    pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (pip install '.[train]')")
    from toolchain.core import report

    rep = _parity_rep()
    report.write(tmp_path, rep, name="flowers")
    md = (tmp_path / "report.md").read_text()
    assert "test acc (80 test photos)" in md and "drop (pt), 80 test photos" in md
    assert "drop (pt), all 800 photos" in md and "agreement, all 800 photos" in md
    assert "| 1.25 [-2.90, 6.70] | 0.12 [-0.40, 0.70] |" in md  # both drops, each with its interval
    assert "Newcombe" in md and "95 %" in md and "The gate uses the drop and the agreement over all 800" in md


def test_tradeoff_plot_shows_the_tables_test_accuracy_and_stops_at_one():
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    from toolchain.core import report

    fig = report.tradeoff_figure(_parity_rep())
    ax = fig.axes[0]
    ys = sorted(float(c.get_offsets()[0][1]) for c in ax.collections)
    assert ys == [0.925, 0.9375]  # the table's test accuracy, not the all-photos 0.989
    assert "80 test photos" in ax.get_ylabel()
    keras = [ln for ln in ax.get_lines() if ln.get_label() == "Keras model"]
    assert keras and keras[0].get_ydata()[0] == 0.9375  # the Keras model's test accuracy
    rep = _parity_rep()
    for r in rep["tflite"].values():
        r["test_accuracy"] = 1.0
    rep["keras"]["test_accuracy"] = 1.0
    for a in report.tradeoff_figure(rep).axes:
        assert a.get_ylim()[1] <= 1.0


# ------------------------------------------------------------------ training curves


def _curves_rep():
    """Stage 1 stopped early at epoch 5 with epoch 3's weights kept; stage 2 (kept) starts from those."""
    h1 = {"loss": [1.0, 0.8, 0.7, 0.72, 0.75], "val_loss": [1.1, 0.9, 0.8, 0.85, 0.9],
          "accuracy": [0.5, 0.9, 1.0, 1.0, 1.0], "val_accuracy": [0.4, 0.9, 1.0, 0.95, 0.95]}
    h2 = {"loss": [0.6, 0.5], "val_loss": [0.78, 0.95], "accuracy": [1.0, 1.0], "val_accuracy": [1.0, 0.95]}
    return {"history": {"feature_extraction": h1, "fine_tune": h2},
            "config": {"epochs": 8, "patience": 2, "fine_tune_epochs": 2, "fine_tune_patience": 2},
            "stages": {"feature_extraction": {"epochs": 5, "kept_epoch": 3, "stopped_early": True},
                       "fine_tune": {"epochs": 2, "kept": "fine_tune", "kept_epoch": 1, "stopped_early": False}}}


def test_curves_mark_stage_1s_kept_epoch_and_start_stage_2_from_it():
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    from toolchain.core import report

    fig = report.curves_figure(_curves_rep())
    loss, acc = fig.axes[:2]
    for ax in (loss, acc):
        lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
        for ln in ax.get_lines():  # no line joins the last stage-1 epoch (5) to stage 2's first (6)
            xs = list(ln.get_xdata())
            assert not any(a == 5 and b == 6 for a, b in zip(xs, xs[1:])), ln.get_gid()
        start = [ln for g, ln in lines.items() if g.startswith("stage2-start")]
        assert start and all(list(ln.get_xdata()) == [3, 6] for ln in start)  # from the kept epoch 3
        assert list(lines["stage1-kept"].get_xdata()) == [3]
        assert list(lines["kept"].get_xdata()) == [6]
    assert acc.get_ylim()[1] <= 1.0  # accuracy reaches 1.0: the axis ends there
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert "stage-1 weights kept (epoch 3)" in texts and "kept weights (epoch 6)" in texts


def test_curves_legend_covers_no_curve_on_the_quickstart_sample():
    """The Quickstart sample's curves (their shape: a steep first epoch, then flat at 0 loss and 1.0
    accuracy) leave no corner free: the legend stands outside both plots."""
    pytest = __import__("pytest")
    pytest.importorskip("matplotlib")
    from toolchain.core import report

    h1 = {"loss": [0.859, 0.045, 0.007, 0.002, 0.002, 0.001, 0.001, 0.001, 0.001, 0.001],
          "val_loss": [0.084, 0.004, 0.001, 0.0004, 0.0003, 0.0002, 0.0002, 0.0002, 0.0001, 0.0001],
          "accuracy": [0.708, 0.995, 1, 1, 1, 1, 1, 1, 1, 1], "val_accuracy": [1.0] * 10}
    h2 = {"loss": [0.0009, 0.0002, 0.0002, 0.0001, 0.0], "val_loss": [0.0001, 0.0002, 0.0, 0.0, 0.0],
          "accuracy": [1.0] * 5, "val_accuracy": [1.0] * 5}
    rep = {"history": {"feature_extraction": h1, "fine_tune": h2},
           "config": {"epochs": 10, "patience": 3, "fine_tune_epochs": 5, "fine_tune_patience": 2},
           "stages": {"feature_extraction": {"epochs": 10, "kept_epoch": 10, "stopped_early": False},
                      "fine_tune": {"epochs": 5, "kept": "fine_tune", "kept_epoch": 5, "stopped_early": False}}}
    fig = report.curves_figure(rep)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    for lg in legends:
        box = lg.get_window_extent(r)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(r)), "the legend lies over a plot"
        for t in fig.texts + [t for ax in fig.axes for t in ax.texts]:
            assert not box.overlaps(t.get_window_extent(r)), f"the legend covers {t.get_text()!r}"
    assert fig.axes[1].get_ylim()[1] <= 1.0


def test_stage_2_says_what_improved():
    from toolchain.core.train import stage2_verdict

    kept, text = stage2_verdict(0.9625, 0.20, 0.9625, 0.15)
    assert kept and "improved validation loss (0.2000 -> 0.1500) at the same accuracy (0.9625)" in text
    assert "acc 0.9625 -> 0.9625" not in text
    kept, text = stage2_verdict(0.95, 0.20, 0.9625, 0.25)
    assert kept and "improved validation accuracy (0.9500 -> 0.9625" in text
    kept, text = stage2_verdict(0.9625, 0.15, 0.9625, 0.20)
    assert not kept and "accuracy unchanged (0.9625) and loss not lower" in text and "stage-1 model" in text
    kept, text = stage2_verdict(0.9625, 0.15, 0.95, 0.10)
    assert not kept and "accuracy fell (0.9625 -> 0.9500" in text


# ------------------------------------------------------------------ the runtime: which model, and why


def _run_copy(tiny_run, tmp_path) -> Path:
    import shutil

    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(run, dst)
    return dst


def _photo(tmp_path, kind="red") -> Path:
    import numpy as np
    from conftest import colour_image
    from PIL import Image

    p = tmp_path / f"{kind}.jpg"
    Image.fromarray(colour_image(kind, np.random.default_rng(3))).save(p, "JPEG")
    return p


@requires_tf
def test_info_run_describes_the_models_and_the_choice_and_mode_says_which(tiny_run, tmp_path):
    import json

    run = _run_copy(tiny_run, tmp_path)
    env = {"EDGETL_CACHE_DIR": str(tmp_path / "cache")}
    r = run_cli("info", run, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for mode in ("int8", "float16", "dynamic", "float32"):
        assert f"model_{mode}.tflite" in r.stdout
    assert "[95% CI]" in r.stdout and "not measured on this device yet" in r.stdout
    d = json.loads(run_cli("info", run, "--json", env=env, timeout=120).stdout)
    assert {m["mode"] for m in d["models"]} == {"int8", "float16", "dynamic", "float32"} and d["choice"] is None
    # --mode says which model it uses, and why
    photo = _photo(tmp_path)
    r = run_cli("predict", run, photo, "--mode", "float16", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "using model_float16.tflite: forced by --mode float16; it passed its parity gate" in r.stderr
    # the automatic choice says it too; then info shows the remembered choice
    r = run_cli("predict", run, photo, env=env, timeout=600)
    assert r.returncode == 0 and "the fastest model that passed parity on this device" in r.stderr, r.stderr
    chosen = r.stderr.split("using ", 1)[1].split(" ", 1)[0]
    r = run_cli("info", run, env=env, timeout=120)
    assert f"choice     {chosen} at " in r.stdout, r.stdout
    d = json.loads(run_cli("info", run, "--json", env=env, timeout=120).stdout)
    assert Path(d["choice"]["path"]).name == chosen


@requires_tf
def test_classifier_from_run_says_which_model_and_why(tiny_run, tmp_path, monkeypatch, caplog):
    import logging

    from edge_runtime import Classifier

    run = _run_copy(tiny_run, tmp_path)
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(tmp_path / "cache"))
    clf = Classifier.from_run(run, mode="int8", num_threads=1)
    text = repr(clf)
    assert text.startswith("Classifier(") and str(run / "model_int8.tflite") in text
    assert "mode='int8'" in text and "threads=1" in text and "backend='" in text
    assert clf.chosen == "forced by mode='int8'; it passed its parity gate" and "chosen=" in text
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        clf = Classifier.from_run(run)
    assert "the fastest model that passed parity on this device" in clf.chosen
    assert clf.chosen in repr(clf) and Path(str(clf.model.path)).name in caplog.text
    plain = Classifier(run / "model_float32.tflite")
    assert "chosen='given as a file'" in repr(plain) and plain.chosen is None


@requires_tf
def test_a_keras_model_given_to_predict_points_at_the_tflite_files_and_quantize(tiny_run, tmp_path):
    import shutil

    from conftest import assert_user_error

    run = _run_copy(tiny_run, tmp_path)
    photo = _photo(tmp_path)
    r = run_cli("predict", run / "model.keras", photo, block_tf=True, timeout=120)
    assert_user_error(r, "is a Keras model", "not a TFLite model", "model_int8.tflite", "edgetl quantize")
    alone = tmp_path / "elsewhere" / "mine.keras"
    alone.parent.mkdir()
    shutil.copy(run / "model.keras", alone)
    r = run_cli("info", alone, block_tf=True, timeout=120)
    assert_user_error(r, "not a TFLite model", f"edgetl quantize {alone}")


# ------------------------------------------------------------------ offline: fast, one clean line


def test_keras_offline_message_loses_its_noise():
    from toolchain.core.modeling import keras_fetch_reason

    url = "https://storage.googleapis.com/x/mobilenet_v2_weights.h5"
    assert keras_fetch_reason(f"URL fetch failure on {url}: None -- [Errno -3] Temporary failure in name "
                              "resolution") == f"Temporary failure in name resolution ({url})"


@requires_tf
def test_offline_imagenet_weights_fail_at_once_before_tensorflow(tiny_data, tmp_path):
    """No weights in Keras' cache and no way out (a proxy on a closed loopback port stands for a machine
    without network: nothing leaves this machine): exit 2 in a second or two, before TensorFlow loads
    (it is made unimportable here), one clean error line."""
    import socket
    import time

    from conftest import assert_user_error

    with socket.socket() as s:  # a free loopback port, closed again: connecting to it is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": proxy, "https_proxy": proxy,
           "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": "", "ALL_PROXY": "",
           "all_proxy": ""}
    (tmp_path / "keras").mkdir()
    t0 = time.perf_counter()
    r = run_cli("build", tiny_data, "--out", tmp_path / "run", "--alpha", "0.35", "--image-size", "96",
                env=env, block_tf=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert_user_error(r, "could not download the ImageNet weights", "cannot be reached", "--weights")
    assert "None --" not in r.stderr and "TensorFlow" not in r.stderr
    assert seconds < 10, seconds
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ cosmetics


def test_predict_joins_labels_with_commas_unambiguously_and_info_says_mb(test_models, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("tench, Tinca tinca\ngoldfish, Carassius auratus\ngreat white shark, white shark\n")
    model = test_models / "edgetl_float32.tflite"
    r = run_cli("predict", model, _photo(tmp_path), "--labels", labels, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    row = r.stdout.splitlines()[-1]
    nxt = row.split("  ")[-1].strip()
    parts = nxt.split(" | ")
    assert len(parts) == 2 and all(p.rsplit(" ", 1)[0] in labels.read_text() for p in parts), row
    r = run_cli("info", model, timeout=120)
    assert r.returncode == 0 and " MB)" in r.stdout.splitlines()[0] and "KB" not in r.stdout


def test_runners_up_at_zero_are_left_out_and_imagenet_labels_stay_whole(shared):
    from conftest import REF_PTQ

    r = run_cli("predict", REF_PTQ, shared / "images" / "grace_hopper.bmp", "--top-k", "10", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "military uniform" in r.stdout and "0.000" not in r.stdout.splitlines()[-1], r.stdout
    r = run_cli("info", REF_PTQ, timeout=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("labels"))
    assert " | tench, Tinca tinca | " in line, line


def test_camera_json_has_one_precision_and_no_camera_is_one_clean_error(test_models, tmp_path):
    import json

    import cv2
    import numpy as np

    from conftest import assert_user_error

    model = test_models / "edgetl_uint8.tflite"
    video = tmp_path / "v.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 72))
    if not vw.isOpened():
        __import__("pytest").skip("this OpenCV build cannot write a video file")
    for i in range(3):
        vw.write(np.full((72, 96, 3), (40 * i, 80, 200), np.uint8))
    vw.release()
    r = run_cli("camera", model, "--source", video, "--headless", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines():
        d = json.loads(line)
        assert d["score"] == d["top_k"][0]["score"]  # one rounding (6 decimals) for every score
    r = run_cli("camera", model, "--source", "7", "--headless", timeout=120)
    assert_user_error(r, "cannot open camera 7")
    assert "[ WARN" not in r.stderr and "WARN:" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("error: ")


_EXIT_SCRIPT = r"""
import atexit, sys
if sys.argv[1] == "tf":
    import tensorflow  # noqa: F401 - loaded, as by every command that trains or converts
del sys.argv[1]


class Teardown:
    def __del__(self):  # runs when the interpreter tears its modules down
        sys.stderr.write("teardown ran\n")


keep = Teardown()
atexit.register(lambda: print("exit handler ran", flush=True))
sys.stdout.write("buffered line\n")
from toolchain.cli import main
main()
"""


@requires_tf
@pytest.mark.parametrize("args, code, where, text", [(["--help"], 0, "stdout", "Usage"),
                                                     (["quantize", "no-such-run"], 2, "stderr", "error:")])
def test_the_command_skips_tensorflows_teardown_but_not_its_output(tmp_path, args, code, where, text):
    """`edgetl` itself (main() without argv), with TensorFlow loaded, ends without the interpreter's teardown
    (0.8 to 1.2 s of every build): its exit code, its output (buffered too) and the exit handlers are kept.
    Without TensorFlow the process ends as any Python program (the control: the teardown runs)."""
    runs = {}
    for loaded in ("tf", "no-tf"):
        r = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, loaded, *args], capture_output=True, text=True,
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300, check=False)
        runs[loaded] = r
        assert r.returncode == code, r.stderr[-2000:]
        assert text in getattr(r, where) and "buffered line" in r.stdout and "exit handler ran" in r.stdout
    assert "teardown ran" not in runs["tf"].stderr
    assert "teardown ran" in runs["no-tf"].stderr
