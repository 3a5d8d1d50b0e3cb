"""`edgetl build` on ../shared/datasets/flowers10 (160 px, ImageNet weights), every quantization mode,
then `edgetl parity` of each TFLite model over all 800 photos.

Prints: total build time, the Keras test accuracy, and per mode: size, full-integer or not, the recipe,
parity over all 800 photos (accuracy drop, agreement, KL) and over the 80-photo test split, p50 latency
at 1 and 2 threads on this machine, conversion seconds, and the size ratio against float32.

    python benchmarks/bench_build.py [--out DIR] [--image-size 160]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLOWERS, edgetl, imagenet_env, need_shared

MODES = ("int8", "float16", "dynamic", "float32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="keep the run here (default: a temp folder, removed)")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--data", default=str(FLOWERS))
    args = ap.parse_args()
    need_shared()
    env = imagenet_env()
    tmp = None
    if args.out:
        run = Path(args.out)
    else:
        tmp = tempfile.mkdtemp(prefix="edgetl-bench-")
        run = Path(tmp) / "flowers"
    try:
        quantize = [x for m in MODES for x in ("--quantize", m)]
        t0 = time.perf_counter()
        r = edgetl("build", args.data, "--out", run, "--force", "--image-size", args.image_size, *quantize, env=env)
        total = time.perf_counter() - t0
        rep = json.loads((run / "report.json").read_text())
        k = rep["keras"]
        print(f"edgetl build {args.data} ({args.image_size} px, ImageNet weights): exit {r.returncode}, "
              f"{total:.1f} s wall (report: {rep['timing']['total_seconds']} s)")
        st = rep["stages"]
        print(f"  stage 1 {st['feature_extraction']['epochs']} epochs {st['feature_extraction']['seconds']} s; "
              f"stage 2 {st['fine_tune']['epochs']} epochs {st['fine_tune']['seconds']} s, kept {st['fine_tune']['kept']}")
        print(f"  Keras model: test accuracy {k['test_accuracy']:.4f} on {k['n']} photos, val {k['val_accuracy']:.4f}")
        rows = []
        f32 = rep["tflite"]["float32"]["size_bytes"]
        for mode in MODES:
            t = rep["tflite"][mode]
            p = json.loads(edgetl("parity", run / "model.keras", run / t["path"], args.data, "--json",
                                  env=env).stdout)
            rows.append((mode, t, p))
        print(f"  {'mode':8} {'size KB':>8} {'x f32':>6} {'full-int':>8} {'drop800':>8} {'agree800':>8} "
              f"{'KL800':>8} {'test acc':>8} {'drop80':>7} {'agree80':>7} {'p50 1t':>7} {'p50 2t':>7} "
              f"{'conv s':>6}  recipe")
        for mode, t, p in rows:
            print(f"  {mode:8} {t['size_bytes'] / 1024:8.0f} {f32 / t['size_bytes']:6.2f} {t['full_integer']!s:>8} "
                  f"{p['accuracy_drop_pt']:8.2f} {p['agreement']:8.4f} {p['kl_mean']:8.5f} "
                  f"{t['test_accuracy']:8.4f} {t.get('test_accuracy_drop_pt', 0):7.2f} {t.get('test_agreement', 0):7.4f} "
                  f"{t['latency_ms']['1']:7.2f} {t['latency_ms']['2']:7.2f} {t['convert_seconds']:6.1f}  "
                  f"{t.get('recipe', '-')}")
        print(f"  ('800' columns: `edgetl parity` over all {rows[0][2]['n']} photos; '80': the test split; "
              "latency: ms per image with the runtime Classifier on this machine)")
        print(f"  Keras model.keras p50 (1 image): {rows[0][2]['keras_latency_ms_p50']:.2f} ms")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
