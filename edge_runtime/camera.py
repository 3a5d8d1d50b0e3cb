"""The camera/video loop: read a frame, classify it, show or print the result.

Sources: a camera index (``0``), a video file, or a URL (RTSP/HTTP stream). A camera or stream that
cannot be opened, or stops delivering frames, is an error (exit 2); the end of a video file is a clean
stop with a summary. The loop does only what it must per frame: read, classify (fit + invoke), format.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgetlError


@dataclass
class Summary:
    source: str
    kind: str
    frames: int = 0
    seconds: float = 0.0
    latencies_ms: list = field(default_factory=list)  # classify only
    loop_ms: list = field(default_factory=list)  # read + classify + output
    ended: str = "max-frames"

    def as_dict(self) -> dict:
        lat = np.asarray(self.latencies_ms or [0.0])
        loop = np.asarray(self.loop_ms or [0.0])
        return {
            "source": self.source,
            "kind": self.kind,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "mean_fps": round(self.frames / self.seconds, 2) if self.seconds > 0 else 0.0,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p90": round(float(np.percentile(lat, 90)), 3),
            "loop_ms_p50": round(float(np.percentile(loop, 50)), 3),
            "ended": self.ended,
        }


class Smoother:
    """Moving average of the score vectors of the last N frames."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.window: deque = deque()
        self.total = None

    def add(self, p: np.ndarray) -> np.ndarray:
        if self.n == 1:
            return p
        if self.total is None:
            self.total = np.zeros_like(p, dtype=np.float64)
        self.window.append(p)
        self.total += p
        if len(self.window) > self.n:
            self.total -= self.window.popleft()
        return (self.total / len(self.window)).astype(np.float32)


def open_source(source: str):
    """(cv2.VideoCapture, kind) for "0", a video file or a URL; EdgetlError if it cannot be opened."""
    import cv2

    s = str(source)
    if s.isdigit():
        kind, cap = "camera", cv2.VideoCapture(int(s))
        if not cap.isOpened():
            raise EdgetlError(f"cannot open camera {s}: no such camera, or it is in use",
                              hint="check the camera is connected (ls /dev/video*), or pass a video file with --source")
    elif "://" in s:
        kind, cap = "stream", cv2.VideoCapture(s)
        if not cap.isOpened():
            raise EdgetlError(f"cannot open stream {s}", hint="check the URL and that the stream is live")
    else:
        p = Path(s)
        if not p.is_file():
            raise EdgetlError(f"video file not found: {s}", hint="pass a camera index (0), a video file or a URL")
        kind, cap = "file", cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise EdgetlError(f"cannot read video file {s}: not a video OpenCV can decode",
                              hint="convert it to MP4/AVI, or check the file is complete")
    return cap, kind


def _draw(cv2, frame, preds, fps):
    y = 28
    for i, p in enumerate(preds):
        text = f"{p.label} {p.score:.2f}"
        scale = 0.8 if i == 0 else 0.6
        cv2.putText(frame, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(frame, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        y += 26
    text = f"{fps:.1f} FPS"
    cv2.putText(frame, text, (10, frame.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(frame, text, (10, frame.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 1, cv2.LINE_AA)


def run(classifier, source="0", *, headless: bool = False, max_frames: int | None = None, smooth: int = 1,
        top_k: int = 3, out=None, window: str = "edgetl") -> Summary:
    """Run the loop until the video ends, ``max_frames`` are done, or the user quits (q / Esc)."""
    import cv2

    out = out or sys.stdout
    if not headless and sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY"):
        raise EdgetlError("no display to open a window on", hint="use --headless to print one JSON line per frame")
    cap, kind = open_source(source)
    summary = Summary(source=str(source), kind=kind)
    smoother = Smoother(smooth)
    fps = 0.0
    perf = time.perf_counter
    start = last = perf()
    try:
        while max_frames is None or summary.frames < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                if kind == "file":
                    summary.ended = "end-of-file"
                    break
                what = "camera" if kind == "camera" else "stream"
                if summary.frames == 0:
                    raise EdgetlError(f"{what} {source} opened but delivered no frame",
                                      hint="check the device works (another app may hold it)")
                raise EdgetlError(f"{what} {source} stopped delivering frames after {summary.frames}",
                                  hint="check the connection, then run again")
            t0 = perf()
            probs = smoother.add(classifier.probabilities(frame, bgr=True))
            preds = classifier.top(probs, top_k)
            t1 = perf()
            summary.frames += 1
            summary.latencies_ms.append((t1 - t0) * 1000.0)
            dt = t1 - last
            fps = (1.0 / dt if dt > 0 else 0.0) if fps == 0.0 else 0.9 * fps + 0.1 * (1.0 / max(dt, 1e-9))
            if headless:
                out.write(json.dumps({
                    "frame": summary.frames - 1,
                    "label": preds[0].label,
                    "score": round(preds[0].score, 5),
                    "top_k": [p.as_dict() for p in preds],
                    "latency_ms": round((t1 - t0) * 1000.0, 3),
                    "fps": round(fps, 2),
                }) + "\n")
                out.flush()
            else:
                _draw(cv2, frame, preds, fps)
                try:
                    cv2.imshow(window, frame)
                    key = cv2.waitKey(1) & 0xFF
                except cv2.error as e:
                    raise EdgetlError(f"cannot open a window ({str(e).strip().splitlines()[-1]})",
                                      hint="use --headless to print one JSON line per frame") from None
                if key in (ord("q"), 27):
                    summary.ended = "quit"
                    break
            now = perf()
            summary.loop_ms.append((now - last) * 1000.0)
            last = now
    finally:
        summary.seconds = perf() - start
        cap.release()
        if not headless:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    return summary
