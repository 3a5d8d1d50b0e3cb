"""Is the model edgetl picks for this device really the fastest one that passed parity?

Builds flowers10 at 160 px (ImageNet weights) in every mode (or reuses --run), lets `edgetl bench RUN`
choose (measured now, not from the cache), then measures every passing model again in ONE interleaved
loop at its best thread count, independently of the choice, and prints

    picked latency / fastest passing latency      (target 1.00; within noise <= 1.05)

plus the whole table, so the figure can be checked by eye. Also prints int8 against float32 on this CPU
(int8 is not always the fastest: AVX2 laptops vs VNNI / ARM cores).

    python benchmarks/bench_choice.py [--run RUN | --keep DIR] [--rounds 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import FLOWERS, edgetl, imagenet_env, need_shared

MODES = ("int8", "float16", "dynamic", "float32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="an existing run with several modes (default: build one)")
    ap.add_argument("--keep", default=None, help="build the run here and keep it (default: a temp folder)")
    ap.add_argument("--rounds", type=int, default=300, help="interleaved rounds of the check")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="edgetl-bench-choice-")
    env = None
    try:
        if args.run:
            run = Path(args.run)
        else:
            need_shared()
            env = imagenet_env()
            run = Path(args.keep) if args.keep else Path(tmp) / "flowers"
            quantize = [x for m in MODES for x in ("--quantize", m)]
            r = edgetl("build", FLOWERS, "--out", run, "--force", "--image-size", 160, *quantize, env=env)
            print(f"built {run} (exit {r.returncode})")
        env = dict(env or os.environ, EDGETL_CACHE_DIR=str(Path(tmp) / "cache"))
        r = edgetl("bench", run, "--json", env=env)  # a run: measured now, and remembered
        choice = json.loads(r.stdout)["choice"]
        print(f"edgetl picked {Path(choice['path']).name} at {choice['threads']} thread(s): p50 {choice['p50_ms']:.3f} ms")

        from edge_runtime import choose
        from edge_runtime.classifier import Classifier

        passing = [c for c in choose.candidates(run) if c.passed]
        threads = choose.default_threads(choose.device()["cores"])
        table = choose.measure([(c.mode, c.path) for c in passing], threads, runs=args.rounds, warmup=20,
                               classifier_class=Classifier)
        best = {}
        for row in table:  # fastest first: the first row of a mode is its best thread count
            best.setdefault(row["name"], row)
        fastest = table[0]
        picked = next(r for r in table if r["name"] == choice["mode"] and r["threads"] == choice["threads"])
        print(f"{'mode':8} {'threads':>7} {'p50 ms':>8} {'p90 ms':>8}")
        for row in table:
            print(f"{row['name']:8} {row['threads']:7d} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f}")
        print(f"picked / fastest passing (one interleaved run of {args.rounds} rounds): "
              f"{picked['p50_ms'] / fastest['p50_ms']:.3f}  ({picked['name']}@{picked['threads']} vs "
              f"{fastest['name']}@{fastest['threads']})")
        if "int8" in best and "float32" in best:
            print(f"int8 / float32 on this CPU: {best['int8']['p50_ms'] / best['float32']['p50_ms']:.2f} "
                  f"({best['int8']['p50_ms']:.3f} vs {best['float32']['p50_ms']:.3f} ms); "
                  f"device: {json.dumps(choose.device())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
