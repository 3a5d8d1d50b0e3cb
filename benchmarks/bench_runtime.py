"""The device side, on ../shared/models/tf2_mobilenet_v2_1.0_224_ptq.tflite with a 640x480 frame.

Measured side by side in one run, at 1 and 2 threads:
  bare       interpreter.set_tensor + invoke + get_tensor on the already-resized 224x224 input
  classify   Classifier.classify on that same resized input (input mapping, dequantize, top-k)
  frame      Classifier.classify on the 640x480 BGR frame (adds the crop/resize and colour swap)
  camera     the headless camera loop on a 640x480 video file, per frame, against decode + classify
             measured separately on the same video
plus `import edge_runtime` (no TensorFlow loaded) and `edgetl --help` wall times.

    python benchmarks/bench_runtime.py [--runs 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import IMAGENET_LABELS, REF_PTQ, SHARED, need_shared


def p50(ms):
    return float(np.percentile(ms, 50))


def startup():
    code = ("import time, sys; t = time.perf_counter(); import edge_runtime; from edge_runtime import Classifier; "
            "dt = time.perf_counter() - t; print(dt, 'tensorflow' in sys.modules)")
    times, tf_loaded = [], False
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
        times.append(float(out[0]))
        tf_loaded |= out[1] == "True"
    helps = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from toolchain.cli import main; main(['--help'])"], capture_output=True)
        helps.append(time.perf_counter() - t)
    return min(times), tf_loaded, min(helps)


def make_video(path: Path, n: int = 200):
    import cv2

    from edge_runtime import preprocess

    rgb = preprocess.decode_image(SHARED / "images" / "grace_hopper.bmp")
    w = round(rgb.shape[1] * 480 / rgb.shape[0])
    frame = np.full((480, 640, 3), 128, np.uint8)
    frame[:, (640 - w) // 2 : (640 - w) // 2 + w] = cv2.resize(rgb, (w, 480), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    rng = np.random.default_rng(0)
    for i in range(n):
        vw.write(np.clip(bgr.astype(np.int16) + rng.integers(-8, 8), 0, 255).astype(np.uint8))
    vw.release()
    return bgr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--model", default=str(REF_PTQ))
    args = ap.parse_args()
    need_shared()
    import cv2

    from edge_runtime import camera
    from edge_runtime.bench import time_calls
    from edge_runtime.classifier import Classifier

    imp, tf_loaded, help_s = startup()
    print(f"import edge_runtime + Classifier: {imp * 1000:.0f} ms (TensorFlow loaded: {tf_loaded}); "
          f"`edgetl --help`: {help_s * 1000:.0f} ms wall")
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "hopper.avi"
        frame = make_video(video)
        print(f"model {Path(args.model).name}, frame 640x480, {args.runs} runs after {args.warmup} warm-up")
        print(f"{'threads':>7} {'bare p50':>9} {'classify p50':>12} {'ratio':>6} {'frame p50':>10} {'ratio':>6}"
              f" | {'decode':>7} {'classify':>9} {'sum':>6} {'loop':>6} {'ratio':>6}  (camera, ms/frame p50)")
        for threads in (1, 2):
            clf = Classifier(args.model, labels=IMAGENET_LABELS, num_threads=threads, warn=False)
            x = clf.prepare(frame, bgr=True)
            interp, i_in, i_out = clf._interp, clf._in_index, clf._out_index
            xb = x[None]

            def bare():
                interp.set_tensor(i_in, xb)
                interp.invoke()
                interp.get_tensor(i_out)

            # interleave the three measurements so that drift affects them alike
            bare_ms, cls_ms, frame_ms = [], [], []
            for _ in range(3):
                bare_ms += time_calls(bare, args.runs // 3, args.warmup)
                cls_ms += time_calls(lambda: clf.classify(x), args.runs // 3, args.warmup)
                frame_ms += time_calls(lambda: clf.classify(frame, bgr=True), args.runs // 3, args.warmup)

            # camera: decode alone, classify alone (on the decoded frames), then the loop
            cap = cv2.VideoCapture(str(video))
            frames, dec_ms = [], []
            while True:
                t = time.perf_counter()
                ok, f = cap.read()
                if not ok:
                    break
                dec_ms.append((time.perf_counter() - t) * 1000)
                frames.append(f)
            cap.release()
            cls_frames = []
            for f in frames:
                t = time.perf_counter()
                clf.top(clf.probabilities(f, bgr=True), 3)
                cls_frames.append((time.perf_counter() - t) * 1000)
            with open(os.devnull, "w") as devnull:
                s = camera.run(clf, str(video), headless=True, out=devnull)
            loop = p50(s.loop_ms[1:])
            sep = p50(dec_ms) + p50(cls_frames)
            print(f"{threads:7d} {p50(bare_ms):9.3f} {p50(cls_ms):12.3f} {p50(cls_ms) / p50(bare_ms):6.3f} "
                  f"{p50(frame_ms):10.3f} {p50(frame_ms) / p50(bare_ms):6.3f} | {p50(dec_ms):7.3f} "
                  f"{p50(cls_frames):9.3f} {sep:6.3f} {loop:6.3f} {loop / sep:6.3f}  "
                  f"({s.frames} frames, {s.as_dict()['mean_fps']:.0f} FPS)")
        print(f"backend {clf.model.backend}, XNNPACK {'on' if clf.model.delegated else 'off'}")


if __name__ == "__main__":
    main()
