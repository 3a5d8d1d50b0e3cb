"""Know your data (toolchain/core/diagnose.py): one real build of photos with two mislabelled ones, a
re-encoded copy and a folder of other things (--unknown), then what report.json, report.md, the models'
metadata and `edgetl predict` say about them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_TF, TINY_FLAGS, TINY_GATES, assert_user_error, colour_image, run_cli, write_dataset


def test_bad_unknown_folder_is_refused_before_tensorflow(tmp_path):
    data = write_dataset(tmp_path / "photos", per_class=4)
    (tmp_path / "empty").mkdir()
    for bad, phrase in ((tmp_path / "nothere", "not found"), (data / "red", "overlaps the data folder"),
                        (tmp_path / "empty", "holds no photos")):
        r = run_cli("build", data, "--unknown", bad, "--out", tmp_path / "run", block_tf=True, timeout=60)
        assert_user_error(r, phrase)
    write_dataset(data, classes=("Unknown",), per_class=2)  # a class of the data folder named like the label
    write_dataset(tmp_path / "o", classes=("x",), per_class=2)
    r = run_cli("train", data, "--unknown", tmp_path / "o", "--out", tmp_path / "run", block_tf=True, timeout=60)
    assert_user_error(r, "already has a class folder named 'unknown'")
    assert not (tmp_path / "run").exists()


def _photos(root: Path) -> tuple:
    from PIL import Image

    data = write_dataset(root / "photos", per_class=15)
    for i in range(2):  # red photos filed as blue
        Image.fromarray(colour_image("red", np.random.default_rng([99, i]))).save(data / "blue" / f"wrong_{i}.jpg")
    Image.open(data / "green" / "green_00.jpg").save(data / "green" / "green_00_copy.png")  # re-encoded copy
    other = root / "other"
    other.mkdir()
    for i in range(20):  # grey scenes: none of the classes
        rng = np.random.default_rng([7, i])
        px = np.clip(rng.integers(60, 200) + rng.normal(0, 25, (72, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(other / f"other_{i:02d}.jpg")
    return data, other


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    if not HAVE_TF:
        pytest.skip("needs TensorFlow (pip install '.[train]')")
    root = tmp_path_factory.mktemp("knowdata")
    data, other = _photos(root)
    run = root / "run"
    r = run_cli("build", data, "--out", run, "--unknown", other, *TINY_FLAGS, "--quantize", "float32",
                *TINY_GATES)
    assert r.returncode == 0, r.stderr[-3000:]
    (root / "build.stderr").write_text(r.stderr)  # what the build printed (the split tables)
    return run, data, other, json.loads((run / "report.json").read_text())


def _last_split_table(stderr: str) -> dict:
    """The per-split totals of the last split table a build printed: {split: photos}."""
    lines = [x.split() for x in stderr.splitlines()]
    head = max(i for i, x in enumerate(lines) if x[:1] == ["class"] and x[-1:] == ["all"])
    total = next(x for x in lines[head:] if x[:1] == ["total"])
    return dict(zip(lines[head][1:-1], map(int, total[1:-1])))


def test_near_duplicates_are_regrouped_into_one_split(known):
    run, _, _, rep = known
    pairs = rep["data"]["near_duplicates"]
    pair = next(p for p in pairs if {p["a"], p["b"]} == {"green/green_00.jpg", "green/green_00_copy.png"})
    assert pair["similarity"] > 0.99
    split = json.loads((run / "split.json").read_text())
    where = {rel: s for s, items in split["files"].items() for rel, _ in items}
    assert where["green/green_00.jpg"] == where["green/green_00_copy.png"]  # a split edgetl made: regrouped
    assert pair["splits"] == [where["green/green_00.jpg"]] * 2
    assert len(rep["data"]["regrouped"]) == sum(1 for p in pairs if p.get("moved"))
    assert "moved between splits" in (run / "report.md").read_text()
    # the split table the build printed last is the recorded split, after the regrouping
    assert rep["data"]["regrouped"], "this dataset's copy was expected to be regrouped"
    printed = _last_split_table((run.parent / "build.stderr").read_text())
    assert printed == {s: len(items) for s, items in split["files"].items()}


FORKS: list = []  # one entry per os.fork of this process (multiprocessing's included)
os.register_at_fork(before=lambda: FORKS.append(1))


def test_confident_learning_finds_every_flipped_label():
    """The method on features of known structure: three clusters (non-negative, as pooled ReLU features
    are), three labels flipped. Every flipped photo is found, with its true class suggested, and nothing
    else, whatever the fold seed."""
    pytest.importorskip("cleanlab")
    pytest.importorskip("sklearn")
    from toolchain.core import diagnose

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 64)) * 3
    feats = np.abs(np.concatenate([centres[c] + rng.normal(0, 1, (30, 64)) for c in range(3)])).astype(np.float32)
    truth = np.repeat(np.arange(3), 30)
    given = truth.copy()
    given[[5, 40, 77]] = [1, 2, 0]
    for seed in (0, 7, 42):
        forks = len(FORKS)
        found, note = diagnose.label_issues(feats, given, 3, seed)
        # no process is forked: it runs inside the build, beside TensorFlow's threads (see label_issues)
        assert len(FORKS) == forks, "the label check forked a process"
        assert sorted((i, s) for i, s, _ in found) == [(5, 0), (40, 1), (77, 2)], (seed, found)
        assert all(0.0 <= score < 0.5 for _, _, score in found) and "cleanlab" in note
    assert diagnose.label_issues(feats, truth, 3, 0)[0] == []  # clean labels: no issue


def test_out_of_fold_probabilities_are_averaged_over_several_fold_partitions():
    """Repeated k-fold: the out-of-fold probabilities average REPEATS partitions, so which fold a photo
    happened to be dealt into matters less: across fold seeds they vary about 1/sqrt(REPEATS) as much as
    with one partition (the label check then finds the same photos whatever the seed; measured on flowers10
    in benchmarks/bench_knowdata.py --part flips). Each row is still a probability distribution."""
    pytest.importorskip("sklearn")
    from toolchain.core import diagnose

    assert diagnose.REPEATS >= 2
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 1, (3, 32))
    feats = np.abs(np.concatenate([centres[c] + rng.normal(0, 1.5, (40, 32)) for c in range(3)])).astype(np.float32)
    y = np.repeat(np.arange(3), 40)
    spread = {}
    for repeats in (1, diagnose.REPEATS):
        p = np.stack([diagnose.out_of_fold(feats, y, 3, seed, repeats=repeats) for seed in range(8)])
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)  # float32 features
        spread[repeats] = float(p.std(0).mean())
    assert spread[diagnose.REPEATS] < 0.8 * spread[1], spread
    # the default is the averaged one
    np.testing.assert_array_equal(diagnose.out_of_fold(feats, y, 3, 4),
                                  diagnose.out_of_fold(feats, y, 3, 4, repeats=diagnose.REPEATS))


def test_out_of_fold_heads_fitted_side_by_side_give_the_sequential_figures():
    """out_of_fold fits its heads two at a time (threads): the probabilities are exactly those of fitting
    them one after another, fold by fold, as written out here."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from toolchain.core import diagnose

    rng = np.random.default_rng(9)
    feats = np.abs(rng.normal(0, 1, (90, 24))).astype(np.float32)
    y = np.repeat(np.arange(3), 30)
    x = diagnose._unit(feats) * 30.0
    want = np.zeros((90, 3))
    for r in range(diagnose.REPEATS):
        fold = diagnose._deal(y, 3, diagnose.FOLDS, np.random.default_rng([6, r]))
        for k in range(diagnose.FOLDS):
            tr, te = fold != k, fold == k
            head = LogisticRegression(C=0.3, max_iter=100).fit(x[tr], y[tr])
            want[np.ix_(te, head.classes_)] += head.predict_proba(x[te])
    np.testing.assert_array_equal(diagnose.out_of_fold(feats, y, 3, 6), want / diagnose.REPEATS)


