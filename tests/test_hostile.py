"""The bad-input and fault corpus: every case a hostile or unlucky user hit, run as a real `edgetl`
process under a timeout, with real files, a real `kill -9`, a real lock holder and, where the machine
allows it, a real full (and a real read-only) filesystem.

For every case: the documented exit code, exactly one `error:` and one `hint:` line for exit 2, no
traceback, no hang, and nothing outside the run folder touched (the data folder and every other file
are compared byte for byte before and after).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (FAST, FAST_TRAIN, assert_user_error, leftovers, requires_tf, run_cli, snapshot,  # noqa: F401
                      write_dataset)

# ------------------------------------------------------------------ 1. --force and the data folder


def test_force_never_clears_a_photo_folder_or_a_lookalike(tmp_path, tiny_data):
    """No TensorFlow needed to refuse (it is blocked here): the photo folder with a report.json, the
    run inside or above the data folder, and a folder that merely holds report.json/split.json."""
    p = tmp_path / "p"
    shutil.copytree(tiny_data, p)
    (p / "report.json").write_text("{}")
    (p / "split.json").write_text("{}")
    look = tmp_path / "lookalike"
    look.mkdir()
    for name in ("report.json", "split.json", "model.keras"):
        (look / name).write_text("{}")
    before = snapshot(tmp_path)
    data_before = snapshot(tiny_data)
    cases = [
        (["build", p, "--out", p, "--force"], "is the data folder itself"),
        (["build", p, "--out", p / "run", "--force"], "inside the data folder"),
        (["train", p, "--out", tmp_path, "--force"], "contains the data folder"),
        (["build", tiny_data, "--out", look, "--force"], "is not an edgetl run folder"),
        (["train", tiny_data, "--out", look, "--force"], "is not an edgetl run folder"),
    ]
    for args, phrase in cases:
        r = run_cli(*args, *(FAST if args[0] == "build" else FAST_TRAIN), block_tf=True, timeout=60)
        assert_user_error(r, phrase)
    assert snapshot(tmp_path) == before and snapshot(tiny_data) == data_before


@requires_tf
def test_failed_build_keeps_the_old_run(good_run, tmp_path):
    bad = tmp_path / "onlybad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        (bad / c / "1.jpg").write_text("not a photo")
    before = snapshot(tmp_path)
    r = run_cli("build", bad, "--out", good_run, "--force", *FAST, timeout=300)
    assert_user_error(r, "no readable photo")
    assert snapshot(tmp_path) == before  # the old run whole, and nothing else anywhere
    assert leftovers(good_run) == []


@requires_tf
def test_second_command_is_refused_and_kill_9_keeps_the_old_run(good_run, tmp_path, tiny_data):
    """A long build holds the run: a second build exits 2 naming its pid. Then kill -9 it mid-training:
    the old run is byte for byte the same, and the next build neither trips on what was left nor
    leaves anything behind."""
    (tmp_path / "slow.toml").write_text("epochs = 500\npatience = 0\n")
    before = snapshot(tmp_path, skip={tmp_path / "slow.toml"})
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
    a = subprocess.Popen([sys.executable, "-c", code, "build", str(tiny_data), "--out", str(good_run), "--force",
                          "--config", str(tmp_path / "slow.toml"), *FAST[:4], "--weights", "none", "--batch-size",
                          "8", "--fine-tune-epochs", "0", "--quantize", "float32"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        staged = None
        deadline = time.time() + 240
        while time.time() < deadline and a.poll() is None:
            staged = [p for p in good_run.parent.glob(".good.edgetl-new-*") if (p / "split.json").is_file()]
            if staged:
                break
            time.sleep(0.5)
        assert staged and a.poll() is None, "the build did not reach training"
        time.sleep(2)  # well into stage 1
        r = run_cli("build", tiny_data, "--out", good_run, "--force", *FAST, timeout=120)
        assert_user_error(r, "in use by another edgetl command", f"pid {a.pid}")
        r = run_cli("quantize", good_run, "--quantize", "float32", "--force", timeout=120)
        assert_user_error(r, "in use by another edgetl command")
        r = run_cli("clean", good_run, block_tf=True, timeout=120)
        assert_user_error(r, "in use by another edgetl command")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        a.stderr.close()
    assert snapshot(tmp_path, skip={tmp_path / "slow.toml"} | set(good_run.parent.glob(".good.edgetl-*"))) == before
    r = run_cli("build", tiny_data, "--out", good_run, "--force", *FAST, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert leftovers(good_run) == []


@requires_tf
def test_force_replaces_a_run_and_keeps_the_users_files(good_run, tiny_data):
    (good_run / "notes.txt").write_text("my notes")
    (good_run / "mine").mkdir()
    (good_run / "mine" / "a.txt").write_text("a")
    # inside edgetl's own folders, and names that look like edgetl's (issue 12: all lost before)
    theirs = {"plots/my_annotations.txt": "ann", "logs/my_experiment_log.txt": "exp", "cache/README_mine.txt": "rd",
              "model_comparison.json": "{}", "model_from_colleague.tflite": "tfl", ".draft.tmp.md": "draft"}
    for rel, text in theirs.items():
        (good_run / rel).parent.mkdir(exist_ok=True)
        (good_run / rel).write_text(text)
    created = json.loads((good_run / "report.json").read_text())["created"]
    time.sleep(1.1)
    r = run_cli("build", tiny_data, "--out", good_run, "--force", *FAST, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (good_run / "notes.txt").read_text() == "my notes" and (good_run / "mine" / "a.txt").read_text() == "a"
    assert {rel: (good_run / rel).read_text() for rel in theirs} == theirs
    assert json.loads((good_run / "report.json").read_text())["created"] != created
    assert json.loads((good_run / ".edgetl-run").read_text())["status"] == "built"
    assert "kept 8 file(s) of yours" in r.stderr and leftovers(good_run) == []


# ------------------------------------------------------------------ 2. errors before TensorFlow


def _long_name(tmp_path):
    return tmp_path / ("x" * 300)


@pytest.mark.parametrize("case", ["missing-data", "exists", "seed-negative", "seed-huge", "split-words",
                                  "head-units-huge", "lr-nan", "finetune-lr-nan", "max-drop-nan", "no-modes",
                                  "long-name", "bad-toml-type"])
def test_bad_values_fail_fast_without_tensorflow(case, tmp_path, tiny_data):
    """Every case fails with exit 2 in a process where TensorFlow cannot even be imported: the check
    runs before the heavy import, so the answer comes at once."""
    out = tmp_path / "run"
    args = ["build", tiny_data, "--out", out, *FAST]
    phrase = {}
    if case == "missing-data":
        args[1], phrase = tmp_path / "nothere", "data folder not found"
    elif case == "exists":
        out.mkdir()
        (out / ".edgetl-run").write_text(json.dumps({"format": "edgetl.run"}))
        (out / "report.json").write_text("{}")
        phrase = "already exists"
    elif case == "seed-negative":
        args += ["--seed", "-1"]
        phrase = "seed -1 is out of range"
    elif case == "seed-huge":
        args += ["--seed", str(2**40)]
        phrase = "out of range"
    elif case == "split-words":
        (tmp_path / "c.toml").write_text('split = ["a", "b", "c"]\n')
        args += ["--config", tmp_path / "c.toml"]
        phrase = "split"
    elif case == "head-units-huge":
        (tmp_path / "c.toml").write_text("head-units = 1e20\n")
        args += ["--config", tmp_path / "c.toml"]
        phrase = "head-units"
    elif case == "lr-nan":
        args += ["--learning-rate", "nan"]
        phrase = "finite"
    elif case == "finetune-lr-nan":
        args += ["--fine-tune-lr", "nan"]
        phrase = "finite"
    elif case == "max-drop-nan":
        args += ["--max-drop", "nan"]
        phrase = "finite"
    elif case == "no-modes":
        (tmp_path / "c.toml").write_text("quantize = []\n")
        args = ["build", tiny_data, "--out", out, "--config", tmp_path / "c.toml"]
        phrase = "no quantization mode"
    elif case == "long-name":
        args[1], phrase = _long_name(tmp_path), "File name too long"
    elif case == "bad-toml-type":
        (tmp_path / "c.toml").write_text('head-units = "ten"\n')
        args += ["--config", tmp_path / "c.toml"]
        phrase = "head-units"
    before = snapshot(tmp_path)
    r = run_cli(*args, block_tf=True, timeout=60)
    assert_user_error(r, phrase)
    assert "TensorFlow" not in r.stderr
    assert snapshot(tmp_path) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_usage_errors_and_version_read_like_the_rest():
    r = run_cli("build", "--no-such-flag", timeout=60)
    assert_user_error(r, "no such option", "edgetl build --help")
    assert "Usage:" not in r.stderr
    r = run_cli("predict", timeout=60)
    assert_user_error(r, "missing argument", "edgetl predict --help")
    r = run_cli("build", "photos", "--epochs", "many", timeout=60)
    assert_user_error(r, "--epochs")
    r = run_cli("--version", timeout=60)
    from edge_runtime import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"edgetl {__version__}"


def test_help_has_plain_placeholders_and_whole_summaries():
    r = run_cli("--help", timeout=60)
    assert r.returncode == 0 and "..." not in r.stdout.split("Commands:")[1]  # summaries not cut off
    for verb in ("build", "quantize", "predict", "camera", "parity"):
        r = run_cli(verb, "--help", timeout=60)
        assert r.returncode == 0
        assert "<" not in r.stdout and "{" not in r.stdout, r.stdout  # no <path>, <list[str]>, {data_dir}
        assert "[default:" not in r.stdout  # one default style: "(default X)" in the text
    assert "--quantize MODE" in run_cli("quantize", "--help").stdout  # the same name as in build


@requires_tf
def test_fine_tune_from_is_checked_before_any_work(tmp_path, tiny_data):
    for spec, phrase in (("9999", "outside the base's"), ("block_99_nothing", "no layer named")):
        r = run_cli("build", tiny_data, "--out", tmp_path / "run", *FAST[:-6], "--fine-tune-epochs", "1",
                    "--fine-tune-from", spec, timeout=300)
        assert_user_error(r, phrase)
        assert "decoding photos" not in r.stderr and "stage 1" not in r.stderr
        assert not (tmp_path / "run").exists() and leftovers(tmp_path / "run") == []


# ------------------------------------------------------------------ 3. disks that are full or read-only


def _mount_tmpfs(where: Path, size: str, ro: bool = False):
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({r.stderr.strip() or 'not root'})")
    return where


@pytest.fixture
def small_fs(tmp_path):
    mounts = []

    def make(name, size, ro=False):
        mounts.append(_mount_tmpfs(tmp_path / name, size, ro))
        return mounts[-1]

    yield make
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@requires_tf
def test_full_disk_and_read_only_disk(small_fs, tmp_path, tiny_data, fast_run_template):
    # too small for the photo cache: said before a photo is decoded (no "Bus error")
    tiny = small_fs("tiny", "600k")
    r = run_cli("build", tiny_data, "--out", tiny / "run", *FAST, timeout=300)
    assert_user_error(r, "not enough space", "photo cache")
    assert list(tiny.iterdir()) == []
    # room for the cache but not for the models: the OSError is one line, exit 2, nothing left behind
    small = small_fs("small", "3m")
    r = run_cli("build", tiny_data, "--out", small / "run", *FAST, timeout=300)
    assert_user_error(r, "No space left on device", "free some space", str(small / "run"))
    assert "edgetl-new" not in r.stderr  # the run is named, not the staged folder being written
    assert list(small.iterdir()) == []
    # an old run on a nearly full disk: a --force rebuild fails for want of space, the old run stays whole
    full = small_fs("full", "14m")
    shutil.copytree(fast_run_template, full / "run")
    before = snapshot(full)
    r = run_cli("build", tiny_data, "--out", full / "run", "--force", *FAST, timeout=300)
    assert_user_error(r)
    assert snapshot(full) == before
    # a read-only filesystem
    ro = small_fs("ro", "1m", ro=True)
    r = run_cli("build", tiny_data, "--out", ro / "run", *FAST, timeout=300)
    assert_user_error(r, "Read-only file system")


# ------------------------------------------------------------------ 4. damaged runs


@requires_tf
def test_damaged_run_files(good_run, tiny_data):
    report = (good_run / "report.json").read_bytes()
    (good_run / "report.json").write_bytes(report[: len(report) // 2])
    for args in (["finetune", good_run, "--force"], ["quantize", good_run, "--quantize", "float32", "--force"]):
        assert_user_error(run_cli(*args, block_tf=True, timeout=120), "damaged", "--force")
    (good_run / "report.json").write_bytes(report)
    split = (good_run / "split.json").read_bytes()
    (good_run / "split.json").write_bytes(split[:100])
    for args in (["finetune", good_run, "--force"], ["quantize", good_run, "--quantize", "float32", "--force"]):
        assert_user_error(run_cli(*args, block_tf=True, timeout=120), "split.json", "damaged")
    (good_run / "split.json").write_bytes(split)
    # a truncated photo cache is decoded again, as a missing one
    cache = good_run / "cache" / "images.npy"
    cache.write_bytes(cache.read_bytes()[:5000])
    r = run_cli("quantize", good_run, "--quantize", "float32", "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "decoding the photos again" in r.stderr
    assert cache.stat().st_size > 5000 and leftovers(good_run) == []


# ------------------------------------------------------------------ 5. quantize: --out, copies, NaN, exit 1


@requires_tf
def test_quantize_out_leaves_the_run_alone_and_a_copied_model_knows_its_labels(good_run, tmp_path, tiny_data):
    shutil.rmtree(good_run / "cache")  # as a build leaves it: the photos are decoded elsewhere, not in the run
    before = snapshot(good_run)
    out = tmp_path / "exported"
    r = run_cli("quantize", good_run / "model.keras", "--out", out, "--quantize", "float32", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model_float32.tflite").is_file() and (out / "labels.txt").read_text().split() == \
        ["blue", "green", "red"]
    assert snapshot(good_run) == before
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(good_run / "model.keras", alone / "pets.keras")  # no labels.txt beside it
    r = run_cli("quantize", alone / "pets.keras", timeout=600)
    assert_user_error(r, "--calibration")
    assert "not built by edgetl" not in r.stderr
    r = run_cli("quantize", alone / "pets.keras", "--calibration", tiny_data, "--quantize", "float32",
                "--out", tmp_path / "o2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "o2" / "labels.txt").read_text().split() == ["blue", "green", "red"]


@requires_tf
def test_foreign_model_reports_everything_missing_at_once(test_models, tmp_path):
    model = test_models / "logits_float.keras"
    if not model.is_file():
        pytest.skip("test models made without the Keras file")
    r = run_cli("quantize", model, "--out", tmp_path / "new", timeout=300)
    assert_user_error(r, "--labels", "--input-range", "--calibration")
    assert not (tmp_path / "new").exists()  # no empty folder on failure


@requires_tf
def test_nan_model_fails_parity_and_quantize_exits_1(good_run, tmp_path, tiny_data):
    """A model whose outputs are NaN (a diverged training) fails the gate: exit 1, the model kept, and
    every JSON edgetl prints about it is valid JSON."""
    code = (
        "import sys, numpy as np\n"
        "from toolchain.core import modeling\n"
        f"m = modeling.load({str(good_run / 'model.keras')!r})\n"
        "d = m.get_layer('head').get_layer('probabilities')\n"
        "k, b = d.get_weights(); b[:] = np.nan; d.set_weights([k, b])\n"
        f"modeling.save(m, {str(tmp_path / 'nan.keras')!r}, modeling.read_info({str(good_run / 'model.keras')!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("quantize", tmp_path / "nan.keras", "--calibration", tiny_data, "--quantize", "float32",
                "--out", tmp_path / "o", timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "parity gate failed" in r.stderr and "NaN" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "o" / "nan_float32.tflite").is_file()
    side = json.loads((tmp_path / "o" / "nan_float32.json").read_text())  # strict JSON: no NaN in it
    assert side["figures"]["passed"] is False
    r = run_cli("parity", tmp_path / "nan.keras", tmp_path / "o" / "nan_float32.tflite", tiny_data, "--json",
                timeout=600)
    assert r.returncode == 1 and json.loads(r.stdout)["nonfinite_tflite"] == 45


# ------------------------------------------------------------------ 6. data the user did not mean


def test_identical_photo_in_two_classes_is_a_warning(tmp_path):
    from toolchain.cfg import config
    from toolchain.core import data

    d = write_dataset(tmp_path / "photos", per_class=6)
    shutil.copy(d / "red" / "red_00.jpg", d / "blue" / "copy_of_red.jpg")
    run = tmp_path / "run"
    run.mkdir()
    ds = data.build(d, run, config.resolve(None, image_size=96))
    assert any("more than one class" in n for n in ds.notes)


@pytest.mark.parametrize("verb", ["predict", "info", "camera", "bench"])
def test_file_names_too_long_for_the_filesystem(verb, tmp_path):
    """ENAMETOOLONG from the OS is the user's input: exit 2 with the reason, in every runtime verb."""
    long = tmp_path / ("m" * 300 + ".tflite")
    args = {"predict": [long, tmp_path], "info": [long], "camera": [long, "--headless"], "bench": [long]}[verb]
    r = run_cli(verb, *args, block_tf=True, timeout=60)
    assert_user_error(r, "File name too long")


