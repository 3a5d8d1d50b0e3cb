"""The camera/video loop: read a frame, classify it, show or print the result.

Sources: a camera index (``0``) or device (``/dev/video0``), a video file, or a URL (RTSP/HTTP stream). A
camera or stream that cannot be opened, or stops delivering frames, is an error (exit 2), and so is a
source that yields no frame at all (a text file, a page, an empty or undecodable video); the end of a
video file after at least one frame is a clean stop with a summary. The loop does only what it must per
frame: read, classify (fit + invoke), format.

The window overlay (``draw_overlay``) is text of one weight on a solid dark panel: crisp with OpenCV 4 and
5 alike (OpenCV 5 renders ``putText`` with a real font whose glyph widths change with the thickness, so
the classic "thick black, then thin white" outline came out as two misaligned copies of each label).
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

from . import nativelog
from .errors import EdgetlError, ImageError


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
    if not s.strip():
        raise _source_error(f"the video source is empty ({s!r})",
                            hint="pass a camera index (0), a video file or a URL")
    if s.isdigit():
        kind, cap = "camera", cv2.VideoCapture(int(s))
        if not cap.isOpened():
            raise _source_error(f"cannot open camera {s}: no such camera, or it is in use",
                              hint="check the camera is connected (ls /dev/video*), or pass a video file with --source")
    elif "://" in s:
        kind, cap = "stream", cv2.VideoCapture(s)
        if not cap.isOpened():
            raise _source_error(f"cannot open stream {s}", hint="check the URL and that the stream is live")
    elif _is_video_device(s):
        kind, cap = "camera", cv2.VideoCapture(s)
        if not cap.isOpened():
            raise _source_error(f"cannot open camera {s}: not a camera, or it is in use",
                              hint="check the device (v4l2-ctl --list-devices), or pass a camera index (0)")
    else:
        from .preprocess import check_regular

        p = Path(s)
        if not p.exists() and not p.is_symlink():
            raise _source_error(f"video file not found: {s}", hint="pass a camera index (0), a video file or a URL")
        if p.is_dir():
            raise _source_error(f"{s} is a folder, not a video", hint="pass a camera index (0), a video file or a URL")
        try:
            check_regular(p)  # never hand a named pipe or a device to the demuxer: it could block forever
        except ImageError as e:
            raise _source_error(f"cannot read video file {s}: {e.reason}",
                              hint="pass a camera index (0), a video file or a URL") from None
        kind, cap = "file", cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise _source_error(f"cannot read video file {s}: not a video OpenCV can decode",
                              hint="convert it to MP4/AVI, or check the file is complete")
    return cap, kind


def _is_video_device(s: str) -> bool:
    """A V4L2 camera device (/dev/videoN, or a /dev/v4l/by-id link to one); no other device is opened."""
    import stat

    if not s.startswith("/dev/") or not os.path.realpath(s).startswith("/dev/video"):
        return False
    try:
        return stat.S_ISCHR(os.stat(s).st_mode)
    except OSError:
        return False


PANEL = (32, 32, 32)  # BGR of the panel behind the text
TEXT = (255, 255, 255)
FPS_TEXT = (80, 255, 80)
FONT_SCALE = 0.6  # at 480 lines; scaled with the frame height


def _text_block(cv2, frame, lines, x, y, color, scale, thick, anchor_bottom=False):
    """Draw ``lines`` of text of one weight on one solid panel whose top-left (or bottom-left) corner is
    (x, y). The panel is sized from cv2.getTextSize plus a margin, so every glyph lands inside it."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(t, font, scale, thick) for t in lines]
    pad = max(3, int(round(8 * scale)))
    line_h = max(h + base for (_, h), base in sizes) + pad
    width = max(w for (w, _), _ in sizes) + 2 * pad
    height = line_h * len(lines) + pad
    if anchor_bottom:
        y -= height
    h_img, w_img = frame.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(w_img, x + width), min(h_img, y + height)
    if x1 <= x0 or y1 <= y0:
        return
    frame[y0:y1, x0:x1] = PANEL
    for i, (t, ((_, h), base)) in enumerate(zip(lines, sizes)):
        baseline_y = y + pad + i * line_h + h
        cv2.putText(frame, t, (x + pad, baseline_y), font, scale, color, thick, cv2.LINE_AA)


