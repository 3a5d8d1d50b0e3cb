"""Which training fit makes every consumer give edge_runtime's answers: MediaPipe Tasks' ImageClassifier,
the TFLite Task Library's ImageClassifier and edge_runtime, on every photo of two datasets, for models
trained three ways (everything else at the defaults: MobileNetV2 alpha 1.0, 160 px, ImageNet weights,
int8 + float32).

    python benchmarks/bench_consumers.py [--out DIR] [--datasets flowers10,hotdog] [--variants crop,squash,mpfit]
        [--mediapipe-python PY] [--tasklib-python PY] [--json FILE] [--seed S | --seeds 42,1,2,...]

Variants (one `edgetl build` each, run one at a time, reused when DIR already holds them; ``squash``, ``mpfit``,
``both``, ``views`` and ``mpfit_aug`` are built with ``--central-fraction 1``, as when they were measured):
- ``default``: edgetl's default build (the ``mediapipe`` policy: MediaPipe's fit in training, parity and the
  runtime);
- ``crop``: ``--resize crop --central-fraction 1`` (centre crop, area-averaging downscale, the network sees the
  whole input: the default before ``mediapipe``, the accuracy issue 14 measures against);
- ``whole``: ``--central-fraction 1`` (the ``mediapipe`` policy with the network seeing the whole frame: the
  default before the central crop moved into the model);
- ``cropc``: ``--resize crop`` (the centre crop, then the model's own central crop);
- ``squash``: ``--resize squash`` (the whole frame, but edgetl's area-averaging sampling);
- ``mpfit``: trained on MediaPipe's exact fit. Every photo is first fitted to 160x160 by
  ``edge_runtime.preprocess.fit_like_mediapipe`` (MediaPipe's arithmetic) and written as a lossless PNG
  (same folders and names, so the seeded split picks the same photos), then built with ``--resize squash``,
  which leaves a 160x160 photo untouched: the model sees exactly MediaPipe's pixels in training, parity and
  calibration, and nothing else of edgetl changes;
- ``both``: trained on views fitted both ways: the split of the ``crop`` run (its split.json) is written out
  as train/val/test folders; every training photo appears twice (fitted by fit_like_mediapipe, and centre-
  cropped by edgetl's ``crop`` fit), validation and test photos once (fit_like_mediapipe); built with
  ``--resize squash`` (identity on those 160x160 files). The test split is the crop run's test split;
- ``views``: the default build with ``--train-views both`` (edgetl's own build option for ``both``: every
  training photo also centre-cropped, in stage 1 and stage 2; its split is the default run's);
- ``mpfit_aug``: ``mpfit`` with ``--augment`` (flip, crop, light views in stage 1, on the fly in stage 2).

Datasets: ``flowers10`` (800 photos, no split: edgetl's seeded 80/10/10) and ``hotdog`` (its given train/val
split, 250 photos; test accuracy = val accuracy, one photo = 2 points).

Evaluation, on every photo of the dataset (the ORIGINAL files), for each model: the photos are decoded once
(``preprocess.decode_image``, EXIF applied) and every consumer gets those same RGB pixels, so only the
fitting and the interpreter differ:
- ``edge``: edge_runtime (ai-edge-litert), the model's own policy as a device runs it (``Classifier.probabilities``);
- ``edge-mp``: edge_runtime fed ``fit_like_mediapipe`` (what edge_runtime would answer if it fitted the model
  as MediaPipe does);
- ``MP``: MediaPipe Tasks (in its own environment, default /work/venv-mediapipe or .venv-test-mediapipe);
- ``TL``: the TFLite Task Library 0.4.4 (``tflite-support``, own environment with NumPy < 2 and protobuf < 4,
  default /work/venv-tflite-support); left out when that environment is missing.
Printed per dataset, variant and mode: edgetl's test accuracy (report.json), each consumer's accuracy over all
photos, and top-1 agreements MP/edge, MP/edge-mp, TL/edge, TL/MP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT, SHARED, edgetl, imagenet_env, need_shared

DATASETS = {"flowers10": SHARED / "datasets" / "flowers10", "hotdog": SHARED / "datasets" / "hotdog"}
VARIANTS = ("default", "crop", "whole", "cropc", "squash", "mpfit", "both", "views", "mpfit_aug")
MODES = ("int8", "float32")
SIZE = 160


def photos_of(data: Path) -> list:
    """[(relative path, class name)] of every photo, sorted; class folders directly or under train/val/test."""
    out = []
    tops = [d for d in sorted(data.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    split_layout = {d.name for d in tops} <= {"train", "val", "test"}
    for top in tops:
        for c in ([x for x in sorted(top.iterdir()) if x.is_dir()] if split_layout else [top]):
            for f in sorted(c.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    out.append((str(f.relative_to(data)), c.name))
    return out


def prefit(data: Path, dest: Path) -> Path:
    """``data`` with every photo fitted by fit_like_mediapipe to SIZE x SIZE, as PNG (lossless)."""
    from PIL import Image

    from edge_runtime import preprocess

    if (dest / ".complete").is_file():
        return dest
    for rel, _ in photos_of(data):
        out = (dest / rel).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        px = preprocess.fit_like_mediapipe(preprocess.decode_image(data / rel), (SIZE, SIZE))
        Image.fromarray(px).save(out, "PNG")
    (dest / ".complete").write_text("ok\n")
    return dest


def both_views(data: Path, crop_run: Path, dest: Path) -> Path:
    """The crop run's split as train/val/test folders: training photos fitted both ways, the others by
    fit_like_mediapipe only."""
    from PIL import Image

    from edge_runtime import preprocess

    if (dest / ".complete").is_file():
        return dest
    split = json.loads((crop_run / "split.json").read_text())
    for part, rows in split["files"].items():
        for rel, label in rows:
            img = preprocess.decode_image(data / rel)
            cls = split["classes"][label]
            stem = Path(rel).stem
            (dest / part / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(preprocess.fit_like_mediapipe(img, (SIZE, SIZE))).save(dest / part / cls / f"{stem}.png")
            if part == "train":
                Image.fromarray(preprocess.fit(img, (SIZE, SIZE), "crop")).save(dest / part / cls / f"{stem}.crop.png")
    (dest / ".complete").write_text("ok\n")
    return dest


def build(out: Path, name: str, data: Path, variant: str, seed: int | None = None) -> Path:
    tag = "" if seed is None else f"_s{seed}"
    run = out / "runs" / f"{name}_{variant}{tag}"
    if all((run / f"model_{m}.tflite").is_file() for m in MODES) and (run / "report.json").is_file():
        print(f"reusing {run}", flush=True)
        return run
    if variant in ("mpfit", "mpfit_aug"):
        src = prefit(data, out / "prefit" / name)
    elif variant == "both":
        src = both_views(data, build(out, name, data, "crop", seed), out / "both" / f"{name}{tag}")
    else:
        src = data
    args = ["build", src, "--out", run, "--alpha", "1.0", "--image-size", str(SIZE), "--weights", "imagenet",
            "--force"] + {"crop": ["--resize", "crop", "--central-fraction", "1"], "default": [],
                      "whole": ["--central-fraction", "1"], "cropc": ["--resize", "crop"],
                      "views": ["--train-views", "both", "--central-fraction", "1"]}.get(
                          variant, ["--resize", "squash", "--central-fraction", "1"]) + \
        (["--seed", str(seed)] if seed is not None else []) + (["--augment"] if variant == "mpfit_aug" else [])
    for m in MODES:
        args += ["--quantize", m]
    t = time.perf_counter()
    r = edgetl(*args, env=imagenet_env())
    print(f"built {run} in {time.perf_counter() - t:.0f} s, exit {r.returncode}", flush=True)
    return run


def decode_all(data: Path, dest: Path) -> dict:
    """Every photo decoded once into one raw file (the same pixels for every consumer): an index
    {"file", "photos": [{rel, label, offset, shape}]}."""
    from edge_runtime import preprocess

    index_path = dest.with_suffix(".json")
    if index_path.is_file():
        return json.loads(index_path.read_text())
    rows, off = [], 0
    with open(dest, "wb") as f:
        for rel, label in photos_of(data):
            a = preprocess.decode_image(data / rel)
            f.write(a.tobytes())
            rows.append({"rel": rel, "label": label, "offset": off, "shape": list(a.shape)})
            off += a.nbytes
    index = {"file": str(dest), "photos": rows}
    index_path.write_text(json.dumps(index))
    return index


def photo_key(rel: str) -> str:
    """A photo's class folder and stem, the same for the original file and its prefitted copies."""
    p = Path(rel)
    return f"{p.parent.name}/{p.stem.removesuffix('.crop')}"


