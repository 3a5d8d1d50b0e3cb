"""Which resize policy to train with for a MediaPipe app: top-1 agreement between MediaPipe Tasks'
ImageClassifier (raw photos: it squashes the whole frame, bilinear) and edge_runtime (the model's own
policy), for a `crop` model and a `squash` model, on all 800 flowers10 photos.

    python benchmarks/bench_mediapipe_policy.py [--out DIR] [--modes int8,float32]

Builds (or reuses, when DIR/crop and DIR/squash already hold them) two runs with the same options but
the resize policy: MobileNetV2 alpha 1.0 at 160 px, ImageNet weights from ../shared, default training.
Then, in the MediaPipe environment (`.venv-mediapipe`, made by tests/mediapipe/run.sh; --mediapipe-python
to point elsewhere), classifies every photo of flowers10 with both. Both are given the same decoded
pixels (edge_runtime.preprocess.decode_image: EXIF applied), so only the fitting differs. Prints, per
model: MediaPipe vs edge_runtime agreement, both accuracies, MediaPipe vs edge_runtime fed
`fit_like_mediapipe` (how well edgetl emulates MediaPipe's fit), and the estimate the build recorded in
report.json (`mediapipe_squash_agreement`, on the run's parity photos).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import FLOWERS, ROOT, edgetl, imagenet_env, need_shared  # noqa: E402

POLICIES = ("crop", "squash")


def build(out: Path, policy: str, modes) -> Path:
    run = out / policy
    if all((run / f"model_{m}.tflite").is_file() for m in modes) and (run / "report.json").is_file():
        print(f"reusing {run}")
        return run
    t = time.perf_counter()
    args = ["build", FLOWERS, "--out", run, "--alpha", "1.0", "--image-size", "160", "--weights", "imagenet",
            "--resize", policy, "--force"]
    for m in modes:
        args += ["--quantize", m]
    r = edgetl(*args, env=imagenet_env())
    print(f"built {run} ({policy}) in {time.perf_counter() - t:.0f} s, exit {r.returncode}")
    return run


MEASURE = r'''
import json, sys, numpy as np
import mediapipe as mp
from mediapipe.tasks.python import vision, BaseOptions
from edge_runtime import Classifier, preprocess
from edge_runtime.preprocess import fit_like_mediapipe

spec = json.loads(sys.argv[1])
photos = []
for c in sorted(p for p in __import__("pathlib").Path(spec["data"]).iterdir() if p.is_dir()):
    photos += [(f, c.name) for f in sorted(c.iterdir()) if f.is_file() and not f.name.startswith(".")]
out = {}
for path in spec["models"]:
    clf = Classifier(path, num_threads=2, warn=False)
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=1)
    rows = []
    with vision.ImageClassifier.create_from_options(opts) as mpc:
        for f, truth in photos:
            img = preprocess.decode_image(f)
            r = mpc.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            m_top = r.classifications[0].categories[0].index
            own = int(np.argmax(clf.probabilities(img)))
            emu = int(np.argmax(clf.run_tensor(clf.from_pixels(fit_like_mediapipe(img, clf.input_size)))))
            rows.append((clf.labels.index(truth), m_top, own, emu))
    a = np.array(rows)
    out[path] = {"n": len(a), "policy": clf.resize, "agreement": float((a[:, 1] == a[:, 2]).mean()),
                 "mediapipe_accuracy": float((a[:, 1] == a[:, 0]).mean()),
                 "edge_accuracy": float((a[:, 2] == a[:, 0]).mean()),
                 "emulation_agreement": float((a[:, 1] == a[:, 3]).mean()),
                 "estimate_800": float((a[:, 2] == a[:, 3]).mean())}
print(json.dumps(out))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgetl-bench-mediapipe"))
    ap.add_argument("--modes", default="int8,float32")
    ap.add_argument("--mediapipe-python", type=Path, default=ROOT / ".venv-mediapipe" / "bin" / "python")
    args = ap.parse_args()
    need_shared()
    if not args.mediapipe_python.exists():
        sys.exit(f"needs the MediaPipe environment ({args.mediapipe_python}): run bash tests/mediapipe/run.sh once")
    modes = [m for m in args.modes.split(",") if m]
    runs = {p: build(args.out, p, modes) for p in POLICIES}
    models = [str(runs[p] / f"model_{m}.tflite") for p in POLICIES for m in modes]
    t = time.perf_counter()
    r = subprocess.run([str(args.mediapipe_python), "-c", MEASURE, json.dumps({"data": str(FLOWERS), "models": models})],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=3600)
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
        sys.exit("measuring failed")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nMediaPipe {'(raw photos, its own squash)'} vs edge_runtime (the model's own policy), flowers10, "
          f"MobileNetV2 alpha 1.0, 160 px, ImageNet weights; measured in {time.perf_counter() - t:.0f} s")
    print(f"{'policy':7} {'mode':8} {'n':>4} {'agree':>7} {'acc MP':>7} {'acc edge':>8} {'MP=emul':>8} "
          f"{'est 800':>8} {'est run':>8}")
    for p in POLICIES:
        rep = json.loads((runs[p] / "report.json").read_text())
        for m in modes:
            x = res[str(runs[p] / f"model_{m}.tflite")]
            est = (rep.get("tflite") or {}).get(m, {}).get("mediapipe_squash_agreement")
            print(f"{p:7} {m:8} {x['n']:>4} {x['agreement']:>7.4f} {x['mediapipe_accuracy']:>7.4f} "
                  f"{x['edge_accuracy']:>8.4f} {x['emulation_agreement']:>8.4f} {x['estimate_800']:>8.4f} "
                  f"{'-' if est is None else f'{est:.4f}':>8}")
    print("agree: MediaPipe top-1 == edge_runtime top-1; acc: top-1 accuracy of each against the folder labels;\n"
          "MP=emul: MediaPipe == edge_runtime fed fit_like_mediapipe (the emulation); est 800: edge_runtime own\n"
          "policy == emulation on the 800 photos; est run: the build's report.json estimate (its parity photos).")


if __name__ == "__main__":
    main()