def draw_overlay(frame, preds, fps, cv2=None):
    """Draw the top-k labels (top left) and the FPS (bottom left) on a BGR frame, in place.

    Each block is white (FPS: green) text drawn once, at one thickness, with anti-aliasing, on a solid dark
    panel: readable on any picture and identical on OpenCV 4 and 5 (no outline drawn at another width)."""
    if cv2 is None:
        import cv2
    scale = FONT_SCALE * max(0.75, frame.shape[0] / 480.0)
    thick = max(1, int(round(scale * 1.6)))
    margin = max(4, int(round(8 * scale)))
    _text_block(cv2, frame, [f"{p.label} {p.score:.2f}" for p in preds], margin, margin, TEXT, scale, thick)
    _text_block(cv2, frame, [f"{fps:.1f} FPS"], margin, frame.shape[0] - margin, FPS_TEXT, scale, thick,
                anchor_bottom=True)


def _source_error(message: str, hint: str) -> EdgetlError:
    e = EdgetlError(message, hint=hint)
    e.from_source = True  # what FFmpeg/OpenCV printed may say why: run() adds its last line
    return e


def run(classifier, source="0", *, headless: bool = False, max_frames: int | None = None, smooth: int = 1,
        top_k: int = 3, out=None, window: str = "edgetl") -> Summary:
    """Run the loop until the video ends, ``max_frames`` are done, or the user quits (q / Esc).

    What FFmpeg, OpenCV and the GUI print on stderr is held back (``nativelog``): never shown before
    edgetl's own error; when the source fails, its last line is added to the error ("moov atom not
    found"). A single-threaded loop: the hold is process-wide."""
    out = out or sys.stdout
    if not headless and sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY"):
        raise EdgetlError("no display to open a window on", hint="use --headless to print one JSON line per frame")
    with nativelog.held() as native:
        try:
            return _loop(classifier, source, headless, max_frames, smooth, top_k, out, window, native)
        except EdgetlError as e:
            note = native.last() if getattr(e, "from_source", False) else ""
            if not note:
                raise
            raise EdgetlError(f"{e.message} (FFmpeg/OpenCV: {note})", hint=e.hint) from None


def _loop(classifier, source, headless, max_frames, smooth, top_k, out, window, native) -> Summary:
    import cv2

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
                    if summary.frames == 0:
                        raise _source_error(f"no frame could be read from {source}: it is not a video OpenCV "
                                          "can decode, or it is empty or damaged",
                                          hint="check that it plays in a video player; convert it to MP4 "
                                               "(H.264) or an MJPG AVI")
                    summary.ended = "end-of-file"
                    break
                what = "camera" if kind == "camera" else "stream"
                if summary.frames == 0:
                    raise _source_error(f"{what} {source} opened but delivered no frame",
                                      hint="check the device works (another app may hold it)")
                raise _source_error(f"{what} {source} stopped delivering frames after {summary.frames}",
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
                    "score": round(preds[0].score, 6),  # as every score edgetl prints in JSON
                    "top_k": [p.as_dict() for p in preds],
                    "latency_ms": round((t1 - t0) * 1000.0, 3),
                    "fps": round(fps, 2),
                }) + "\n")
                out.flush()
            else:
                draw_overlay(frame, preds, fps, cv2)
                try:
                    cv2.imshow(window, frame)
                    key = cv2.waitKey(1) & 0xFF
                except cv2.error as e:
                    raise _source_error(f"cannot open a window ({str(e).strip().splitlines()[-1]})",
                                      hint="use --headless to print one JSON line per frame") from None
                if key in (ord("q"), 27):
                    summary.ended = "quit"
                    break
            now = perf()
            summary.loop_ms.append((now - last) * 1000.0)
            last = now
            if summary.frames % 256 == 0:
                native.trim()
    finally:
        summary.seconds = perf() - start
        cap.release()
        if not headless:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    return summary
