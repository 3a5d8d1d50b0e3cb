"""int8 calibration size against agreement, on a built run (`edgetl build DATA --out RUN --keep-cache`).

For each calibration size and seed: the int8 model calibrated on that many training photos (drawn as the
build draws them, `convert.calibration_from_run` with that seed), its agreement with the Keras model and
its accuracy over the run's parity photos (every photo of the run, test split first, as the build's gate),
and the conversion time (one export, shared by every size; calibration and quantization timed).

    python benchmarks/bench_calibration.py RUN [--sizes 50,100,200,300] [--seeds 42,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--sizes", default="50,100,200,300")
    ap.add_argument("--seeds", default="42,1,2")
    args = ap.parse_args()
    from edge_runtime.classifier import Classifier
    from toolchain.cfg import config
    from toolchain.core import convert, metrics, modeling, parity
    from toolchain.core import data as data_mod

    run = Path(args.run)
    model = modeling.load(run / "model.keras")
    ds = data_mod.load(run)
    ev = convert.run_evalset(ds, 42)
    p_keras = parity.keras_probabilities(model, ev.tensors, (0.0, 255.0), desc="keras on parity set")
    src = convert.Exported(model)
    src.tflite("float32")  # the export and the float32 model, shared by every size (as in a build)
    n_train = len(ds.rows("train"))
    print(f"{run}: {len(ev.tensors)} parity photos ({ev.desc}); {n_train} training photos")
    print(f"{'size':>5} {'seed':>5} {'agreement':>9} {'int8 acc':>8} {'keras acc':>9} {'test acc':>8} {'seconds':>7}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        for n in [int(x) for x in args.sizes.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                cfg = dataclasses.replace(config.resolve(None), calibration_size=n, seed=seed)
                calib = convert.calibration_from_run(ds, cfg)
                t0 = time.perf_counter()
                flat = src.tflite("int8", calib)
                sec = time.perf_counter() - t0
                path.write_bytes(flat)
                clf = Classifier(path, num_threads=2, warn=False, trusted=True)
                p = parity.tflite_probabilities(clf, ev.tensors)
                m = metrics.parity(p_keras, p)
                acc = float((p.argmax(1) == ev.labels).mean())
                kacc = float((p_keras.argmax(1) == ev.labels).mean())
                tacc = float((p[: ev.test_n].argmax(1) == ev.labels[: ev.test_n]).mean()) if ev.test_n else float("nan")
                rows.setdefault(min(n, n_train), []).append((m["agreement"], sec))
                print(f"{min(n, n_train):5d} {seed:5d} {m['agreement']:9.4f} {acc:8.4f} {kacc:9.4f} {tacc:8.4f} {sec:7.1f}",
                      flush=True)
    print("median per size: " + "; ".join(
        f"{n}: agreement {statistics.median(a for a, _ in v):.4f}, {statistics.median(s for _, s in v):.1f} s"
        for n, v in rows.items()))


if __name__ == "__main__":
    main()
