"""The long structural fuzz of edgetl's own models: `python benchmarks/fuzz_models.py [--mutants 20000]`.

Mutants of the models edgetl writes (int8 with uint8 I/O, float32, float16, dynamic-range; from
$EDGETL_TEST_MODELS, written by `python tests/make_test_models.py DIR`, or --models DIR), each with 1-3
structural fields of the flatbuffer changed (tests/model_bytes.py: vtables, offsets, vector lengths, shapes,
types, buffer and tensor indices, quantization, opcodes, options; never the weights), loaded the way
`edgetl info` and `edgetl predict` load a model, in one worker process per model (tests/test_model_fuzz.py
does the same with 2,000 mutants). The default tensor bound (2 GiB) applies.

Prints, per model and in all: the outcomes, the crashes the probe's child took (by signal), how many child
processes were started, the time, the peak memory of the worker and of the largest child, and whether any
worker died (it must not) or any mutant raised anything but EdgetlError (none may).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("edgetl_uint8", "edgetl_float32", "edgetl_float16", "edgetl_dynamic")
WORKER = """import json, sys
sys.path.insert(0, sys.argv[1])
import model_bytes
print(json.dumps(model_bytes.fuzz_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=20000, help="in all, split evenly over the models")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default=os.environ.get("EDGETL_TEST_MODELS", "/tmp/models0"))
    a = ap.parse_args()
    models = [Path(a.models) / f"{m}.tflite" for m in MODELS if (Path(a.models) / f"{m}.tflite").is_file()]
    if not models:
        sys.exit(f"no edgetl models in {a.models}: run `python tests/make_test_models.py DIR` first")
    per = a.mutants // len(models)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    from edge_runtime.backends import resolve

    print(f"backend {resolve()}, {per} mutants of each of {len(models)} models, seed {a.seed}")
    total = {"mutants": 0, "counts": {}, "crashes": {}, "probe_children": 0, "seconds": 0.0, "tracebacks": 0,
             "workers_killed": 0, "peak_rss_mb": 0.0, "peak_child_rss_mb": 0.0}
    for i, m in enumerate(models):
        with tempfile.TemporaryDirectory() as tmp:
            run_env = dict(env, EDGETL_CACHE_DIR=str(Path(tmp) / "cache"))
            progress = Path(tmp) / "progress"
            r = subprocess.run([sys.executable, "-c", WORKER, str(ROOT / "tests"), str(m), str(per), str(a.seed + i),
                                str(Path(tmp) / "work"), str(progress)], capture_output=True, text=True, env=run_env)
            if r.returncode != 0:
                total["workers_killed"] += 1
                why = signal.Signals(-r.returncode).name if r.returncode < 0 else f"exit {r.returncode}"
                print(f"{m.name}: the worker died ({why}) at mutant {progress.read_text().strip()}\n{r.stderr[-2000:]}")
                continue
            res = json.loads(r.stdout.splitlines()[-1])
        counts = ", ".join(f"{k} {v}" for k, v in sorted(res["counts"].items()))
        crashes = ", ".join(f"{k.replace('signal ', '')} {v}" for k, v in sorted(res["crashes"].items())) or "none"
        print(f"{m.name}: {res['mutants']} mutants in {res['seconds']:.0f} s: {counts}; probe child crashes: "
              f"{crashes}; {res['probe_children']} children; peak {res['peak_rss_mb']:.0f} MB (worker), "
              f"{res['peak_child_rss_mb']:.0f} MB (largest child); tracebacks {len(res['tracebacks'])}")
        for t in res["tracebacks"]:
            print("   traceback:", t)
        total["mutants"] += res["mutants"]
        for k, v in res["counts"].items():
            total["counts"][k] = total["counts"].get(k, 0) + v
        for k, v in res["crashes"].items():
            total["crashes"][k] = total["crashes"].get(k, 0) + v
        total["probe_children"] += res["probe_children"]
        total["seconds"] += res["seconds"]
        total["tracebacks"] += len(res["tracebacks"])
        total["peak_rss_mb"] = max(total["peak_rss_mb"], res["peak_rss_mb"])
        total["peak_child_rss_mb"] = max(total["peak_child_rss_mb"], res["peak_child_rss_mb"])
    print("in all: " + json.dumps(total))
    sys.exit(1 if total["workers_killed"] or total["tracebacks"] else 0)


if __name__ == "__main__":
    main()
