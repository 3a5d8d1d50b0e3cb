"""Why the int8 gate fails on some hotdog builds: ../shared's ImageNet weights lie on the int8 grid.

../shared/weights were recovered by dequantizing a post-training-quantized TFLite MobileNetV2, so every
convolution's weights, with BatchNorm folded in as the converter folds it, are exact multiples of the
per-channel step (max |w| / 127) the converter picks again. Stage 2 moves them by a small fraction of a
step; quantization then rounds almost all of them back to where they were, and the int8 model is the
stage-1 base with the fine-tuned head, while the Keras model it is compared with has learned (mostly on
its training photos) what stage 2 taught it. Official float weights are not on any grid: a weight that
stage 2 moves crosses a rounding boundary with a probability of about the move, so int8 keeps stage 2
on average.

This script measures it side by side in one run:
  1. how far the weights file's folded kernels are from the int8 grid (0: on it; 0.25: uniform off it);
  2. an off-grid copy of the file (each folded weight moved by a seeded uniform draw in +-0.5 step, what
     rounding to the grid removed from the official weights; written to a temporary folder);
  3. `edgetl build DATASET --seed S --weights FILE` with both files for each seed: the int8 gate, its
     agreement and drop, the Keras test accuracy, and the share of the trained layers' int8 weights that
     stage 2 changed.

  python benchmarks/bench_weight_grid.py                      # hotdog, seeds 42,1,...,9
  python benchmarks/bench_weight_grid.py --dataset ../shared/datasets/flowers10 --seeds 42,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED, edgetl, imagenet_env, need_shared  # noqa: E402

sys.path.insert(0, str(ROOT))
NO_TOP = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
BN_EPS = 1e-3  # keras.applications.MobileNetV2's BatchNormalization epsilon


def _bn_name(conv: str) -> str:
    return {"Conv1": "bn_Conv1", "Conv_1": "Conv_1_bn"}.get(conv, conv + "_BN")


def _fold(kernel: np.ndarray, gamma, var, depthwise: bool) -> tuple[np.ndarray, np.ndarray]:
    """(folded kernel, fold factor in the kernel's broadcast shape)."""
    f = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + BN_EPS)
    f = f.reshape(1, 1, -1, 1) if depthwise else f.reshape(1, 1, 1, -1)
    return kernel.astype(np.float64) * f, f


def _step(w: np.ndarray, depthwise: bool) -> np.ndarray:
    """The converter's per-channel int8 step: max |w| of the output channel / 127."""
    red = (0, 1, 3) if depthwise else (0, 1, 2)
    s = np.abs(w).max(axis=red, keepdims=True) / 127.0
    return np.where(s > 0, s, 1.0)


def convs_of_h5(path: Path):
    """{conv name: (folded kernel, depthwise)} of a Keras legacy .h5 weights file."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            g = f[name]
            if name not in g or "kernel" not in g[name] or _bn_name(name) not in f:
                continue
            bn = f[_bn_name(name)][_bn_name(name)]
            k = g[name]["kernel"][()]
            dw = name.endswith("depthwise")
            out[name] = (_fold(k, bn["gamma"][()], bn["moving_variance"][()], dw)[0], dw)
    return out


def off_grid(convs) -> float:
    """Mean distance of the folded weights from the nearest multiple of their int8 step, in steps."""
    d = [np.abs(w / _step(w, dw) - np.round(w / _step(w, dw))).ravel() for w, dw in convs.values()]
    return float(np.concatenate(d).mean())


def write_off_grid_copy(src: Path, dst: Path, seed: int = 0) -> None:
    """``src`` with each convolution's folded weights moved by U(-0.5, 0.5) of their int8 step."""
    import h5py
    import shutil

    shutil.copyfile(src, dst)
    rng = np.random.default_rng(seed)
    with h5py.File(dst, "r+") as f:
        for name in list(f.attrs["layer_names"]):
            name = name.decode() if isinstance(name, bytes) else name
            g = f[name]
            if name not in g or "kernel" not in g[name] or _bn_name(name) not in f:
                continue
            bn = f[_bn_name(name)][_bn_name(name)]
            ds = g[name]["kernel"]
            k = ds[()]
            dw = name.endswith("depthwise")
            w, fac = _fold(k, bn["gamma"][()], bn["moving_variance"][()], dw)
            u = rng.uniform(-0.5, 0.5, size=k.shape)
            ds[...] = (k + u * _step(w, dw) / fac).astype(k.dtype)