def heldout_mask(run: Path, index: dict):
    """True for the photos of the index in the run's validation and test splits (never trained on)."""
    import numpy as np

    split = json.loads((run / "split.json").read_text())
    keys = {photo_key(rel) for part, rows in split["files"].items() if part != "train" for rel, _ in rows}
    return np.array([photo_key(p["rel"]) in keys for p in index["photos"]])


def iter_pixels(index: dict):
    import numpy as np

    raw = np.memmap(index["file"], np.uint8, "r")
    for p in index["photos"]:
        n = int(np.prod(p["shape"]))
        yield np.array(raw[p["offset"] : p["offset"] + n]).reshape(p["shape"])


# ------------------------------------------------------------------ consumers


def top1_edge(model: str, index: dict) -> dict:
    import numpy as np

    from edge_runtime import Classifier
    from edge_runtime.preprocess import fit_like_mediapipe

    clf = Classifier(model, num_threads=2, warn=False)
    own, emu = [], []
    for img in iter_pixels(index):
        own.append(int(np.argmax(clf.probabilities(img))))
        emu.append(int(np.argmax(clf.run_tensor(clf.from_pixels(fit_like_mediapipe(img, clf.input_size))))))
    return {"labels": clf.labels, "edge": own, "edge-mp": emu}


def worker_mediapipe(spec: dict) -> dict:
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import BaseOptions, vision

    out = {}
    for model in spec["models"]:
        opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=-1)
        tops = []
        with vision.ImageClassifier.create_from_options(opts) as c:
            for img in iter_pixels(spec["index"]):
                r = c.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
                cats = r.classifications[0].categories  # sorted by score, ties: lower index first
                best = max(c.score for c in cats)
                tops.append(min(c.index for c in cats if c.score == best))
        out[model] = tops
    return out


