"""Helpers shared by the benchmark scripts: where ../shared is, an offline ImageNet cache, running edgetl."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", ROOT.parent / "shared"))
FLOWERS = SHARED / "datasets" / "flowers10"
REF_PTQ = SHARED / "models" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
IMAGENET_LABELS = SHARED / "images" / "imagenet_labels.txt"


def need_shared():
    if not (SHARED / "datasets").is_dir():
        sys.exit(f"this benchmark needs ../shared (not found at {SHARED})")


def imagenet_env() -> dict:
    """An environment whose Keras cache holds the ImageNet weights from ../shared, so that the ordinary
    `--weights imagenet` path loads them exactly as it would after a download."""
    home = Path(tempfile.gettempdir()) / "edgetl-bench-keras"
    script = SHARED / "weights" / "use-imagenet-weights"
    subprocess.run([str(script), str(home)], check=True, capture_output=True)
    env = dict(os.environ)
    env["KERAS_HOME"] = str(home)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def edgetl(*args, env=None, check=True):
    """Run `edgetl ARGS` with this interpreter; returns CompletedProcess (stdout/stderr as text)."""
    code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if check and r.returncode not in (0, 1):
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"edgetl {args[0]} failed with exit code {r.returncode}")
    return r
