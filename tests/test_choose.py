"""The fastest model of a run that passed parity, chosen on this device: `edgetl bench RUN`, `predict RUN`,
`camera RUN`, `Classifier.from_run`. Real models of a real run, real interpreters, a real video."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import requires_tf, run_cli

from edge_runtime import Classifier, choose

pytestmark = requires_tf


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _fail_gate(run, mode):
    rep = json.loads((run / "report.json").read_text())
    rep["tflite"][mode]["passed"] = False
    rep["tflite"][mode]["reason"] = "top-1 agreement 0.5 < 0.97"
    (run / "report.json").write_text(json.dumps(rep))


def test_bench_run_ranks_passing_models_and_remembers_the_choice(run_copy, cache_dir):
    _fail_gate(run_copy, "dynamic")
    env = {"EDGETL_CACHE_DIR": str(cache_dir)}
    r = run_cli("bench", run_copy, "--runs", "15", "--warmup", "2", "--threads", "1,2", "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    ch = d["choice"]
    ranked = ch["ranking"]
    assert {x["mode"] for x in ranked} == {"int8", "float16", "float32"}  # dynamic failed its gate: not ranked
    assert len(ranked) == 3 * 2 and [x["p50_ms"] for x in ranked] == sorted(x["p50_ms"] for x in ranked)
    assert (ch["mode"], ch["threads"]) == (ranked[0]["mode"], ranked[0]["threads"])  # the fastest is the choice
    assert ch["skipped"] == [{"mode": "dynamic", "reason": "top-1 agreement 0.5 < 0.97"}]
    assert ch["device"]["cores"] >= 1 and ch["device"]["backend"]
    cached = json.loads((cache_dir / "choices.json").read_text())["choices"]
    assert len(cached) == 1 and next(iter(cached.values()))["mode"] == ch["mode"]
    # the text form says the same
    r = run_cli("bench", run_copy, "--runs", "10", "--warmup", "1", "--threads", "1", env=env, timeout=600)
    assert r.returncode == 0 and "choice   model_" in r.stdout and "not ranked: dynamic" in r.stdout
    # predict RUN uses the remembered choice without measuring again, and says which model it used
    from conftest import write_dataset

    photos = write_dataset(run_copy.parent / "p", per_class=1)
    r = run_cli("predict", run_copy, photos, "--json", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "measuring" not in r.stderr and "chosen earlier on this device" in r.stderr
    assert f"using model_{ch['mode']}.tflite at {ch['threads']} thread(s)" in r.stderr
    assert len(r.stdout.splitlines()) == 3 and all("label" in json.loads(x) for x in r.stdout.splitlines())


def test_choice_is_measured_once_then_cached_and_remeasured_when_a_model_changes(run_copy, cache_dir):
    a = choose.choose(run_copy, threads=[1], runs=5, warmup=1, classifier_class=Classifier)
    assert not a.cached and a.mode in ("int8", "float16", "dynamic", "float32")
    b = choose.choose(run_copy, threads=[1], runs=5, warmup=1, classifier_class=Classifier)
    assert b.cached and (b.mode, b.threads, b.p50_ms) == (a.mode, a.threads, a.p50_ms)
    # a changed model file (a new conversion) is a new key: measured again
    p = run_copy / "model_float32.tflite"
    p.write_bytes(p.read_bytes() + b"\0")
    c = choose.choose(run_copy, threads=[1], runs=5, warmup=1, classifier_class=Classifier)
    assert not c.cached
    # a moved run still finds its remembered choice, pointing into the new place
    moved = run_copy.parent / "moved"
    run_copy.rename(moved)
    d = choose.choose(moved, threads=[1], runs=5, warmup=1, classifier_class=Classifier)
    assert d.cached and d.path.startswith(str(moved))


def test_classifier_from_run_and_mode(run_copy, cache_dir):
    ch = choose.choose(run_copy, runs=5, warmup=1, classifier_class=Classifier)
    clf = Classifier.from_run(run_copy)
    assert clf.model.path.name == f"model_{ch.mode}.tflite" and clf.model.num_threads == ch.threads
    f16 = Classifier.from_run(run_copy, mode="float16", num_threads=1)
    assert f16.model.path.name == "model_float16.tflite" and f16.model.num_threads == 1
    img = np.full((60, 80, 3), (200, 40, 40), np.uint8)
    assert f16.classify(img)[0].label in ("blue", "green", "red")
    from edge_runtime.errors import EdgetlError

    with pytest.raises(EdgetlError, match="has no int4 model"):
        Classifier.from_run(run_copy, mode="int4")


def test_no_passing_model_and_forced_mode(run_copy, cache_dir):
    for m in ("int8", "float16", "dynamic", "float32"):
        _fail_gate(run_copy, m)
    env = {"EDGETL_CACHE_DIR": str(cache_dir)}
    from conftest import write_dataset

    photos = write_dataset(run_copy.parent / "p", per_class=1)
    r = run_cli("predict", run_copy, photos, env=env, timeout=300)
    assert r.returncode == 2 and "no model of" in r.stderr and "--mode" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("predict", run_copy, photos, "--mode", "int8", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "did not pass its parity gate" in r.stderr
    r = run_cli("predict", run_copy / "model_int8.tflite", photos, "--mode", "int8", env=env, timeout=300)
    assert r.returncode == 2 and "--mode chooses among a run's models" in r.stderr


def test_camera_on_a_run_says_which_model(run_copy, cache_dir, tmp_path):
    import cv2

    from conftest import colour_image

    rng = np.random.default_rng(0)
    frames = [cv2.cvtColor(colour_image("green", rng, (120, 160)), cv2.COLOR_RGB2BGR) for _ in range(4)]
    vw = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    if not vw.isOpened():
        pytest.skip("this OpenCV cannot write a video")
    for f in frames:
        vw.write(f)
    vw.release()
    r = run_cli("camera", run_copy, "--source", tmp_path / "v.avi", "--headless", env={"EDGETL_CACHE_DIR": str(cache_dir)},
                timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "measuring the models of" in r.stderr and "using model_" in r.stderr
    assert len(r.stdout.splitlines()) == 4
