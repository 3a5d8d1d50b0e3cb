"""Know your data, and say "unknown" (issue 16), on ../shared/datasets/flowers10 (160 px, ImageNet weights).

Part `data`: a copy of flowers10 with 5 photos of 05_crocus moved into 03_lily_valley and 3 photos
re-encoded at 90 % size into their own class (02_snowdrop, 08_tulip, 10_sunflower); `edgetl build` on it.
Prints how many of the 5 moved photos are in report.json `data.label_issues`, how many of the 3 copies
are in `data.near_duplicates` (and how many photos were regrouped), whether `misclassified` lists every
test photo a model gets wrong (each TFLite model checked again with edge_runtime on the photo files, the
Keras model against its test confusion matrix), and the diagnostics' seconds against the build's.

Part `unknown`: `edgetl build flowers10` and `edgetl build flowers10 --unknown DIR` with 200 photos of other
things (the hotdog set's training photos, both classes); on 50 held-out other photos (the hotdog set's
validation photos) the share answered `unknown` by edge_runtime (every model) and by MediaPipe Tasks
(every model it loads; `--mediapipe-python` an interpreter with mediapipe installed), and the flowers10
test accuracy of each model with and without --unknown (edge_runtime, the same test photos).

Part `flips` (after `data`, on its run; reused from --keep): how the label check does beyond the one
corruption of part `data`. The base's pooled features of every photo of that run (its stage-1 model, the
photos fitted by its policy, as the build computes them), the 5 moved photos given their true class back;
then `--flips N` random corruptions (seeded): 5 photos of a random class relabelled as another random
class, and edgetl's own label check (`toolchain.core.diagnose.label_issues`) on each. Prints how many of
the 5 each finds, the share finding at least 4, and how many photos it lists; and, on the part-`data`
corruption itself, the number found for 20 fold seeds, with one fold partition and with edgetl's
REPEATS (averaged).

    python benchmarks/bench_knowdata.py [--part data|unknown|flips|all] [--keep DIR] [--mediapipe-python PY]
                                        [--seeds 42,1,2]   # the unknown part once per seed, and the mean
                                        [--flips 30]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import FLOWERS, SHARED, edgetl, imagenet_env, need_shared

MOVE_FROM, MOVE_TO = "05_crocus", "03_lily_valley"
DUP_CLASSES = ("02_snowdrop", "08_tulip", "10_sunflower")
HOTDOG = SHARED / "datasets" / "hotdog"


def corrupted_copy(dst: Path) -> tuple:
    """flowers10 with 5 photos moved into another class and 3 re-encoded copies; (moved, pairs) as relpaths."""
    from PIL import Image

    shutil.copytree(FLOWERS, dst)
    moved = []
    for p in sorted((dst / MOVE_FROM).iterdir())[:5]:
        target = dst / MOVE_TO / f"moved_{p.name}"
        shutil.move(p, target)
        moved.append(f"{MOVE_TO}/{target.name}")
    pairs = []
    for c in DUP_CLASSES:
        p = sorted((dst / c).iterdir())[7]
        im = Image.open(p).convert("RGB")
        im = im.resize((int(im.width * 0.9), int(im.height * 0.9)), Image.BILINEAR)
        im.save(dst / c / f"dup_{p.stem}.jpg", quality=90)
        pairs.append({f"{c}/{p.name}", f"{c}/dup_{p.stem}.jpg"})
    return moved, pairs


def build(data, run: Path, env, *extra) -> tuple:
    t0 = time.perf_counter()
    r = edgetl("build", data, "--out", run, "--force", *extra, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(f"  (build exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]})")
    return json.loads((run / "report.json").read_text()), wall


def models_of(run: Path) -> list:
    return sorted(run.glob("model_*.tflite"))


def part_data(work: Path, env):
    print("== data: 5 photos moved, 3 re-encoded copies")
    moved, pairs = corrupted_copy(work / "flowers_bad")
    rep, wall = build(work / "flowers_bad", work / "run_bad", env)
    d = rep["data"]
    issues = [e["path"] for e in d["label_issues"]]
    found_moved = [m for m in moved if m in issues]
    print(f"moved photos among data.label_issues: {len(found_moved)}/5 "
          f"({len(issues)} issues listed; ranks {[issues.index(m) + 1 for m in found_moved]})")
    listed = [{p["a"], p["b"]} for p in d["near_duplicates"]]
    print(f"re-encoded copies among data.near_duplicates: {sum(p in listed for p in pairs)}/3 "
          f"({d['near_duplicate_pairs']} pairs in all; {len(d['regrouped'])} photo(s) regrouped)")
    split = json.loads((work / "run_bad" / "split.json").read_text())
    classes, test = split["classes"], split["files"]["test"]
    mis = {(e["path"]): e for e in rep["misclassified"]}
    from edge_runtime import Classifier

    missing, wrong_total = [], 0
    for m in models_of(work / "run_bad"):
        clf = Classifier(m, warn=False)
        mode = m.stem.replace("model_", "")
        for rel, lab in test:
            got = clf.classify_path(work / "flowers_bad" / rel, top_k=1)[0].label
            if got != classes[lab]:
                wrong_total += 1
                if mode not in (mis.get(rel) or {}).get("models", []):
                    missing.append((mode, rel))
    cm = rep["keras"]["confusion"]
    keras_wrong = sum(cm[i][j] for i in range(len(cm)) for j in range(len(cm)) if i != j)
    keras_listed = sum(1 for e in rep["misclassified"] if e["split"] == "test" and "keras" in e["models"])
    print(f"misclassified: {sum(1 for e in rep['misclassified'] if e['split'] == 'test')} test photos listed "
          f"({len(rep['misclassified'])} over the parity set, "
          f"{sum(1 for e in rep['misclassified'] if e.get('quantization_flip'))} quantization flips); "
          f"TFLite wrong answers on the test split checked with edge_runtime: {wrong_total}, not listed: "
          f"{len(missing)} {missing[:5]}; Keras wrong on the test split: {keras_wrong}, listed: {keras_listed}")
    diag = float(d.get("seconds") or 0) + float((rep.get("diagnostics") or {}).get("seconds") or 0)
    total = float(rep["timing"]["total_seconds"])
    print(f"diagnostics: {diag:.1f} s of a {total:.1f} s build ({100 * diag / total:.1f} %; wall {wall:.1f} s)")
    thumbs = [e["thumbnail"] for e in rep["misclassified"] + d["label_issues"] if e.get("thumbnail")]
    md = (work / "run_bad" / "report.md").read_text()
    ok = all((work / "run_bad" / t).is_file() and f"({t})" in md for t in thumbs)
    print(f"report.md: {len(thumbs)} thumbnails, all written and referenced: {ok}")


def part_flips(work: Path, env, n_flips: int):
    import numpy as np

    from edge_runtime import preprocess
    from toolchain.core import diagnose, modeling

    run, data = work / "run_bad", work / "flowers_bad"
    if not (run / "stage1.keras").is_file():
        part_data(work, env)
    print(f"== flips: the label check on {n_flips} random corruptions of 5 photos (features of {run})")
    split = json.loads((run / "split.json").read_text())
    classes = split["classes"]
    items = [(rel, lab) for part in ("train", "val", "test") for rel, lab in split["files"].get(part, [])]
    model = modeling.load(run / "stage1.keras")
    _, keras = modeling.import_keras()
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    size = int(model.inputs[0].shape[1])
    x = np.stack([preprocess.fit(preprocess.decode_image(data / rel), size, split.get("resize", "mediapipe"))
                  for rel, _ in items])
    feats = np.asarray(pooled.predict(x.astype(np.float32), batch_size=64, verbose=0))
    y = np.array([lab for _, lab in items], np.int64)
    moved = np.array([Path(rel).name.startswith("moved_") for rel, _ in items])
    def moved_found(seed, repeats):
        return sum(bool(moved[i]) for i, _, _ in diagnose.label_issues(feats, y, len(classes), seed, repeats)[0])

    for repeats in sorted({1, diagnose.REPEATS}):
        per_seed = [moved_found(seed, repeats) for seed in range(20)]
        print(f"part-data corruption, {repeats} fold partition(s): moved photos found per fold seed 0..19: "
              f"{per_seed}; at least 4 for {sum(f >= 4 for f in per_seed)}/20; fold seed 42 (the default): "
              f"{moved_found(42, repeats)}")
    y0 = y.copy()
    y0[moved] = classes.index(MOVE_FROM)
    rng = np.random.default_rng(7)
    found_n, listed_n = [], []
    for _ in range(n_flips):
        a, b = rng.choice(len(classes), 2, replace=False)
        flip = rng.choice(np.nonzero(y0 == a)[0], 5, replace=False)
        yy = y0.copy()
        yy[flip] = b
        found, _ = diagnose.label_issues(feats, yy, len(classes), 42)
        found_n.append(len({i for i, _, _ in found} & set(flip.tolist())))
        listed_n.append(len(found))
    print(f"random flips: found {found_n}; mean {np.mean(found_n):.2f} of 5; at least 4 in "
          f"{sum(f >= 4 for f in found_n)}/{n_flips}; photos listed: mean {np.mean(listed_n):.1f}")


MP_CODE = r"""
import json, sys
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision
model, photos = sys.argv[1], json.loads(sys.argv[2])
opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=1)
out = []
with vision.ImageClassifier.create_from_options(opts) as c:
    for p in photos:
        cats = c.classify(mp.Image.create_from_file(p)).classifications[0].categories
        out.append(cats[0].category_name if cats else "")
