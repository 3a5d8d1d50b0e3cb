"""What the framing costs in test accuracy, over many seeds: edgetl's stage-1 head (the model a build ships
when fine-tuning is not kept) trained and tested on photos framed each way, on cached base features.

    python benchmarks/bench_framing.py [--datasets flowers10,hotdog] [--seeds 20] [--out FILE]

Every photo is decoded once and framed these ways at 160 px: ``mp`` (MediaPipe Tasks' fit of the whole frame,
``fit_like_mediapipe``, what a phone app feeds), ``crop`` (edgetl's centre crop), ``pad`` (letterboxed: the whole
frame, undistorted), ``mpc`` (MediaPipe's fit to 200 px, then its central 160: what the default model's network
sees, ``--central-fraction 0.8``), ``cropc`` (the centre crop at 200 px, then its central 160: ``--resize crop``
with the default fraction) and ``mp_flip``/``crop_flip`` (mirrored). The MobileNetV2 1.0 base (ImageNet
weights, inference mode) gives each its pooled features, once. Then, per seed, one head per variant (``modeling.make_head`` and ``train.fit_head`` at edgetl's
defaults: early stopping on validation loss, best weights restored) is trained on the variant's training
views and counted on the test photos framed as the variant says:

- ``crop``: trained and tested on the centre crop (edgetl's measure of a ``--resize crop
  --central-fraction 1`` model, the default before ``mediapipe``);
- ``mpc``: the default (MediaPipe's fit, the model's central crop), trained and tested on it: what edgetl
  measures and what the phone sees;
- ``cropc``, ``pad``: trained and tested on those views;
- ``mp``: trained and tested on MediaPipe's fit of the whole frame (``--central-fraction 1``);
- ``crop>mp``: a crop-trained head tested on MediaPipe's fit (what a phone gets from a crop model);
- ``mp+crop``: trained on both views of every training photo (``--train-views both``'s stage 1), tested on
  MediaPipe's fit;
- ``all4``: both views and their mirror images, tested on MediaPipe's fit.

flowers10 (no split of its own) gets edgetl's seeded stratified 80/10/10 split per seed, so the seed changes
the test photos too; hotdog keeps its given split (val is also the test, 50 photos), so its seeds change the
initialisation and the batch order only. Printed: test photos right per variant, per seed and on average,
and each variant's mean difference from ``crop``. Near-duplicates are not regrouped here (a build does), so
the splits are a build's only up to that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import SHARED, imagenet_env, need_shared

SIZE = 160
MARGIN = 20  # the default model's crop at 160 px: a 200-px input, its central 160 (--central-fraction 0.8)
VARIANTS = {  # name: (training views, validation view, test view)
    "crop": (("crop",), "crop", "crop"),
    "mpc": (("mpc",), "mpc", "mpc"),
    "cropc": (("cropc",), "cropc", "cropc"),
    "pad": (("pad",), "pad", "pad"),
    "mp": (("mp",), "mp", "mp"),
    "crop>mp": (("crop",), "crop", "mp"),
    "mp+crop": (("mp", "crop"), "mp", "mp"),
    "all4": (("mp", "crop", "mp_flip", "crop_flip"), "mp", "mp"),
}


def photos(data: Path) -> tuple:
    """([(path, label, given split or None)], classes)."""
    tops = sorted(d for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
    given = {d.name for d in tops} <= {"train", "val", "test"}
    classes = sorted({c.name for t in tops for c in t.iterdir() if c.is_dir()} if given else {t.name for t in tops})
    out = []
    for top in tops:
        for c in (sorted(x for x in top.iterdir() if x.is_dir()) if given else [top]):
            out += [(f, classes.index(c.name), top.name if given else None)
                    for f in sorted(c.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return out, classes


def features(items: list, cfg, n_classes: int) -> dict:
    """Pooled base features of every photo, per framing."""
    import numpy as np

    from edge_runtime import preprocess
    from toolchain.core import modeling

    _, extractor, *_ = modeling.build(n_classes, cfg)
    views = {"mp": [], "crop": [], "mpc": [], "cropc": [], "pad": []}
    big, m = SIZE + 2 * MARGIN, slice(MARGIN, SIZE + MARGIN)
    for path, _, _ in items:
        img = preprocess.decode_image(path)
        views["mp"].append(preprocess.fit_like_mediapipe(img, (SIZE, SIZE)))
        views["crop"].append(preprocess.fit(img, (SIZE, SIZE), "crop"))
        views["mpc"].append(preprocess.fit_like_mediapipe(img, (big, big))[m, m])
        views["cropc"].append(preprocess.fit(img, (big, big), "crop")[m, m])
        views["pad"].append(preprocess.fit(img, (SIZE, SIZE), "pad"))
    out = {}
    for k, v in views.items():
        x = np.stack(v).astype(np.float32)
        out[k] = extractor.predict(x, batch_size=64, verbose=0)
        out[k + "_flip"] = extractor.predict(np.ascontiguousarray(x[:, :, ::-1]), batch_size=64, verbose=0)
    return out


def split_rows(items: list, n_classes: int, seed: int) -> dict:
    import numpy as np

    from toolchain.core.data import stratified_split

    if items[0][2] is not None:  # the given split; test = val when there is no test folder
        rows = {s: np.array([i for i, it in enumerate(items) if it[2] == s]) for s in ("train", "val", "test")}
        if not len(rows["test"]):
            rows["test"] = rows["val"]
        return rows
    parts = stratified_split([(i, it[1]) for i, it in enumerate(items)], n_classes, [0.8, 0.1, 0.1], seed)
    return {s: np.array([k for k, _ in parts[s]]) for s in ("train", "val", "test")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="flowers10,hotdog")
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    ap.add_argument("--out", type=Path, default=None, help="also write every count to this JSON file")
    args = ap.parse_args()
    need_shared()
    os.environ.update(imagenet_env())
    import numpy as np

    from toolchain.cfg import config
    from toolchain.core import modeling, train

    results = {}
    for name in [d for d in args.datasets.split(",") if d]:
        items, classes = photos(SHARED / "datasets" / name)
        y = np.array([it[1] for it in items])
        cfg = config.resolve(None, alpha=1.0, image_size=SIZE, central_fraction=1.0, weights="imagenet")
        t = time.perf_counter()
        feats = features(items, cfg, len(classes))
        print(f"{name}: {len(items)} photos, features of 4 framings in {time.perf_counter() - t:.0f} s", flush=True)
        counts = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            rows = split_rows(items, len(classes), seed)
            scfg = config.resolve(None, alpha=1.0, image_size=SIZE, weights="imagenet", seed=seed)
            for v, (tr, va, te) in VARIANTS.items():
                x = np.concatenate([feats[k][rows["train"]] for k in tr])
                yt = np.tile(y[rows["train"]], len(tr))
                _, keras = modeling.import_keras()
                keras.utils.set_random_seed(seed)
                head = modeling.make_head(x.shape[1], len(classes), scfg)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    train.fit_head(head, x, yt, feats[va][rows["val"]], y[rows["val"]], scfg)
                p = head.predict(feats[te][rows["test"]], verbose=0)
                counts[v].append(int((p.argmax(1) == y[rows["test"]]).sum()))
            print(f"  seed {seed}: " + "  ".join(f"{v} {c[-1]}" for v, c in counts.items()), flush=True)
        n_test = len(split_rows(items, len(classes), 0)["test"])
        print(f"{name}, {n_test} test photos, {args.seeds} seeds: mean test photos right (difference from crop)")
        for v, c in counts.items():
            d = np.array(c) - np.array(counts["crop"])
            print(f"  {v:8} {np.mean(c):6.2f}  ({d.mean():+.2f}; seeds below crop by more than one: "
                  f"{int((d < -1).sum())})")
        results[name] = {"test_n": n_test, "counts": counts}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