def worker_tasklib(spec: dict) -> dict:
    import numpy as np
    from tflite_support.task import core, processor, vision

    out = {}
    for model in spec["models"]:
        opts = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=model, num_threads=2),
                                             classification_options=processor.ClassificationOptions(max_results=-1))
        c = vision.ImageClassifier.create_from_options(opts)
        tops = []
        for img in iter_pixels(spec["index"]):
            r = c.classify(vision.TensorImage.create_from_array(np.ascontiguousarray(img)))
            cats = r.classifications[0].categories
            best = max(x.score for x in cats)
            tops.append(min(x.index for x in cats if x.score == best))
        out[model] = tops
    return out


def run_worker(python: Path, kind: str, models: list, index: dict, tmp: Path) -> dict | None:
    if python is None or not Path(python).exists():
        return None
    spec_path, out_path = tmp / f"{kind}_spec.json", tmp / f"{kind}_out.json"
    spec_path.write_text(json.dumps({"models": models, "index": index}))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t = time.perf_counter()
    r = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", kind, str(spec_path), str(out_path)],
                       check=False, capture_output=True, text=True, env=env,
                       timeout=7200)
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
        print(f"({kind} failed: exit {r.returncode}; left out)")
        return None
    print(f"{kind}: {len(models)} models in {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(out_path.read_text())


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-bench-consumers")
    ap.add_argument("--datasets", default="flowers10,hotdog")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    default_mp = next((p for p in (Path("/work/venv-mediapipe/bin/python"), ROOT / ".venv-test-mediapipe/bin/python")
                       if p.exists()), None)
    ap.add_argument("--mediapipe-python", type=Path, default=default_mp)
    ap.add_argument("--tasklib-python", type=Path, default=Path("/work/venv-tflite-support/bin/python"))
    ap.add_argument("--seed", type=int, default=None, help="--seed for every build (default: edgetl's, 42)")
    ap.add_argument("--seeds", default=None,
                    help="several seeds, comma-separated: every variant built and measured once per seed, then "
                         "each variant's test photos right against crop's, per seed and on average")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, spec, out = args.worker
        fn = {"mediapipe": worker_mediapipe, "tasklib": worker_tasklib}[kind]
        Path(out).write_text(json.dumps(fn(json.loads(Path(spec).read_text()))))
        return
    need_shared()
    import numpy as np

    args.out.mkdir(parents=True, exist_ok=True)
    names = [d for d in args.datasets.split(",") if d]
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(x) for x in args.seeds.split(",") if x] if args.seeds else [args.seed]
    results = {}
    for seed, name in ((s, n) for s in seeds for n in names):
        data = DATASETS[name]
        runs = {v: build(args.out, name, data, v, seed) for v in variants}
        index = decode_all(data, args.out / f"{name}_pixels.raw")
        truth_names = [p["label"] for p in index["photos"]]
        models = [str(runs[v] / f"model_{m}.tflite") for v in variants for m in MODES]
        t = time.perf_counter()
        edge = {m: top1_edge(m, index) for m in models}
        print(f"edge_runtime: {len(models)} models in {time.perf_counter() - t:.0f} s", flush=True)
        mp = run_worker(args.mediapipe_python, "mediapipe", models, index, args.out) or {}
        tl = run_worker(args.tasklib_python, "tasklib", models, index, args.out) or {}
        for v in variants:
            rep = json.loads((runs[v] / "report.json").read_text())
            for m in MODES:
                path = str(runs[v] / f"model_{m}.tflite")
                e = edge[path]
                truth = np.array([e["labels"].index(x) for x in truth_names])
                own, emu = np.array(e["edge"]), np.array(e["edge-mp"])
                held = heldout_mask(runs[v], index)
                r = {"n": len(truth), "test_n": rep["tflite"][m].get("test_n"),
                     "edgetl_test_accuracy": rep["tflite"][m].get("test_accuracy"),
                     "keras_test_accuracy": (rep.get("keras") or {}).get("test_accuracy"),
                     "edge_accuracy": float((own == truth).mean()), "edge_mp_accuracy": float((emu == truth).mean()),
                     "heldout_n": int(held.sum()), "edge_heldout_accuracy": float((own == truth)[held].mean())}
                if path in mp:
                    a = np.array(mp[path])
                    r.update({"mp_accuracy": float((a == truth).mean()), "mp_edge_agreement": float((a == own).mean()),
                              "mp_heldout_accuracy": float((a == truth)[held].mean()),
                              "mp_edge_mp_agreement": float((a == emu).mean())})
                if path in tl:
                    b = np.array(tl[path])
                    r.update({"tl_accuracy": float((b == truth).mean()), "tl_edge_agreement": float((b == own).mean()),
                              "tl_edge_mp_agreement": float((b == emu).mean())})
                    if path in mp:
                        r["tl_mp_agreement"] = float((b == np.array(mp[path])).mean())
                results[f"{name}/{v}/{m}" + ("" if seed is None else f"/s{seed}")] = r

    def f(x, w=7):
        return f"{'-':>{w}}" if x is None else f"{x:>{w}.4f}"

    print("\nMobileNetV2 1.0, 160 px, ImageNet weights, default training; every photo of each dataset, same decoded "
          "pixels for every consumer")
    print(f"{'dataset/variant/mode':29} {'n':>4} {'test acc':>8} {'edge':>7} {'MP':>7} {'TL':>7} {'edge-mp':>7} "
          f"{'MP=edge':>7} {'MP=e-mp':>7} {'TL=edge':>7} {'TL=e-mp':>7} {'TL=MP':>7} {'held n':>6} {'edge h':>7} "
          f"{'MP h':>7}")
    for k, r in results.items():
        print(f"{k:29} {r['n']:>4} {f(r['edgetl_test_accuracy'], 8)} {f(r['edge_accuracy'])} {f(r.get('mp_accuracy'))} "
              f"{f(r.get('tl_accuracy'))} {f(r['edge_mp_accuracy'])} {f(r.get('mp_edge_agreement'))} "
              f"{f(r.get('mp_edge_mp_agreement'))} {f(r.get('tl_edge_agreement'))} {f(r.get('tl_edge_mp_agreement'))} "
              f"{f(r.get('tl_mp_agreement'))} {r['heldout_n']:>6} {f(r['edge_heldout_accuracy'])} "
              f"{f(r.get('mp_heldout_accuracy'))}")
    print("test acc: edgetl's test-split accuracy of the TFLite model (report.json); edge, MP, TL: accuracy over all "
          "photos of edge_runtime (the model's own policy), MediaPipe Tasks, the Task Library; edge-mp: edge_runtime "
          "fed fit_like_mediapipe; X=Y: top-1 agreement; held n, edge h, MP h: the run's validation + test photos "
          "(never trained on) and the accuracy of edge_runtime and MediaPipe on them")
    if len(seeds) > 1 and "crop" in variants:
        print_against_crop(results, names, variants, seeds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def right(r: dict) -> int | None:
    """Test photos a model got right (edgetl's test split, report.json)."""
    if r.get("edgetl_test_accuracy") is None or not r.get("test_n"):
        return None
    return round(r["edgetl_test_accuracy"] * r["test_n"])


def print_against_crop(results: dict, names: list, variants: list, seeds: list):
    """Per dataset, variant and mode: test photos right minus crop's, per seed, and their mean (the figure
    issue 14's "not lower by more than one test photo" is about), with MediaPipe's mean agreement."""
    print("\nTest photos right against crop's (edgetl's test split; the split of each variant is regrouped the "
          "same way, the counts may differ by a photo)")
    for name in names:
        for v in (x for x in variants if x != "crop"):
            for m in MODES:
                d, agree = [], []
                for s in seeds:
                    r, c = results.get(f"{name}/{v}/{m}/s{s}"), results.get(f"{name}/crop/{m}/s{s}")
                    if r and c and right(r) is not None and right(c) is not None:
                        d.append(right(r) - right(c))
                    if r and r.get("mp_edge_agreement") is not None:
                        agree.append(r["mp_edge_agreement"])
                if d:
                    mp = f", MP=edge mean {sum(agree) / len(agree):.4f} (min {min(agree):.4f})" if agree else ""
                    print(f"{name}/{v}/{m}: {' '.join(f'{x:+d}' for x in d)}; mean {sum(d) / len(d):+.2f} over "
                          f"{len(d)} seeds{mp}")


if __name__ == "__main__":
    main()