def test_label_issues_reach_the_report(known):
    """In a real build (a random-weight base at 96 px, whose features separate colours only roughly):
    the photos filed in the wrong folder are listed (at least one of the two: such weak features do not
    find both on every machine), each entry with its suggestion and the command to move it; nothing is
    moved."""
    pytest.importorskip("cleanlab")
    _, data, _, rep = known
    issues = {e["path"]: e for e in rep["data"]["label_issues"]}
    wrong = [f"blue/wrong_{i}.jpg" for i in range(2) if f"blue/wrong_{i}.jpg" in issues]
    assert wrong, sorted(issues)
    for rel in wrong:
        e = issues[rel]
        assert (e["given"], e["suggested"]) == ("blue", "red")
        assert e["command"] == f"mv {data / rel} {data / 'red'}/"
    assert all({"path", "given", "suggested", "score", "command"} <= set(e) for e in issues.values())
    assert "cleanlab" in rep["data"]["label_issues_method"]
    assert (data / "blue" / "wrong_0.jpg").is_file() and (data / "blue" / "wrong_1.jpg").is_file()  # not moved


def test_misclassified_lists_every_wrong_answer_with_thumbnails(known):
    from edge_runtime import Classifier

    run, data, _, rep = known
    mis = {e["path"]: e for e in rep["misclassified"]}
    split = json.loads((run / "split.json").read_text())
    classes = split["classes"]
    assert classes[-1] == "unknown"
    clf = Classifier(run / "model_float32.tflite", warn=False)
    checked = 0
    for s in ("test", "val"):
        for rel, lab in split["files"][s]:
            got = clf.classify_path(Path(data, rel), top_k=1)[0].label  # an absolute rel (unknown/) stays absolute
            if got != classes[lab]:
                assert "float32" in mis[rel]["models"], rel
                assert mis[rel]["truth"] == classes[lab]
            checked += 1
    assert checked == len(split["files"]["test"]) + len(split["files"]["val"])
    order = [e["split"] for e in rep["misclassified"]]
    assert order == sorted(order, key=["test", "val", "train"].index)  # test split first
    md = (run / "report.md").read_text()
    assert rep["misclassified"], "the mislabelled photos are answered wrong at least"
    for e in list(mis.values()) + rep["data"]["label_issues"]:
        if e.get("thumbnail"):
            assert (run / e["thumbnail"]).is_file() and f"]({e['thumbnail']})" in md
    assert "## Misclassified photos" in md and "→" in md


