"""The hostile-input corpus, part 2: input validation as a class of defence (issue 12, items 9-11 and the
traceback and message items), each case a real `edgetl` process on real files.

- Every number a flag or a TOML key takes goes through one range table (config.RANGES); every JSON file
  of a run (split.json, report.json) through one shape check (toolchain/rundir/schema.py). Both are exercised
  here by hand-made cases and by hypothesis, in processes where TensorFlow cannot be imported: a bad
  value is exit 2 with one `error:` and one `hint:` line naming the option or the field, no traceback.
- Data folders whose layout has no single meaning (``Train/`` beside ``train/``, ``café`` twice, a name
  with a newline or that is not UTF-8) are refused, naming the folders.
- Photos replaced after the build are named when a later command decodes them again.
- A ``kill -9`` of the ``--local-workers`` supervisor takes its workers down and its scratch folder is
  swept by the next command.
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
from conftest import FAST, HAVE_TF, assert_user_error, requires_tf, run_cli, snapshot, write_dataset
from test_hostile import small_fs  # noqa: F401 (a fixture: a small tmpfs mounted for the test)

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (pip install '.[dev]')")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# ------------------------------------------------------------------ a run made by this edgetl


@pytest.fixture(scope="session")
def inputs_run(tmp_path_factory, tiny_data):
    """A complete run (FAST flags, cache kept) built from a private copy of the tiny data set, plus a
    photo whose file name is not UTF-8 and an unreadable one named so too (report.md lists it)."""
    if not HAVE_TF:
        pytest.skip("needs TensorFlow (pip install '.[train]')")
    root = tmp_path_factory.mktemp("inputs")
    data = root / "photos"
    shutil.copytree(tiny_data, data)
    shutil.copy(data / "red" / "red_00.jpg", os.fsdecode(bytes(data / "red") + b"/odd\xff.jpg"))
    Path(os.fsdecode(bytes(data / "red") + b"/junk\xfe.jpg")).write_bytes(b"not a photo")
    run = root / "run"
    r = run_cli("build", data, "--out", run, *FAST, "--keep-cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "junk\\xfe.jpg" in (run / "report.md").read_text(encoding="utf-8")  # listed, printably
    return run, data


@pytest.fixture
def run_copy(inputs_run, tmp_path):
    run, _ = inputs_run
    dst = tmp_path / "runs" / "r"
    shutil.copytree(run, dst, symlinks=True)
    return dst


def _edit(path: Path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


# ------------------------------------------------------------------ 1. options and config files, before TensorFlow


def _tf_config(worker, index=0) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": worker}, "task": {"type": "worker", "index": index}})}


NO_MODEL = "{tmp}/no-model.tflite"
# case -> (arguments: added to a build, or a whole command when it starts with a verb; the config file's
# content (str, bytes, "dir" or "fifo") or None; TF_CONFIG or None; the phrase the error must hold)
BAD_VALUES = {
    "split-no-val": (["--split", "1,0"], None, None, "leaves no validation photos"),
    "split-no-val-3": (["--split", "0.9,0,0.1"], None, None, "leaves no validation photos"),
    "split-no-train": (["--split", "0,0.5,0.5"], None, None, "leaves no training photos"),
    "fine-tune-from-superscript": (["--fine-tune-epochs", "1", "--fine-tune-from", "²"], None, None,
                                   "neither a layer index nor a layer name"),
    "fine-tune-from-dashes": (["--fine-tune-epochs", "1", "--fine-tune-from=--5"], None, None,
                              "neither a layer index nor a layer name"),
    "toml-nested": ([], "split = " + "[" * 5000 + "]" * 5000 + "\n", None, "nested too deep"),
    # the BOM is accepted: the file is read, and its bad value named
    "toml-bom": ([], b"\xef\xbb\xbfhead-units = 0\n", None, "head-units 0 is out of range"),
    "toml-dir": ([], "dir", None, "not a regular file (folder)"),
    "toml-fifo": ([], "fifo", None, "not a regular file (named pipe)"),
    "toml-not-utf8": ([], b"seed = 1 # caf\xe9\n", None, "not UTF-8"),
    "tf-config-worker-number": ([], None, _tf_config(5), "cluster.worker must be a list of HOST:PORT addresses"),
    # a string is not a list of one address (len("a:1") is 3)
    "tf-config-worker-string": ([], None, _tf_config("h1:2222"), "cluster.worker must be a list"),
    "tf-config-index-bool": ([], None, _tf_config(["a:1", "b:2"], True), "task.index"),
    "cluster-comma": (["--cluster", ",", "--task-index", "0"], None, None, "lists no worker"),
    "task-index-huge": (["--cluster", "a:1,b:2", "--task-index", str(2**70)], None, None, "--task-index"),
    "local-workers-65": (["--local-workers", "65"], None, None, "--local-workers 65 is out of range"),
    "worker-timeout-nan": (["--local-workers", "2", "--worker-timeout", "nan"], None, None,
                           "--worker-timeout must be a finite number"),
    "devices-typo": (["--devices", "gpu0"], None, None, "is not a device list"),
    "threads-int32": (["predict", NO_MODEL, "{data}", "--threads", "2147483648"], None, None,
                      "--threads 2147483648 is out of range"),
    "bench-threads": (["bench", NO_MODEL, "--threads", "1,99999"], None, None, "--threads 99999 is out of range"),
    "top-k-huge": (["predict", NO_MODEL, "{data}", "--top-k", str(10**30)], None, None, "--top-k"),
    "smooth-zero": (["camera", NO_MODEL, "--headless", "--smooth", "0"], None, None, "--smooth 0 is out of range"),
    "epochs-float": ([], "calibration-size = 2.5\n", None, "calibration-size"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_one_error_before_tensorflow(case, tmp_path, tiny_data):
    out = tmp_path / "run"
    extra, toml_text, env, phrase = BAD_VALUES[case]
    extra = [a.format(tmp=tmp_path, data=tiny_data) for a in extra]
    toml = tmp_path / "c.toml"
    if toml_text == "dir":
        toml.mkdir()
    elif toml_text == "fifo":
        os.mkfifo(toml)
    elif toml_text is not None:
        (toml.write_bytes if isinstance(toml_text, bytes) else toml.write_text)(toml_text)
    args = extra if extra and extra[0] in ("predict", "bench", "camera") else \
        ["build", tiny_data, "--out", out, *FAST, *extra] + (["--config", toml] if toml_text is not None else [])
    skip = {toml} if toml_text == "fifo" else set()  # reading the named pipe here would block the test
    before = snapshot(tmp_path, skip=skip)
    r = run_cli(*args, env=env or {}, block_tf=True, timeout=60)
    assert_user_error(r, phrase)
    assert "TensorFlow" not in r.stderr
    assert snapshot(tmp_path, skip=skip) == before and not out.exists()


# ------------------------------------------------------------------ 2. data folders with no single meaning


def _photos(d: Path, n: int = 2):
    write_dataset(d.parent / "_tmp_src", classes=("red",), per_class=n)
    d.mkdir(parents=True, exist_ok=True)
    for p in sorted((d.parent / "_tmp_src" / "red").iterdir()):
        shutil.copy(p, d / p.name)
    shutil.rmtree(d.parent / "_tmp_src")


@pytest.mark.parametrize("case", ["train-Train", "val-validation", "nfc-nfd", "case-only", "newline",
                                  "not-utf8", "trailing-space", "control-char"])
def test_odd_layouts_are_refused_naming_the_folders(case, tmp_path):
    data = tmp_path / "data"
    phrase = ()
    if case in ("train-Train", "val-validation"):
        splits = ("train", "Train", "val") if case == "train-Train" else ("train", "val", "validation")
        for s in splits:
            for c in ("a", "b"):
                _photos(data / s / c)
        phrase = ("Train/, train/", "merge them") if case == "train-Train" else ("val/, validation/",)
    else:
        names = {"nfc-nfd": ["caf\u00e9", "cafe\u0301", "tea"], "case-only": ["Cat", "cat"],
                 "newline": ["a\nb", "c"], "trailing-space": ["cat ", "dog"], "control-char": ["a\x1bb", "c"],
                 "not-utf8": [os.fsdecode(b"caf\xe9"), "tea"]}[case]
        for n in names:
            _photos(Path(os.fsdecode(bytes(data) + b"/" + os.fsencode(n))))
        phrase = {"nfc-nfd": ("'caf\\xe9'", "'cafe\\u0301'", "two Unicode forms"),
                  "case-only": ("'Cat' and 'cat'", "differ only in case"),
                  "newline": ("a\\nb", "a line break"), "trailing-space": ("'", "cat '", "space"),
                  "control-char": ("a\\x1bb", "control character"),
                  "not-utf8": ("caf\\xe9", "not valid UTF-8")}[case]
    for verb in ("build", "train"):
        r = run_cli(verb, data, "--out", tmp_path / "run", *FAST[:4], block_tf=True, timeout=60)
        assert_user_error(r, *phrase)
        assert not (tmp_path / "run").exists()


def test_folders_beside_the_split_folders_are_said_to_be_ignored(tmp_path):
    data = tmp_path / "data"
    for s in ("train", "val"):
        for c in ("a", "b"):
            _photos(data / s / c)
    _photos(data / "extra")
    r = run_cli("build", data, "--out", tmp_path / "run", *FAST[:6], block_tf=True, timeout=60)
    assert "warning: 1 entry directly in" in r.stderr and "is ignored (not a split folder" in r.stderr
    assert r.stderr.count("warning: 1 entry") == 1  # said once, not once per scan
    assert_user_error(r, "TensorFlow")  # accepted: it got as far as TensorFlow, blocked here


# ------------------------------------------------------------------ 3. damaged run files, field by field


SPLIT_DAMAGE = {
    "classes-string": (lambda d: d.update(classes="hotdog"), "classes must be a list of class names"),
    "classes-repeated": (lambda d: d.update(classes=["a", "a", "b"]), "classes[1] repeats 'a'"),
    "classes-newline": (lambda d: d["classes"].__setitem__(0, "bl\nue"), "classes[0] holds a line break"),
    "label-7": (lambda d: d["files"]["train"][0].__setitem__(1, 7),
                "files.train[0][1] must be a whole number from 0 to 2, not 7"),
    "label-bool": (lambda d: d["files"]["val"][0].__setitem__(1, True), "files.val[0][1] must be a whole number"),
    "skipped-5": (lambda d: d.update(skipped=5), "skipped must be a list"),
    "path-escapes": (lambda d: d["files"]["test"][0].__setitem__(0, "../../etc/passwd"),
                     "files.test[0][0] must be a path inside the data folder"),
    "path-absolute": (lambda d: d["files"]["test"][0].__setitem__(0, "/etc/passwd"),
                      "must be a path inside the data folder"),
    "path-twice": (lambda d: d["files"]["val"].append(d["files"]["train"][0]), "again (already in train)"),
    "image-size": (lambda d: d.update(image_size=97), "image_size must be 120 (the model's input"),
    "resize": (lambda d: d.update(resize="stretch"), "resize must be one of"),
    "no-val": (lambda d: d["files"].pop("val"), "files has no val split"),
    "unknown-split": (lambda d: d["files"].update(extra=[["red/red_01.jpg", 2]]), "has the key 'extra'"),
    "test-is-val": (lambda d: d.update(test_is_val=True), "test_is_val must be false"),
    "hash": (lambda d: d["sha256"].update({"red/red_01.jpg": "zz"}), "must be a SHA-256"),
    "not-an-object": (lambda d: (d.clear(), d.update({"files": {"train": 5}})), "is missing"),
}
REPORT_DAMAGE = {
    "stages-5": (lambda d: d.update(stages=5), "stages must be an object"),
    "stage-epochs": (lambda d: d["stages"]["feature_extraction"].update(epochs="two"),
                     "stages.feature_extraction.epochs must be a whole"),
    "config-list": (lambda d: d.update(config=[1]), "config must be an object"),
    "config-value": (lambda d: d["config"].update(head_units="ten"), "config is not valid: option head-units"),
    "tflite-mode": (lambda d: d["tflite"].update({"../../x": {"size_bytes": 1}}), "tflite has the key '../../x'"),
    "tflite-size": (lambda d: d["tflite"]["float32"].pop("size_bytes"), "tflite.float32.size_bytes is missing"),
    "timing-steps": (lambda d: d["timing"].update(steps=[5]), "timing.steps[0] must be an object"),
    "confusion": (lambda d: d["keras"].update(confusion=[[1, "x"]]), "keras.confusion[0][1]"),
    "nan-history": (lambda d: d["history"]["feature_extraction"].update(loss="NaN"), "history.feature_extraction"),
}


@requires_tf
@pytest.mark.parametrize("case", sorted(SPLIT_DAMAGE) + sorted(f"report:{k}" for k in REPORT_DAMAGE))
def test_damaged_run_json_is_refused_naming_the_field(case, run_copy):
    """finetune reads both files whole before TensorFlow (blocked here) loads: exit 2 naming the file,
    the field and what was expected, and the command that makes the run again."""
    name, (fn, phrase) = (("report.json", REPORT_DAMAGE[case[7:]]) if case.startswith("report:")
                          else ("split.json", SPLIT_DAMAGE[case]))
    _edit(run_copy / name, fn)
    before = snapshot(run_copy.parent)
    r = run_cli("finetune", run_copy, "--force", block_tf=True, timeout=60)
    assert_user_error(r, f"{run_copy}/{name} is damaged", phrase, "--force")
    assert snapshot(run_copy.parent) == before


@requires_tf
@pytest.mark.parametrize("line", ["central-fraction = 1.0", "image-size = 128", "resize = \"crop\""])
def test_finetune_refuses_a_config_file_that_changes_the_stage1_model(line, run_copy, tmp_path):
    """A config file that set the model's input (or its framing) for finetune used to be recorded in report.json
    while the stage-1 model kept its own: a run whose report lied about its model, refused as damaged by the
    next command. Now: exit 2 before TensorFlow, naming the key, and nothing changes."""
    toml = tmp_path / "shared.toml"
    toml.write_text(f"{line}\nfine-tune-epochs = 1\n")
    before = snapshot(run_copy.parent)
    r = run_cli("finetune", run_copy, "--force", "--config", toml, block_tf=True, timeout=60)
    key = line.split(" ")[0].replace("-", "_")
    assert_user_error(r, f"{toml} sets {key} = ", f"but {run_copy} was built with", "edgetl build")
    assert snapshot(run_copy.parent) == before
    same = json.loads((run_copy / "report.json").read_text())["config"]
    toml.write_text(f"image-size = {same['image_size']}\nfine-tune-epochs = 1\n")  # the run's own value: accepted
    assert_user_error(run_cli("finetune", run_copy, "--force", "--config", toml, block_tf=True, timeout=60),
                      "TensorFlow")


@requires_tf
def test_damaged_split_stops_quantize_before_any_conversion(run_copy, inputs_run):
    """quantize used to convert, then crash (label 7: IndexError; "skipped": 5: TypeError; report.json
    "stages": 5: AttributeError in report.md), or label the model h, o, t, d, o, g."""
    split = run_copy / "split.json"
    good = split.read_text()
    _edit(split, lambda d: d.update(classes="hotdog"))
    _edit(run_copy / "report.json", lambda d: d.update(stages=5))
    before = snapshot(run_copy.parent)
    r = run_cli("quantize", run_copy, "--quantize", "float32", "--force", timeout=300)
    assert_user_error(r, "split.json is damaged: classes must be a list of class names, not a string ('hotdog')",
                      f"edgetl build {inputs_run[1]} --out {run_copy} --force")
    assert "converting" not in r.stderr and ".edgetl-new" not in r.stderr  # the run, not its staged copy
    assert snapshot(run_copy.parent) == before
    split.write_text(good)
    before = snapshot(run_copy.parent)
    r = run_cli("quantize", run_copy, "--quantize", "float32", "--force", timeout=300)
    assert_user_error(r, "report.json is damaged: stages must be an object, not a number (5)")
    assert "converting" not in r.stderr
    assert snapshot(run_copy.parent) == before


# ------------------------------------------------------------------ 4. photos replaced after the build


@requires_tf
def test_photos_replaced_after_the_build_are_named(run_copy, inputs_run, tmp_path):
    """split.json records each photo's SHA-256; a command that decodes the photos again names those whose
    bytes changed (and uses them as they are now, saying so)."""
    _, data = inputs_run
    mine = tmp_path / "photos"
    shutil.copytree(data, mine)
    doc = json.loads((run_copy / "split.json").read_text())
    assert len(doc["sha256"]) == sum(len(v) for v in doc["files"].values())
    shutil.copy(mine / "blue" / "blue_00.jpg", mine / "red" / "red_03.jpg")
    shutil.copy(mine / "green" / "green_01.jpg", mine / "red" / "red_05.jpg")
    _edit(run_copy / "split.json", lambda d: d.update(data_dir=str(mine)))
    shutil.rmtree(run_copy / "cache")
    r = run_cli("quantize", run_copy, "--quantize", "float32", "--force", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    warn = [ln for ln in r.stderr.splitlines() if "changed" in ln]
    assert len(warn) == 1, r.stderr[-3000:]
    n = len(doc["sha256"])
    assert f"2 of {n} photos changed" in warn[0] and "red/red_03.jpg, red/red_05.jpg" in warn[0]
    assert "used as they are now" in warn[0]


def test_old_split_without_hashes_still_loads_and_unchanged_photos_say_nothing(tmp_path, capfd):
    from toolchain.cfg import config
    from toolchain.core import data

    photos = write_dataset(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    run.mkdir()
    data.build(photos, run, config.resolve(None, image_size=96))
    shutil.rmtree(run / "cache")
    capfd.readouterr()
    data.load(run)  # decoded again, nothing changed
    assert "changed" not in capfd.readouterr().err
    _edit(run / "split.json", lambda d: d.pop("sha256"))  # as edgetl 0.1 wrote it
    shutil.copy(photos / "red" / "red_00.jpg", photos / "red" / "red_01.jpg")
    shutil.rmtree(run / "cache")
    ds = data.load(run)
    assert "changed" not in capfd.readouterr().err and len(ds.rows("train")) > 0


# ------------------------------------------------------------------ 5. messages that name the right thing


@requires_tf
def test_no_space_names_the_file_of_the_run(small_fs, tiny_data):  # noqa: F811 (small_fs: the fixture)
    disk = small_fs("small", "3m")
    r = run_cli("build", tiny_data, "--out", disk / "run", *FAST, timeout=300)
    assert_user_error(r, f"{disk}/run/stage1.keras: No space left on device", "free some space")
    assert ".edgetl-new" not in r.stderr and ".tmp" not in r.stderr
    assert list(disk.iterdir()) == []


@requires_tf
def test_keras_models_that_cannot_load_say_why(small_fs, inputs_run, tiny_data, tmp_path):  # noqa: F811
    run, _ = inputs_run
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(os.urandom(5000))
    r = run_cli("quantize", garbage, "--calibration", tiny_data, "--out", tmp_path / "o1", timeout=300)
    assert_user_error(r, "is not a Keras model", "pass a model saved by Keras")
    assert "File not found" not in r.stderr
    os.mkfifo(tmp_path / "pipe.keras")  # never opened: it would block
    r = run_cli("quantize", tmp_path / "pipe.keras", "--calibration", tiny_data, "--out", tmp_path / "o2",
                timeout=300)
    assert_user_error(r, "not a regular file (named pipe)")
    tmp = small_fs("tmp", "256k")  # room for Python's probe file, not for the unpacked model
    r = run_cli("quantize", run / "model.keras", "--calibration", tiny_data, "--out", tmp_path / "o3",
                "--quantize", "float32", env={"TMPDIR": str(tmp)}, timeout=300)
    assert_user_error(r, f"no space left in the temporary folder {tmp}", "TMPDIR")
    assert "pass a model saved by Keras" not in r.stderr
    assert list(tmp.iterdir()) == []  # Keras's unpacked copy is not left behind
    assert not (tmp_path / "o3").exists()


# ------------------------------------------------------------------ 6. a killed supervisor


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@requires_tf
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_kill_9_of_the_supervisor_takes_its_workers_and_its_scratch_folder(tmp_path, tiny_data):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # a folder of a live supervisor and one that edgetl did not mark are never touched
    live = tmpdir / "edgetl-workers-live"
    live.mkdir()
    (live / ".owner.json").write_text(json.dumps({"pid": os.getpid(), "start": None}))
    foreign = tmpdir / "edgetl-workers-foreign"
    foreign.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="3")
    code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
    sup = subprocess.Popen([sys.executable, "-c", code, "build", str(tiny_data), "--out", str(tmp_path / "run"),
                            "--local-workers", "2", *map(str, FAST[:6]), "--epochs", "500", "--batch-size", "8"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.time() + 120
        while "local workers" not in line and time.time() < deadline and sup.poll() is None:
            line = sup.stderr.readline()
        pids = [int(x) for x in __import__("re").findall(r"pid (\d+)", line)]
        assert len(pids) == 2, line
        scratch = [p for p in tmpdir.glob("edgetl-workers-*") if p not in (live, foreign)]
        assert len(scratch) == 1 and (scratch[0] / ".owner.json").is_file()
        time.sleep(3)  # the workers are importing TensorFlow, or joining
        sup.send_signal(signal.SIGKILL)
        sup.wait(timeout=30)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        sup.stderr.close()
    deadline = time.time() + 60
    while time.time() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.5)
    assert all(_gone(p) for p in pids), "a worker outlived its supervisor"
    assert scratch[0].is_dir()  # nobody could clean up: the next command does
    r = run_cli("train", tmp_path / "nothere", "--out", tmp_path / "run2", env={"TMPDIR": str(tmpdir)},
                block_tf=True, timeout=60)
    assert_user_error(r, "data folder not found")
    assert not scratch[0].exists() and live.is_dir() and foreign.is_dir()


# ------------------------------------------------------------------ 7. fuzzed option values, no TensorFlow


def _int_outside(lo, hi):
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                     st.sampled_from([lo - 1, hi + 1, -(2**63), 2**63, 2**31, 10**40]).filter(
                         lambda v: not lo <= v <= hi))


def _bad_number(lo, hi, integer):
    words = st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", "", " ", "0x10", "1,5", "½", "²"])
    if integer:
        return st.one_of(_int_outside(lo, hi).map(str), words, st.floats(allow_nan=False, allow_infinity=False)
                         .filter(lambda v: v != int(v)).map(repr))
    floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not lo <= v <= hi).map(repr)
    return st.one_of(floats, st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", "", "1,5"]))


def _fuzz_cases():
    from toolchain.cfg.config import RANGES

    flags = {"head_units": "build", "epochs": "build", "fine_tune_epochs": "build", "batch_size": "build",
             "calibration_size": "build", "seed": "build", "dropout": "build", "learning_rate": "build",
             "fine_tune_lr": "build", "max_drop": "build", "min_agreement": "build", "min_score": "build",
             "local_workers": "build",
             "worker_timeout": "build", "threads": "predict", "top_k": "predict", "smooth": "camera",
             "max_frames": "camera", "runs": "bench", "warmup": "bench"}
    numeric = [st.tuples(st.just(name), st.just(verb), _bad_number(RANGES[name].lo, RANGES[name].hi,
                                                                    RANGES[name].integer))
               for name, verb in flags.items()]
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    strings = [
        st.tuples(st.just("image_size"), st.just("build"),
                  st.integers().filter(lambda v: v not in (96, 128, 160, 192, 224)).map(str)),
        st.tuples(st.just("alpha"), st.just("build"),
                  st.floats().filter(lambda v: v not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)).map(repr)),
        st.tuples(st.just("split"), st.just("build"), text.filter(lambda s: not _valid_split(s))),
        st.tuples(st.just("fine_tune_from"), st.just("build"), text.filter(lambda s: not _valid_layer(s))),
        st.tuples(st.just("resize"), st.just("build"), text.filter(lambda s: s not in ("mediapipe", "crop", "squash", "pad"))),
        st.tuples(st.just("consumers"), st.just("build"),
                  text.filter(lambda s: any(x.strip() not in ("edge", "mediapipe", "tflite-runtime")
                                            for x in s.split(",") if x.strip()))),
        st.tuples(st.just("quantize"), st.just("build"),
                  text.filter(lambda s: s not in ("int8", "float16", "dynamic", "float32"))),
        st.tuples(st.just("io"), st.just("build"), text.filter(lambda s: s not in ("uint8", "int8", "float32"))),
        st.tuples(st.just("devices"), st.just("build"), text.filter(lambda s: not _valid_devices(s))),
    ]
    return st.one_of(*numeric, *strings)


def _valid_split(s):
    try:
        v = [float(x) for x in s.split(",")]
    except ValueError:
        return False
    return len(v) in (2, 3) and all(0 <= x <= 1 for x in v) and v[0] > 0 and v[1] > 0 and abs(sum(v) - 1) < 1e-6


def _valid_layer(s):
    from toolchain.cfg.config import LAYER_INDEX, LAYER_NAME

    return bool(LAYER_INDEX.fullmatch(s.strip()) or LAYER_NAME.fullmatch(s.strip()))


def _valid_devices(s):
    from edge_runtime.errors import EdgetlError
    from toolchain.cluster.collective import parse_devices

    try:
        parse_devices(s)
    except EdgetlError:
        return False
    return True


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("fuzz") / "photos", per_class=4)


@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=_fuzz_cases())
def test_fuzzed_option_values_are_one_error_naming_the_option(case, fuzz_data, tmp_path):
    """Any bad value of any option (numbers out of range, not finite, not numbers; names that are not
    choices): exit 2, one error and one hint naming the option, no traceback, TensorFlow never needed."""
    name, verb, value = case
    flag = "--" + name.replace("_", "-")
    model = tmp_path / "no-model.tflite"
    args = {"build": ["build", fuzz_data, "--out", tmp_path / "run"], "predict": ["predict", model, fuzz_data],
            "camera": ["camera", model, "--headless"], "bench": ["bench", model]}[verb]
    if name == "worker_timeout":
        args += ["--local-workers", "2"]
    r = run_cli(*args, f"{flag}={value}", block_tf=True, timeout=60)
    assert_user_error(r)
    said = "\n".join(ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "hint:")))
    assert flag in said or flag[2:] in said or name.replace("_", " ") in said, (case, r.stderr)
    assert "TensorFlow" not in said and not (tmp_path / "run").exists()