print(json.dumps(out))
"""


def part_unknown(work: Path, env, mp_python: str | None, seeds=(None,)):
    print("== unknown: 200 photos of other things, 50 held out")
    rng = random.Random(0)
    train = sorted(p for p in (HOTDOG / "train").rglob("*") if p.is_file())
    held = sorted(p for p in (HOTDOG / "val").rglob("*") if p.is_file())
    other = work / "other"
    other.mkdir()
    for i, p in enumerate(rng.sample(train, 200)):
        shutil.copy(p, other / f"{i:03d}_{p.name}")
    held = rng.sample(held, 50)
    summary = []
    for seed in seeds:
        summary += unknown_one_seed(work, env, mp_python, other, held, seed)
    if len(seeds) > 1:
        print("flowers10 test photos right, with --unknown against without, per seed:")
        for mode in sorted({m for m, *_ in summary}):
            rows = [(sd, a1, a0, n) for m, sd, a1, a0, n in summary if m == mode and a0 is not None]
            diffs = [a1 - a0 for _, a1, a0, _ in rows]
            print(f"  {mode}: " + ", ".join(f"seed {sd}: {a1} vs {a0} of {n}" for sd, a1, a0, n in rows)
                  + f"; mean difference {sum(diffs) / len(diffs):+.2f} photos")


def unknown_one_seed(work: Path, env, mp_python, other: Path, held: list, seed) -> list:
    """One seed's pair of builds (without, with --unknown); [(mode, seed, right with, right without, n)]."""
    flags = ["--seed", str(seed)] if seed is not None else []
    tag = f"_s{seed}" if seed is not None else ""
    if seed is not None:
        print(f"-- seed {seed}")
    plain_run, unk_run = work / f"run_plain{tag}", work / f"run_unknown{tag}"
    _, wall0 = build(FLOWERS, plain_run, env, *flags)
    rep, wall1 = build(FLOWERS, unk_run, env, "--unknown", other, *flags)
    u = rep.get("unknown") or {}
    print(f"threshold: {u.get('min_score')} ({u.get('source')}; {u.get('val_unknown')} held-out unknown photos in "
          f"val); builds {wall0:.1f} s without, {wall1:.1f} s with --unknown")
    from edge_runtime import Classifier

    s0 = json.loads((plain_run / "split.json").read_text())
    s1 = json.loads((unk_run / "split.json").read_text())
    t0 = sorted(tuple(x) for x in s0["files"]["test"])
    t1 = sorted(tuple(x) for x in s1["files"]["test"] if not Path(x[0]).is_absolute())
    print(f"same flowers10 test photos in both runs: {t0 == t1} ({len(t0)} photos)")
    classes = s0["classes"]
    out = []
    for m in models_of(unk_run):
        mode = m.stem.replace("model_", "")
        clf = Classifier(m, warn=False)
        said = [clf.classify_path(p, top_k=1)[0].label for p in held]
        acc1 = sum(clf.classify_path(FLOWERS / r, top_k=1)[0].label == classes[lab] for r, lab in t1)
        plain = plain_run / m.name
        acc0 = (sum(Classifier(plain, warn=False).classify_path(FLOWERS / r, top_k=1)[0].label == classes[lab]
                    for r, lab in t0) if plain.is_file() else None)
        line = (f"{mode}: edge_runtime answers unknown for {said.count('unknown')}/50 held-out other photos; "
                f"flowers10 test accuracy {acc1}/{len(t1)} with --unknown, {acc0}/{len(t0)} without")
        if mp_python:
            r = subprocess.run([mp_python, "-c", MP_CODE, str(m), json.dumps([str(p) for p in held])],
                               capture_output=True, text=True, check=False)
            if r.returncode == 0:
                got = json.loads(r.stdout.strip().splitlines()[-1])
                line += f"; MediaPipe Tasks: {sum(1 for g in got if g in ('', 'unknown'))}/50 unknown"
            else:
                line += f"; MediaPipe Tasks: not run ({r.stderr.strip().splitlines()[-1:]})"
        print(line)
        out.append((mode, seed, acc1, acc0, len(t1)))
    for name, rows in (u.get("models") or {}).items():
        print(f"  report.json unknown.models.{name}: " + "; ".join(
            f"{k}: in-class acc {v.get('in_class_accuracy')}, false-accept {v.get('false_accept_rate')}"
            for k, v in rows.items()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("data", "unknown", "flips", "all"), default="all")
    ap.add_argument("--flips", type=int, default=30, help="flips part: how many random corruptions")
    ap.add_argument("--keep", default=None, help="keep the copies and runs here (default: a temp folder)")
    ap.add_argument("--mediapipe-python", default=None, help="a Python with mediapipe (MediaPipe Tasks check)")
    ap.add_argument("--seeds", default=None, help="unknown part: one pair of builds per --seed, e.g. 42,1,2 "
                    "(default: one pair at edgetl's default seed)")
    args = ap.parse_args()
    need_shared()
    env = imagenet_env()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgetl-knowdata-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.part in ("data", "all"):
            part_data(work, env)
        if args.part in ("unknown", "all"):
            seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else (None,)
            part_unknown(work, env, args.mediapipe_python, seeds)
        if args.part in ("flips", "all"):
            part_flips(work, env, args.flips)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