# ------------------------------------------------------------------ 7. hostile models through the CLI


def _crafted_models(test_models, out):
    """Models whose metadata lies, bloats or is mangled: crafted JSON, a zip bomb, encrypted and unknown-
    compression members, and seeded random mutations of the archive and of the ModelMetadata flatbuffer."""
    import io
    import random
    import zipfile

    from edge_runtime import metadata, tflite_format

    data = (test_models / "edgetl_uint8.tflite").read_bytes()
    flat, _ = metadata.split(data)

    def archive(members, compression=zipfile.ZIP_STORED):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=compression) as z:
            for name, payload in members:
                z.writestr(name, payload)
        return flat + buf.getvalue()

    good = json.loads(metadata.read(data) and json.dumps(metadata.read(data)))
    cases = {}
    for field, value in (("input", "rgb"), ("labels", 5), ("labels", ["a"]), ("output", [1])):
        cases[f"json-{field}"] = archive([("edgetl/metadata.json", json.dumps({**good, field: value}))])
    bad_range = dict(good, input=dict(good["input"], value_range=[1]))
    cases["json-value-range"] = archive([("edgetl/metadata.json", json.dumps(bad_range))])
    cases["json-nested"] = archive([("edgetl/metadata.json", "[" * 100000 + "]" * 100000)])
    cases["json-nan"] = archive([("edgetl/metadata.json", json.dumps(good).replace('"total": 16', '"total": NaN'))])
    cases["zip-bomb"] = archive([("edgetl/metadata.json", b" " * (64 << 20))], zipfile.ZIP_DEFLATED)
    enc = bytearray(archive([("edgetl/metadata.json", json.dumps(good))]))
    i = enc.rfind(b"PK\x01\x02")
    enc[i + 8] |= 1  # the central directory says: encrypted
    cases["zip-encrypted"] = bytes(enc)
    odd = bytearray(archive([("edgetl/metadata.json", json.dumps(good))]))
    for sig, off in ((b"PK\x01\x02", 10), (b"PK\x03\x04", 8)):
        j = odd.rfind(sig)
        odd[j + off] = 99  # compression method 99
    cases["zip-method-99"] = bytes(odd)
    rng = random.Random(1234)
    structure = tflite_format.parse_model(data)
    entry = next(m for m in structure["metadata"] if m["name"] == "TFLITE_METADATA")
    mm_start, mm_len = structure["buffer_spans"][entry["buffer"]]
    for k in range(12):
        b = bytearray(data)
        lo, hi = (len(flat), len(data)) if k % 2 else (mm_start, mm_start + mm_len)
        for _ in range(1 + k):
            b[rng.randrange(lo, hi)] = rng.randrange(256)
        cases[f"mutated-{'archive' if k % 2 else 'modelmetadata'}-{k}"] = bytes(b)
    out.mkdir()
    for name, blob in cases.items():
        (out / f"{name}.tflite").write_bytes(blob)
    return sorted(out.glob("*.tflite"))