def stage2_int8_changes(run: Path) -> float | None:
    """Share of the fine-tuned layers' int8 weights (BatchNorm folded) that differ between stage1.keras
    and model.keras; None when stage 2 was not kept."""
    from toolchain.core import modeling

    if not (run / "stage1.keras").is_file():
        return None
    a, b = (modeling.load(run / n).get_layer("mobilenetv2_base") for n in ("stage1.keras", "model.keras"))
    la, lb = {l.name: l for l in a.layers}, {l.name: l for l in b.layers}
    changed = total = 0
    for name, l in lb.items():
        k = getattr(l, "depthwise_kernel", None) if name.endswith("depthwise") else getattr(l, "kernel", None)
        if k is None or _bn_name(name) not in lb:
            continue
        ka = np.asarray(la[name].depthwise_kernel if name.endswith("depthwise") else la[name].kernel)
        kb = np.asarray(k)
        if np.array_equal(ka, kb) and np.array_equal(np.asarray(la[_bn_name(name)].gamma),
                                                     np.asarray(lb[_bn_name(name)].gamma)):
            continue  # frozen
        dw = name.endswith("depthwise")
        qs = []
        for layers, kern in ((la, ka), (lb, kb)):
            bn = layers[_bn_name(name)]
            w = _fold(kern, np.asarray(bn.gamma), np.asarray(bn.moving_variance), dw)[0]
            qs.append(np.round(w / _step(w, dw)))
        changed += int((qs[0] != qs[1]).sum())
        total += qs[0].size
    return changed / total if total else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "hotdog")
    ap.add_argument("--seeds", default="42,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--weights", type=Path, default=NO_TOP, help="a MobileNetV2 1.0 no-top .h5 (Keras layout)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-bench-grid")
    ap.add_argument("--json", type=Path, help="write every figure here")
    a = ap.parse_args()
    need_shared()
    a.out.mkdir(parents=True, exist_ok=True)
    shifted = a.out / "off_grid_no_top.h5"
    write_off_grid_copy(a.weights, shifted)
    files = {"on-grid (../shared)": a.weights, "off-grid copy": shifted}
    print("folded weights' mean distance from the int8 grid, in steps (0 on it, 0.25 uniform off it):")
    for label, p in files.items():
        print(f"  {label:22s} {off_grid(convs_of_h5(p)):.4f}  ({p})")
    env = imagenet_env()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for label, p in files.items():
        for s in seeds:
            run = a.out / f"{'on' if p == a.weights else 'off'}_s{s}"
            r = edgetl("build", a.dataset, "--out", run, "--seed", s, "--weights", p, "--force", env=env)
            rep = json.loads((run / "report.json").read_text())
            t = rep["tflite"]["int8"]
            row = {"weights": label, "seed": s, "exit": r.returncode, "int8_passed": t["passed"],
                   "agreement": t["agreement"], "drop_pt": t["accuracy_drop_pt"],
                   "keras_test_acc": rep["keras"]["test_accuracy"], "int8_test_acc": t.get("test_accuracy"),
                   "kept": rep["stages"]["fine_tune"].get("kept"),
                   "int8_changed_by_stage2": stage2_int8_changes(run)}
            rows.append(row)
            ch = row["int8_changed_by_stage2"]
            print(f"  {label:22s} seed {s:>2}: int8 {'pass' if t['passed'] else 'FAIL'} agreement "
                  f"{t['agreement']:.3f} drop {t['accuracy_drop_pt']:+.2f} pt; test acc Keras "
                  f"{row['keras_test_acc']:.3f} int8 {row['int8_test_acc']:.3f}; kept {row['kept']}; int8 weights "
                  f"changed by stage 2 {'-' if ch is None else f'{ch:.4f}'}", flush=True)
    print("\nper weights file, over seeds " + a.seeds + ":")
    for label in files:
        rs = [r for r in rows if r["weights"] == label]
        ch = [r["int8_changed_by_stage2"] for r in rs if r["int8_changed_by_stage2"] is not None]
        print(f"  {label:22s} int8 gate passed {sum(r['int8_passed'] for r in rs)}/{len(rs)}; agreement mean "
              f"{np.mean([r['agreement'] for r in rs]):.4f} min {min(r['agreement'] for r in rs):.3f}; drop mean "
              f"{np.mean([r['drop_pt'] for r in rs]):+.2f} pt; Keras test acc mean "
              f"{np.mean([r['keras_test_acc'] for r in rs]):.3f}; int8 weights changed by stage 2 mean "
              f"{np.mean(ch) if ch else float('nan'):.4f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
