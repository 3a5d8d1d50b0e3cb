"""Stage 1 with cached features against the classic recipe, on ../shared/datasets/flowers10.

Both start from the same decoded photos (the run's cache), the same ImageNet MobileNetV2 (alpha 1.0,
160 px), the same head initialisation, seed, batch size and 10 epochs (early stopping off, so both run
all 10):
  cached   edgetl's stage 1: base features computed once, head trained on them
  classic  the full graph (base frozen) fitted on the photos: the base runs on every photo every epoch
Prints both wall times (median of --repeat runs, alternating), both validation accuracies and the speed-up.

    python benchmarks/bench_stage1.py [--image-size 160] [--epochs 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLOWERS, imagenet_env, need_shared


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--data", default=str(FLOWERS))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    need_shared()
    os.environ.update(imagenet_env())

    from toolchain.cfg import config
    from toolchain.core import data
    from toolchain.core import modeling
    from toolchain.core import train

    cfg = config.resolve(None, image_size=args.image_size, epochs=args.epochs, patience=0, weights="imagenet")
    cached, classic = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        with contextlib.redirect_stderr(io.StringIO()):
            ds = data.build(args.data, run, cfg)
        n_tr, n_va = len(ds.rows("train")), len(ds.rows("val"))
        modeling.import_keras()
        for _ in range(args.repeat):  # alternate the two, so that machine drift affects both alike
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                model_a, sec, hist_a, _ = train.stage1(ds, cfg, run)
            cached.append(time.perf_counter() - t0)
            acc_a = float((modeling.predict(model_a, ds.images, ds.rows("val")).argmax(1) == ds.labels("val")).mean())

            model_b, *_ = modeling.build(len(ds.classes), cfg)
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                hist_b = train.fit_full_graph_frozen(model_b, ds, cfg)
            classic.append(time.perf_counter() - t0)
            acc_b = float((modeling.predict(model_b, ds.images, ds.rows("val")).argmax(1) == ds.labels("val")).mean())

    t_cached, t_classic = statistics.median(cached), statistics.median(classic)
    print(f"stage 1 on {args.data}: {n_tr} train / {n_va} val photos, {args.image_size} px, ImageNet MobileNetV2 "
          f"alpha 1.0, {args.epochs} epochs each, median of {args.repeat} runs")
    print(f"  cached features : {t_cached:7.1f} s  (last run: features {sec['feature_seconds']:.1f} s)  "
          f"val accuracy {acc_a:.4f}   runs: {', '.join(f'{t:.1f}' for t in cached)}")
    print(f"  classic (frozen full graph): {t_classic:7.1f} s  val accuracy {acc_b:.4f}   runs: "
          f"{', '.join(f'{t:.1f}' for t in classic)}")
    print(f"  speed-up {t_classic / t_cached:.1f}x, accuracy difference {100 * (acc_a - acc_b):+.2f} points "
          f"({len(hist_a['loss'])} and {len(hist_b['loss'])} epochs)")


if __name__ == "__main__":
    main()
