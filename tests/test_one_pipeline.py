"""One pipeline (issue 13): `build`, `train` and `finetune` are each defined once, for one process and for
several; a one-process run is a cluster of one. The redesign changed nothing a user sees: the model a
one-process build trains for a fixed seed is the model the code before the redesign trained (stage-1
weights bit for bit, final weights within 1e-6), checked here against that very code, taken from git.
The build here trains stage 2 on the cached outputs of the frozen layers (issue 15, train.PrefixCache)
and the code of before on the photos through the whole graph: the same test shows both give that model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, requires_tf, run_cli

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "b6a51b3"  # the last commit with two pipelines (pipeline.py and dist_pipeline.py)


def _checkout_before(dest: Path) -> Path:
    """The toolchain and runtime of commit BEFORE, unpacked in ``dest`` (skips without git or history)."""
    try:
        ok = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                            capture_output=True).returncode == 0
    except OSError:
        ok = False
    if not ok:
        pytest.skip(f"needs the git history of the repository (commit {BEFORE}); a shallow clone or an export "
                    "has none")
    archive = dest.parent / "before.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), BEFORE, "toolchain", "edge_runtime"],
                   check=True, capture_output=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as t:
        t.extractall(dest)
    return dest


def _weights(path: Path) -> list:
    from toolchain.core import modeling

    return [np.asarray(w) for w in modeling.load(path).get_weights()]


@requires_tf
def test_one_process_model_is_the_model_of_before_the_redesign(tiny_data, tmp_path):
    # the code before the redesign knew only the crop default and the whole input: the model of today is built
    # with them too (the default is now the "mediapipe" policy and the central 0.8, which feed other pixels)
    run = tmp_path / "new-run"
    proc = run_cli("build", tiny_data, "--out", run, *TINY_FLAGS, "--resize", "crop", "--central-fraction", "1",
                   "--quantize", "float32", "--min-agreement", "0", "--max-drop", "100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((run / "report.json").read_text())
    assert rep["stages"]["fine_tune"]["on_cached_prefix"] is True  # the cached path, against the graph path
    code = _checkout_before(tmp_path / "before")
    old_run = tmp_path / "old-run"
    env = dict(os.environ, PYTHONPATH=str(code), TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", "import sys; from toolchain.cli import main; main(sys.argv[1:])",
                        "build", str(tiny_data), "--out", str(old_run), *TINY_FLAGS, "--quantize", "float32",
                        "--min-agreement", "0", "--max-drop", "100", "--keep-cache"],
                       capture_output=True, text=True, env=env, cwd=code, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    old_s1, new_s1 = _weights(old_run / "stage1.keras"), _weights(run / "stage1.keras")
    assert len(old_s1) == len(new_s1)
    assert all(np.array_equal(a, b) for a, b in zip(old_s1, new_s1))  # bit for bit
    old_final, new_final = _weights(old_run / "model.keras"), _weights(run / "model.keras")
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(old_final, new_final) if a.size) <= 1e-6


def test_each_pipeline_verb_is_defined_once():
    import ast

    defs = {}
    for p in sorted((ROOT / "toolchain").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in ("do_train", "do_finetune", "do_build",
                                                                   "_train_into", "_finetune_into"):
                defs.setdefault(node.name, []).append(str(p.relative_to(ROOT)))
    assert set(defs) == {"do_train", "do_finetune", "do_build", "_train_into", "_finetune_into"}
    assert all(len(v) == 1 for v in defs.values()), defs
