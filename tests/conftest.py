"""Shared fixtures. Everything is real: image files written with Pillow, videos with OpenCV, models made by
TensorFlow's converter and run by a real TFLite interpreter.

- Tests that need ../shared (reference models, photos, ImageNet weights) skip with a reason without it.
- Tests that need TensorFlow (training, conversion) skip without it, so the runtime tests also run in an
  environment with only tflite-runtime; there, models that only TensorFlow can make come from
  $EDGETL_TEST_MODELS (written beforehand by `python tests/make_test_models.py DIR` in a TensorFlow env).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", ROOT.parent / "shared"))
REF_PTQ = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
REF_QAT = SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"
IMAGENET_LABELS = SHARED / "images" / "imagenet_labels.txt"

HAVE_TF = importlib.util.find_spec("tensorflow") is not None

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "models").is_dir():
        pytest.skip(f"needs ../shared (reference models and photos), not found at {SHARED}; "
                    "set EDGETL_SHARED=/path/to/shared to use a copy elsewhere")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_weights(shared) -> Path:
    w = shared / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    if not w.is_file():
        pytest.skip(f"needs ../shared/weights, not found at {SHARED / 'weights'}; set EDGETL_SHARED=/path/to/shared")
    return w


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """edgetl's cache folder (device choices, probe verdicts), private to the test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(d))
    return d


requires_tf = pytest.mark.skipif(not HAVE_TF, reason="needs TensorFlow (pip install '.[train]')")


FORK_MARK = "[test: os.fork]"


def run_cli(*args, cwd=None, env=None, timeout=900, block_tf=False, block=(), mark_forks=False):
    """Run `edgetl ARGS` in a fresh process; returns CompletedProcess (text). ``block``: modules made
    unimportable in that process (as if not installed); ``block_tf`` blocks TensorFlow. ``mark_forks``:
    every os.fork of that process (a fork beside TensorFlow's threads can deadlock) writes FORK_MARK to
    its stderr."""
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
    if mark_forks:
        code = f"import os; os.register_at_fork(before=lambda: os.write(2, b'\\n{FORK_MARK}\\n')); " + code
    for mod in tuple(block) + (("tensorflow",) if block_tf else ()):
        code = f"import sys; sys.modules[{mod!r}] = None; " + code
    try:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                              env=e, timeout=timeout)
    except subprocess.TimeoutExpired as t:  # the test fails on the exit code, showing what the command printed
        def text(b):
            return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")

        return subprocess.CompletedProcess(t.cmd, -9, text(t.stdout),
                                           text(t.stderr) + f"\n[run_cli: no end within {timeout} s: killed]\n")


def run_python(code: str):
    """Run ``code`` in a fresh interpreter (nothing imported yet); returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


# ------------------------------------------------------------------ real image files


def colour_image(kind: str, rng: np.random.Generator, size=(72, 96)) -> np.ndarray:
    """An RGB image whose colour is the class ("red", "green", "blue"), at a slightly random exposure,
    with sensor noise. (Easy on purpose: the tiny test models have random, untrained bases.)"""
    h, w = size
    base = np.array({"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}[kind], np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base * rng.uniform(0.95, 1.05)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, classes=("blue", "green", "red"), per_class=12, seed=0, fmt="JPEG") -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, ci, i])
            kind = c if c in ("red", "green", "blue") else ("red", "green", "blue")[ci % 3]
            ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
            Image.fromarray(colour_image(kind, rng)).save(d / f"{c}_{i:02d}.{ext}", fmt)
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "photos")


# ------------------------------------------------------------------ a tiny trained run, built once


TINY_TRAIN = ["--alpha", "0.35", "--image-size", "96", "--weights", "none", "--epochs", "12", "--batch-size", "8",
              "--seed", "7"]
TINY_FLAGS = TINY_TRAIN + ["--fine-tune-epochs", "1"]
# The gates of the tiny random-weight builds. Such a base quantizes far worse than an ImageNet one, and how
# much worse depends on the CPU's int8 kernels: the tiny four-mode build's int8 agreed with Keras on 0.84
# of 45 photos on an AVX2-only EPYC against 0.85 or more with AVX-512 VNNI. The default gates are tested
# on their own (test_build_gate_failure_exits_1_and_keeps_everything).
TINY_GATES = ["--min-agreement", "0.7", "--max-drop", "25"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tinydata") / "photos", per_class=15)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """`edgetl build` end to end on a tiny model, every quantization mode. Returns (run, CompletedProcess)."""
    if not HAVE_TF:
        pytest.skip("needs TensorFlow (pip install '.[train]')")
    run = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli("build", tiny_data, "--out", run, *TINY_FLAGS, "--quantize", "int8", "--quantize", "float16",
                   "--quantize", "dynamic", "--quantize", "float32", *TINY_GATES,
                   mark_forks=True)
    return run, proc


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> Path:
    """Small special-purpose .tflite models (see make_test_models.py)."""
    given = os.environ.get("EDGETL_TEST_MODELS")
    if given and Path(given, "done").is_file():
        return Path(given)
    if not HAVE_TF:
        pytest.skip("needs TensorFlow to make test models, or $EDGETL_TEST_MODELS")
    import make_test_models

    out = tmp_path_factory.mktemp("test_models")
    make_test_models.make_all(out)
    return out


# ------------------------------------------------------------------ the hostile corpus's helpers and its run


FAST_TRAIN = ["--alpha", "0.35", "--image-size", "96", "--weights", "none", "--epochs", "2", "--batch-size", "8",
              "--seed", "7"]
FAST = FAST_TRAIN + ["--fine-tune-epochs", "0", "--quantize", "float32", "--min-agreement", "0", "--max-drop", "100"]


def snapshot(root: Path, skip=()) -> dict:
    """Every file and folder under ``root`` (but ``skip``): relative path -> (kind, size, sha1)."""
    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [x for x in dirnames if (d / x) not in skip]
        for name in dirnames:
            out[str((d / name).relative_to(root))] = ("dir",)
        for name in filenames:
            p = d / name
            if p in skip:
                continue
            out[str(p.relative_to(root))] = ("file", p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def assert_user_error(r, *phrases):
    """Exit 2, one error line and one hint line, no traceback, the phrases in the error."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    hints = [ln for ln in r.stderr.splitlines() if ln.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, r.stderr[-3000:]
    for p in phrases:
        assert p in errors[0] or p in hints[0], (p, r.stderr[-3000:])


def leftovers(run: Path) -> list:
    """edgetl's hidden siblings of a run folder (staged runs, moved-aside runs, lock files)."""
    return sorted(p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.edgetl-"))


# ------------------------------------------------------------------ a run to be hostile to


@pytest.fixture(scope="session")
def fast_run_template(tmp_path_factory, tiny_data):
    if not HAVE_TF:
        pytest.skip("needs TensorFlow (pip install '.[train]')")
    run = tmp_path_factory.mktemp("hostile") / "template"
    r = run_cli("build", tiny_data, "--out", run, *FAST, "--keep-cache", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


@pytest.fixture
def good_run(fast_run_template, tmp_path):
    """A private copy of a complete run, in its own folder (runs/good), beside nothing else."""
    run = tmp_path / "runs" / "good"
    shutil.copytree(fast_run_template, run, symlinks=True)
    return run