def test_hostile_models_never_crash_or_bloat_the_runtime(test_models, tmp_path):
    """Every crafted or mutated model: `info` and `predict` end with exit 0 (bad metadata ignored, with a
    warning saying why) or 2 (the model itself is unusable), never a traceback, never a hang."""
    from PIL import Image

    from conftest import colour_image

    photo = tmp_path / "p.jpg"
    Image.fromarray(colour_image("red", __import__("numpy").random.default_rng(0), (80, 100))).save(photo)
    models = _crafted_models(test_models, tmp_path / "models")
    assert len(models) >= 20
    warned = 0
    for m in models:
        for args in (["info", m], ["predict", m, photo, "--labels", test_models / "labels3.txt"]
                     if (test_models / "labels3.txt").is_file() else ["predict", m, photo]):
            r = run_cli(*args, block_tf=True, timeout=60)
            assert "Traceback" not in r.stderr, (m.name, r.stderr[-2000:])
            assert r.returncode in (0, 2), (m.name, r.returncode, r.stderr[-2000:])
            if r.returncode == 2:
                assert_user_error(r)
            warned += "warning:" in r.stderr
    assert warned >= len(models) // 2  # bad metadata is reported, not silently dropped


@requires_tf
def test_a_run_of_edgetl_0_1_is_still_a_run(good_run):
    """Runs written before the marker existed (report.json with edgetl_version, split.json) are still
    runs for quantize and clean; the first command that replaces the run writes the marker."""
    (good_run / ".edgetl-run").unlink()
    rep = json.loads((good_run / "report.json").read_text())
    assert rep.get("edgetl_version")
    r = run_cli("clean", good_run, "--dry-run", block_tf=True, timeout=60)
    assert r.returncode == 0 and "would free" in r.stdout, r.stderr[-2000:]
    r = run_cli("quantize", good_run, "--quantize", "float32", "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((good_run / ".edgetl-run").read_text())["format"] == "edgetl.run"
    assert leftovers(good_run) == []
