"""Latency benchmark of a model on this device, per thread count.

Two figures per thread count, both on the same frame:
- ``classify``: ``Classifier.classify`` on a full frame (default 640x480, BGR as from a camera):
  fit + input mapping + invoke + dequantize + top-k. What an application sees.
- ``invoke``: set_tensor + invoke + get_tensor on the already-fitted input: the interpreter alone.

Both are timed in ONE interleaved loop (each iteration times one invoke and one classify, in alternating
order), so a change of load on the machine hits both figures alike and classify (which includes an
invoke) is not reported faster than invoke. FPS is 1000 / mean classify ms: the sustained rate of a loop
that classifies frame after frame (the mean, not the median, because every slow frame costs its time).
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np


def percentiles(ms) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0), 1)


def test_frame(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic, photo-like BGR frame (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=2)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


FPS_BASIS = "1000 / mean classify ms"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def time_calls(fn, runs: int, warmup: int) -> list:
    for _ in range(warmup):
        fn()
    perf = time.perf_counter
    out = []
    for _ in range(runs):
        t0 = perf()
        fn()
        out.append((perf() - t0) * 1000.0)
    return out


def time_interleaved(*fns, runs: int, warmup: int) -> list:
    """Time every function of ``fns`` in one loop: each round calls each once, in an order rotated from
    round to round (a, b, c, then b, c, a, ...), so none always runs on another's warm caches and a change
    of load hits them all alike. Returns one list of milliseconds per function."""
    n = len(fns)
    for i in range(warmup):
        for j in range(n):
            fns[(i + j) % n]()
    perf = time.perf_counter
    out = [[] for _ in fns]
    for i in range(runs):
        for j in range(n):
            k = (i + j) % n
            t0 = perf()
            fns[k]()
            out[k].append((perf() - t0) * 1000.0)
    return out


def bench(model, threads=(1, 2), runs: int = 200, warmup: int = 20, frame: np.ndarray | None = None,
          backend: str | None = None, labels=None, input_range=None, output=None) -> dict:
    from .classifier import Classifier

    frame = test_frame() if frame is None else frame
    results = []
    clf = None
    for t in threads:
        clf = Classifier(model, num_threads=t, backend=backend, labels=labels, input_range=input_range, warn=False,
                         output=output)
        tensor = clf.prepare(frame, bgr=True)[None]
        interp, i_in, i_out = clf._interp, clf._in_index, clf._out_index

        def bare():
            interp.set_tensor(i_in, tensor)
            interp.invoke()
            interp.get_tensor(i_out)

        cls, inv = time_interleaved(lambda: clf.classify(frame, bgr=True), bare, runs=runs, warmup=warmup)
        mean = float(np.mean(cls))
        results.append({
            "threads": t,
            "classify_ms": percentiles(cls),
            "invoke_ms": percentiles(inv),
            "fps": round(1000.0 / mean, 1) if mean > 0 else 0.0,
        })
    return {
        "model": str(clf.model.path),
        "size_bytes": clf.model.size_bytes,
        "backend": str(clf.model.backend),
        "xnnpack": clf.model.delegated,
        "input": clf.model.input.describe(),
        "frame": list(frame.shape),
        "runs": runs,
        "warmup": warmup,
        "cores": available_cores(),
        "fps_basis": FPS_BASIS,
        "results": results,
        "peak_rss_mb": peak_rss_mb(),
    }