def test_unknown_photos_are_answered_unknown(known):
    from edge_runtime import metadata

    run, _, other, rep = known
    u = rep["unknown"]
    assert u["source"] == "calibrated" and u["val_unknown"] >= 1
    rows = u["models"]["float32"]
    assert rows["best class"]["false_accept_rate"] == 1.0  # without the unknown class every such photo is a class
    assert rows["unknown class"]["false_accept_rate"] <= 0.5
    r = run_cli("info", run, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["min_score"] == u["min_score"], r.stderr[-2000:]
    if u["min_score"]:  # the threshold is in both metadata forms, where MediaPipe and the Task Library read it
        assert f"below {u['min_score']:.6g} (calibrated)" in run_cli("info", run).stdout
        std = metadata.read_standard(run / "model_float32.tflite")
        assert std["outputs"][0]["score_threshold"] == pytest.approx(u["min_score"], abs=1e-6)
        assert metadata.read(run / "model_float32.tflite")["min_score"] == pytest.approx(u["min_score"])
    r = run_cli("predict", run, other, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    labels = [json.loads(line)["label"] for line in r.stdout.splitlines()]
    assert len(labels) == 20 and labels.count("unknown") >= 16
    assert "## Unknown photos" in (run / "report.md").read_text()
    from PIL import Image
    from test_camera import write_video

    frames = [np.ascontiguousarray(np.asarray(Image.open(p))[:, :, ::-1]) for p in sorted(other.iterdir())[:8]]
    clip = write_video(run.parent / "other.avi", frames)
    r = run_cli("camera", run, "--source", clip, "--headless", "--max-frames", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    said = [json.loads(line)["label"] for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(said) == 8 and said.count("unknown") >= 6  # the JSON lines (and the overlay) say unknown


def test_min_score_by_hand_is_written_and_applied(known, tmp_path):
    from edge_runtime import Classifier, metadata

    run, data, _, _ = known
    out = tmp_path / "models"
    r = run_cli("quantize", run, "--quantize", "float32", "--min-score", "0.97", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    model = out / "model_float32.tflite"
    assert metadata.read_standard(model)["outputs"][0]["score_threshold"] == pytest.approx(0.97)
    clf = Classifier(model, warn=False)
    assert clf.min_score == pytest.approx(0.97) and "edgetl metadata" in clf.sources["min_score"]
    r = run_cli("info", model)  # both forms of the threshold are shown
    assert r.returncode == 0, r.stderr[-2000:]
    assert "threshold 0.97 (ScoreThresholdingOptions" in r.stdout and "below 0.97 (min_score)" in r.stdout
    photos = sorted((data / "red").iterdir())[:6]
    plain = Classifier(model, warn=False, min_score=0)
    for p in photos:
        best = plain.classify_path(p, top_k=1)[0]
        got = clf.classify_path(p, top_k=1)[0]
        assert got.label == (best.label if best.score >= np.float32(0.97) else "unknown")
    r = run_cli("build", data, "--min-score", "1.5", "--out", tmp_path / "x")
    assert r.returncode == 2 and "min-score 1.5" in r.stderr
