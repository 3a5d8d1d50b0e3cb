"""Structural fuzz of edgetl's own models: 2,000 mutants per CI run (1,000 of the int8 model with uint8 I/O,
1,000 of the float16 model edgetl writes), each with 1-3 of its
flatbuffer's structural fields changed (vtables, offsets, vector lengths, shapes, types, buffer and tensor
indices, quantization scales and zero points, opcodes, operator options; never the weight bytes, see
tests/model_bytes.py), loaded one after another the way `edgetl info` and `edgetl predict` load a model
(model.load + describe, then Classifier + classify) in one worker process, with a fixed seed.

What must hold: the worker is never killed by a signal (the mutants that crash the native interpreter
crash it in the probe's child, which is restarted), no mutant raises anything but EdgetlError (a traceback
in the CLI), and the worker's memory stays within what the tensor bound allows. The bound is set to 256 MB
here (EDGETL_MAX_TENSOR_BYTES) so the run stays small; benchmarks/fuzz_models.py runs 20,000+ mutants of
several models with the default bound and BENCHMARKS.md has its figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MUTANTS = 1000  # per model: 2,000 in all
SEED = 20261201
BOUND_MB = 256

WORKER = """import json, sys
sys.path.insert(0, sys.argv[1])
import model_bytes
print(json.dumps(model_bytes.fuzz_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])))
"""


@pytest.mark.parametrize("name", ["edgetl_uint8", "edgetl_float16"])
def test_structural_fuzz_never_kills_the_process_and_stays_bounded(name, test_models, tmp_path):
    env = dict(os.environ, EDGETL_CACHE_DIR=str(tmp_path / "cache"), EDGETL_MAX_TENSOR_BYTES=str(BOUND_MB << 20),
               TF_CPP_MIN_LOG_LEVEL="3")
    progress = tmp_path / "progress"
    r = subprocess.run([sys.executable, "-c", WORKER, str(Path(__file__).parent), str(test_models / f"{name}.tflite"),
                        str(MUTANTS), str(SEED), str(tmp_path / "work"), str(progress)],
                       capture_output=True, text=True, env=env, timeout=900)
    where = progress.read_text() if progress.exists() else "?"
    if r.returncode < 0:
        raise AssertionError(f"the worker was killed by {signal.Signals(-r.returncode).name} at mutant {where}")
    assert r.returncode == 0, (where, r.stderr[-3000:])
    res = json.loads(r.stdout.splitlines()[-1])
    print(json.dumps(res, indent=1))  # the figures, with -s
    counts = res["counts"]
    assert sum(counts.values()) == MUTANTS
    assert res["tracebacks"] == []
    assert counts.get("classified", 0) > 0 and counts.get("refused at info", 0) > 0  # both ends were reached
    # what a mutant may make this process allocate: its declared tensors (at most the bound) once, plus the
    # interpreter and the runtime (about 150 MB)
    assert res["peak_rss_mb"] < 2 * BOUND_MB + 400, res
    assert res["peak_child_rss_mb"] < 2 * 2 * BOUND_MB + 1200, res
