"""The report (time that stays true, one size unit, plots whose labels are not cut, curves that say which
epoch was kept) and `edgetl clean` (deletes only edgetl's regenerable files; later commands still work)."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import requires_tf, run_cli, write_dataset

MODES = ("int8", "float16", "dynamic", "float32")


def _matplotlib():
    return pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (pip install '.[train]')")


# ------------------------------------------------------------------ plots


def _tradeoff_rep():
    """Four models as they typically fall: the largest one is the least accurate here, so its label is
    at the bottom-right corner, where a label drawn below its point would cross the frame."""
    return {"tflite": {m: {"tflite_accuracy": acc, "keras_accuracy": 0.91, "n": 45, "size_bytes": size,
                           "latency_ms": {"1": lat}}
                       for m, acc, size, lat in (("int8", 0.90, 600_000, 2.0), ("float16", 0.89, 1_200_000, 3.0),
                                                 ("dynamic", 0.88, 1_800_000, 4.0),
                                                 ("float32", 0.87, 2_400_000, 5.0))}}


def _inside(inner, outer, tol=0.5):
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def _border_is_blank(png, width=3):
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3]
    edges = [img[:width], img[-width:], img[:, :width], img[:, -width:]]
    return all(float(e.min()) > 0.98 for e in edges)  # white: nothing cut at the image's edge


def test_tradeoff_labels_stay_inside_their_axes_and_clear_of_the_legend():
    _matplotlib()
    from toolchain.core import report

    fig = report.tradeoff_figure(_tradeoff_rep())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_text() in MODES]
        assert sorted(t.get_text() for t in labels) == sorted(MODES)
        for t in labels:
            assert _inside(t.get_window_extent(renderer), frame), f"label {t.get_text()!r} crosses the frame"
        legend = ax.get_legend().get_window_extent(renderer)
        for t in labels:
            assert not legend.overlaps(t.get_window_extent(renderer)), f"legend hides {t.get_text()!r}"
        for xy in [c.get_offsets()[0] for c in ax.collections]:
            px, py = ax.transData.transform(xy)
            assert not legend.contains(px, py), "legend hides a model's point"


def test_plots_with_long_class_names_are_not_clipped(tmp_path):
    _matplotlib()
    from toolchain.core import report

    classes = [f"a_really_long_class_name_number_{i}_with_a_suffix" for i in range(5)]
    cm = np.arange(25).reshape(5, 5) % 7
    report.plot_confusion(tmp_path / "confusion.png", cm, classes, "TFLite dynamic (test split)")
    report.plot_tradeoff(tmp_path, _tradeoff_rep())
    report.plot_curves(tmp_path, _curves_rep(stopped=True, discarded=True))
    for png in (tmp_path / "confusion.png", tmp_path / "plots" / "size_accuracy_latency.png",
                tmp_path / "plots" / "training_curves.png"):
        assert _border_is_blank(png), f"{png.name}: something is cut at the image's edge"


def _curves_rep(stopped: bool, discarded: bool):
    h1 = {"loss": [1.0, 0.8, 0.7, 0.72, 0.75], "val_loss": [1.1, 0.9, 0.8, 0.85, 0.9],
          "accuracy": [0.5, 0.6, 0.7, 0.7, 0.72], "val_accuracy": [0.4, 0.5, 0.6, 0.6, 0.6]}
    h2 = {"loss": [0.6, 0.5], "val_loss": [0.78, 0.95], "accuracy": [0.8, 0.85], "val_accuracy": [0.62, 0.58]}
    return {"history": {"feature_extraction": h1, "fine_tune": h2},
            "config": {"epochs": 8 if stopped else 5, "patience": 2, "fine_tune_epochs": 2, "fine_tune_patience": 2},
            "stages": {"feature_extraction": {"epochs": 5, "kept_epoch": 3, "stopped_early": stopped},
                       "fine_tune": {"epochs": 2, "kept": "feature_extraction" if discarded else "fine_tune",
                                     "kept_epoch": 1, "stopped_early": False}}}


def _texts(fig):
    import matplotlib.text

    return " | ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text())


def test_curves_mark_the_kept_epoch_early_stopping_and_a_discarded_stage_2():
    _matplotlib()
    from toolchain.core import report

    text = _texts(report.curves_figure(_curves_rep(stopped=True, discarded=True)))
    assert "kept weights (epoch 3)" in text and "early stopping" in text
    assert "stage 2 (shaded): discarded" in text
    assert "stage 1: 5 of 8 epochs (early stopping); weights of epoch 3 kept (lowest val loss)" in text
    assert "stage-1 weights are kept" in text
    # stage 2 kept: the kept epoch is stage 2's first (epoch 6 overall); no early stopping said
    text = _texts(report.curves_figure(_curves_rep(stopped=False, discarded=False)))
    assert "kept weights (epoch 6)" in text and "early stopping" not in text and "discarded" not in text
    assert "weights of stage-2 epoch 1 kept" in text


def test_kept_epoch_of_an_older_report_comes_from_the_config():
    from toolchain.core import report

    rep = _curves_rep(stopped=True, discarded=True)
    for sec in rep["stages"].values():
        del sec["kept_epoch"], sec["stopped_early"]
    o = report.training_outcome(rep)
    assert o["feature_extraction"]["kept_epoch"] == 3 and o["feature_extraction"]["stopped_early"]  # argmin val_loss
    assert o["fine_tune"]["discarded"]
    rep["config"]["patience"] = 0  # no early stopping: the last epoch's weights
    assert report.training_outcome(rep)["feature_extraction"]["kept_epoch"] == 5


# ------------------------------------------------------------------ a real run: time, sizes, clean


@requires_tf
def test_kept_epoch_recorded_by_training_matches_early_stopping(tiny_run):
    """What training recorded agrees with Keras' EarlyStopping (restore_best_weights): the epoch of
    lowest val loss, and 'stopped early' exactly when fewer epochs ran than asked."""
    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    fe, hist = rep["stages"]["feature_extraction"], rep["history"]["feature_extraction"]
    assert fe["kept_epoch"] == int(np.argmin(hist["val_loss"])) + 1
    assert fe["stopped_early"] == (len(hist["loss"]) < rep["config"]["epochs"])
    ft = rep["stages"]["fine_tune"]
    assert ft["kept_epoch"] >= 1 and ft["stopped_early"] is False  # one epoch asked, one ran
    md = (run / "report.md").read_text()
    assert f"weights of epoch {fe['kept_epoch']} kept" in md


@requires_tf
def test_report_md_has_one_size_unit(tiny_run):
    run, proc = tiny_run
    rep = json.loads((run / "report.json").read_text())
    md = (run / "report.md").read_text()
    assert not re.search(r"\b(KB|KiB|kB|bytes)\b", md)
    assert "| size (MB) |" in md
    for mode in MODES:
        assert f"| {mode} | {rep['tflite'][mode]['size_bytes'] / 1e6:.2f} |" in md
    assert re.search(r"int8 +\d+\.\d\d MB", proc.stderr)  # the summary printed at the end, too


@requires_tf
def test_time_stays_true_and_clean_then_quantize_still_works(tiny_run, tmp_path):
    """report.json's timing gains each later command's time (total = sum of the steps, report.md agrees);
    `clean` deletes only the regenerable files, and a later quantize decodes the photos again."""
    src, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    t0 = json.loads((run / "report.json").read_text())["timing"]
    # the build's own steps (other tests may have added a quantize to the shared run since)
    assert [s["step"] for s in t0["steps"][:3]] == ["train", "finetune", "quantize"]
    assert t0["steps"][2]["modes"] == list(MODES)
    assert t0["total_seconds"] == pytest.approx(sum(s["seconds"] for s in t0["steps"]), abs=0.11)

    r = run_cli("quantize", run, "--mode", "float32", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    t1 = json.loads((run / "report.json").read_text())["timing"]
    n = len(t0["steps"])
    assert t1["steps"][:n] == t0["steps"] and len(t1["steps"]) == n + 1 and t1["steps"][n]["step"] == "quantize"
    assert t1["steps"][n]["modes"] == ["float32"] and t1["steps"][n]["seconds"] > 0
    assert t1["total_seconds"] == pytest.approx(t0["total_seconds"] + t1["steps"][n]["seconds"], abs=0.11)
    md = (run / "report.md").read_text()
    assert f"| **total** | **{t1['total_seconds']:.1f}** |" in md and "| quantize (float32) |" in md

    # the quantize decoded the photos again (the build had deleted its cache); now clean it all
    assert (run / "cache" / "images.npy").is_file() and (run / "stage1.keras").is_file()
    assert (run / "logs" / "convert_float32.log").is_file()
    (run / "logs" / "my-notes.txt").write_text("mine")  # not edgetl's: stays, with its folder
    keep = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()
            and p.relative_to(run).parts[0] not in ("cache", "logs") and p.name not in ("stage1.keras", ".edgetl-run")}
    r = run_cli("clean", run, block_tf=True)  # clean never needs TensorFlow
    assert r.returncode == 0, r.stderr
    assert "deleted" in r.stdout and re.search(r"freed \d+\.\d\d MB", r.stdout)
    assert not (run / "cache").exists() and not (run / "stage1.keras").exists(), (r.stderr, list((run / "cache").rglob("*")))
    assert [p.name for p in (run / "logs").iterdir()] == ["my-notes.txt"]
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()
            and p.relative_to(run).parts[0] != "logs" and p.name != ".edgetl-run"} == keep  # every result untouched
    listed = json.loads((run / ".edgetl-run").read_text())["files"]  # the manifest says what is left
    assert "stage1.keras" not in listed and not any(k.startswith("cache/") for k in listed) and "model.keras" in listed

    r = run_cli("quantize", run, "--mode", "float16", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "re-decoding photos" in r.stderr and (run / "cache" / "images.npy").is_file()
    rep = json.loads((run / "report.json").read_text())
    assert rep["tflite"]["float16"]["passed"] and rep["timing"]["steps"][-1]["modes"] == ["float16"]


# ------------------------------------------------------------------ clean: what it refuses and keeps


@pytest.fixture
def made_run(tmp_path):
    """A run folder as `edgetl train` leaves it before training: split.json, cache/, report.json (no
    TensorFlow needed), plus a stage1.keras and a converter log."""
    from toolchain.cfg import config
    from toolchain.core import data
    from toolchain.rundir import runfolder

    photos = write_dataset(tmp_path / "photos", per_class=4)
    run = tmp_path / "run"
    data.build(photos, run, config.resolve(None, image_size=96, split=[0.5, 0.25, 0.25]))
    runfolder.write_json(run / "report.json", {"status": "trained"})
    runfolder.write_marker(run, "trained")  # what makes it an edgetl run
    (run / "stage1.keras").write_bytes(b"k" * 1000)
    (run / "logs").mkdir()
    (run / "logs" / "convert_int8.log").write_text("converter chatter\n")
    return run, photos


def test_clean_refuses_a_folder_that_is_not_a_run(tmp_path, made_run):
    from toolchain.rundir import runfolder

    run, photos = made_run
    before = sorted(p for p in photos.rglob("*"))
    r = run_cli("clean", photos, block_tf=True)
    assert r.returncode == 2 and "not an edgetl run folder" in r.stderr and "hint:" in r.stderr
    assert sorted(p for p in photos.rglob("*")) == before
    (run / ".edgetl-run").unlink()  # without edgetl's marker, split.json and report.json are not enough
    r = run_cli("clean", run, block_tf=True)
    assert r.returncode == 2 and (run / "cache" / "images.npy").is_file()
    runfolder.write_marker(run, "trained")
    r = run_cli("clean", tmp_path / "nothere", block_tf=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_clean_dry_run_and_what_is_not_edgetls(made_run, tmp_path):
    run, _ = made_run
    r = run_cli("clean", run, "--dry-run", block_tf=True)
    assert r.returncode == 0 and "would free" in r.stdout
    assert (run / "cache" / "images.npy").is_file() and (run / "stage1.keras").is_file()
    # a file of the user's inside cache/, and a symlinked logs/ pointing outside: never deleted
    (run / "cache" / "mine.jpg").write_bytes(b"not edgetl's")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "convert_int8.log").write_text("someone else's log")
    shutil.rmtree(run / "logs")
    os.symlink(outside, run / "logs")
    r = run_cli("clean", run, block_tf=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (run / "cache").iterdir()) == ["mine.jpg"]
    assert (outside / "convert_int8.log").read_text() == "someone else's log" and (run / "logs").is_symlink()
    assert not (run / "stage1.keras").exists() and "mine.jpg" in r.stderr


def test_clean_keeps_the_cache_when_the_photos_are_gone(made_run):
    run, photos = made_run
    shutil.rmtree(photos)
    r = run_cli("clean", run, block_tf=True)
    assert r.returncode == 0 and "only copy" in r.stderr and "--force" in r.stderr
    assert (run / "cache" / "images.npy").is_file() and not (run / "stage1.keras").exists()
    r = run_cli("clean", run, "--force", block_tf=True)
    assert r.returncode == 0 and not (run / "cache").exists()
