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

import numpy as np

from .timing import (  # noqa: F401 (public here too: bench.time_calls, bench.available_cores, ...)
    FPS_BASIS,
    available_cores,
    peak_rss_mb,
    percentiles,
    test_frame,
    time_calls,
    time_interleaved,
)


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
