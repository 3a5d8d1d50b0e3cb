"""Accuracy parity of a TFLite model against its Keras model, on the same preprocessed photos.

Both models see the same uint8 tensors, made once by the runtime's preprocessing: the Keras model takes
them as float (mapped to its input range), the TFLite model through the runtime's Classifier exactly as
a device would (its input mapping, dequantization and all).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime import preprocess
from edge_runtime.errors import EdgetlError

from toolchain.core import data as data_mod
from toolchain.core import metrics
from toolchain.core import modeling
from toolchain.rundir import runfolder
from toolchain.rundir import schema
from toolchain import ui


def keras_probabilities(model, tensors, value_range=(0.0, 255.0), batch_size: int = 32, desc: str | None = None):
    lo, hi = value_range
    a = (hi - lo) / 255.0
    out = []
    n = len(tensors)
    bar = ui.Progress(n, desc) if desc else None
    for s in range(0, n, batch_size):
        x = np.asarray(tensors[s : s + batch_size]).astype(np.float32)
        if (lo, hi) != (0.0, 255.0):
            x = x * np.float32(a) + np.float32(lo)
        out.append(np.asarray(model.predict_on_batch(x), np.float32))
        if bar:
            bar.update(len(x))
    if bar:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def tflite_probabilities(clf, tensors, batch_size: int = 32, desc: str | None = None):
    out = []
    n = len(tensors)
    bar = ui.Progress(n, desc) if desc else None
    for s in range(0, n, batch_size):
        chunk = [clf.from_pixels(np.asarray(t)) for t in tensors[s : s + batch_size]]
        out.append(clf.run_tensors(chunk, batch_size))
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, clf.num_classes), np.float32)


def tflite_latency(path, tensor, threads=(1, 2), runs: int = 50, warmup: int = 5, **clf_kwargs) -> dict:
    """p50 ms of the runtime Classifier on one prepared input, per thread count."""
    from edge_runtime.bench import time_calls
    from edge_runtime.classifier import Classifier

    out = {}
    for t in threads:
        clf = Classifier(path, num_threads=t, warn=False, **clf_kwargs)
        x = clf.from_pixels(tensor)
        out[str(t)] = round(float(np.percentile(time_calls(lambda: clf.run_tensor(x), runs, warmup), 50)), 3)
    return out


def keras_latency(model, tensor, runs: int = 20, warmup: int = 3) -> float:
    x = np.asarray(tensor, np.float32)[None]
    for _ in range(warmup):
        model.predict_on_batch(x)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        ts.append((time.perf_counter() - t0) * 1000)
    return round(float(np.percentile(ts, 50)), 3)


def compare(p_keras, p_tflite, y, classes) -> dict:
    """Parity figures plus each model's accuracy and the per-class confusion change."""
    out = metrics.parity(p_keras, p_tflite, y)
    if y is not None:
        ck = metrics.classification(y, p_keras, classes)
        ct = metrics.classification(y, p_tflite, classes)
        out["confusion_keras"] = ck["confusion"]
        out["confusion"] = ct["confusion"]
        out["confusion_change"] = (np.asarray(ct["confusion"]) - np.asarray(ck["confusion"])).tolist()
        out["per_class_recall_change"] = {
            c: (None if ck["per_class"][c]["recall"] is None else
                round(ct["per_class"][c]["recall"] - ck["per_class"][c]["recall"], 4))
            for c in classes
        }
    return out


def gate(result: dict, max_drop: float, min_agreement: float) -> tuple:
    reasons = []
    if result.get("nonfinite_keras"):
        reasons.append(f"the Keras model gives NaN/infinite scores on {result['nonfinite_keras']} of {result['n']} "
                       "photos (training diverged?)")
    if result.get("nonfinite_tflite"):
        reasons.append(f"the TFLite model gives NaN/infinite scores on {result['nonfinite_tflite']} of "
                       f"{result['n']} photos")
    drop = result.get("accuracy_drop_pt")
    if drop is not None and drop > max_drop:
        reasons.append(f"accuracy drop {drop:.2f} pt > {max_drop:g} pt")
    if result["agreement"] < min_agreement:
        reasons.append(f"top-1 agreement {result['agreement']:.4f} < {min_agreement:g}")
    return (not reasons), "; ".join(reasons)


# ------------------------------------------------------------------ the `edgetl parity` command


def load_folder(data_dir, size, policy, classes=None, progress: str = "reading photos"):
    """(tensors uint8 (N,S,S,3), labels or None, paths, skipped) for every photo under ``data_dir``.

    With class folders (or train/val/test folders of them) the labels come from the folder names, which
    must be labels of the model; a flat folder of photos gives no labels (agreement only)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise EdgetlError(f"data folder not found: {d}", hint="pass a folder of photos (class sub-folders for accuracy)")
    not_read = []  # pipes, sockets, unreadable folders: listed with the unreadable photos
    files = [p for p in preprocess.iter_image_files(d, not_read)]
    if not files:
        raise EdgetlError(f"{d} holds no files", hint="pass a folder of photos")
    # label = the first path component below d (or below d/<split>/) that names a class
    split_names = {a for aliases in data_mod.SPLIT_ALIASES.values() for a in aliases}
    labels = []
    unknown = set()
    has_dirs = any(p.parent != d for p in files)
    for p in files:
        parts = p.relative_to(d).parts[:-1]
        if parts and parts[0].lower() in split_names and len(parts) > 1:
            parts = parts[1:]
        if not parts:
            labels.append(None)
            continue
        name = parts[0]
        if classes is not None and name in classes:
            labels.append(classes.index(name))
        else:
            unknown.add(name)
            labels.append(None)
    if has_dirs and classes is not None and unknown:
        raise EdgetlError(
            f"{d}: folder name(s) {', '.join(sorted(unknown)[:5])} are not labels of the model "
            f"({', '.join(classes[:6])}{'...' if len(classes) > 6 else ''})",
            hint="class folders must be named like the model's labels (labels.txt), or pass a flat folder of photos",
        )
    use_labels = has_dirs and all(lab is not None for lab in labels)
    tensors = np.empty((len(files), size[0], size[1], 3), np.uint8)
    keep = []
    skipped = [{"path": str(x["path"]), "reason": x["reason"]} for x in not_read]
    with ui.Progress(len(files), progress) as bar:
        for i, p in enumerate(files):
            try:
                tensors[len(keep)] = preprocess.load_image(p, size, policy)
                keep.append(i)
            except EdgetlError as e:
                skipped.append({"path": str(p), "reason": getattr(e, "reason", e.message)})
            bar.update()
    if not keep:
        raise EdgetlError(f"{d}: none of the {len(files)} files is a readable image", hint="pass a folder of photos")
    tensors = tensors[: len(keep)]
    y = np.asarray([labels[i] for i in keep], np.int64) if use_labels else None
    return tensors, y, [str(files[i]) for i in keep], skipped


def resolve_keras_spec(model, keras_path: Path, labels_file=None, input_range=None, resize=None, run=None,
                       info: dict | None = None, also_missing=()):
    """(labels, value_range, size, resize) for a Keras model, or one clear error naming everything that
    is missing (``also_missing``: what the caller lacks besides, e.g. calibration photos).

    ``labels_file``: a path or a list; ``input_range``: "LOW,HIGH" or a pair (ignored for edgetl models,
    which take raw pixels); ``info``: the edgetl info stored inside a .keras file (modeling.read_info)."""
    from edge_runtime.classifier import parse_range, read_labels

    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise EdgetlError(f"{keras_path}: model input {list(shape)} is not an image of fixed size [batch, H, W, 3]",
                          hint="edgetl converts image classifiers with a fixed input size")
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or (out_shape[1] or 0) < 2:
        raise EdgetlError(f"{keras_path}: model output {list(out_shape)} is not a class-probability vector",
                          hint="edgetl converts classifiers whose output is [batch, classes]")
    size = (int(shape[1]), int(shape[2]))
    ours = info is not None or modeling.is_edgetl_model(model)
    if isinstance(labels_file, (list, tuple)):
        labels = list(labels_file)
    elif labels_file:
        labels = read_labels(labels_file)
    elif info is not None:
        labels = list(info["labels"])
    elif run is not None and (Path(run) / "labels.txt").is_file():
        labels = read_labels(Path(run) / "labels.txt")
    elif (keras_path.parent / "labels.txt").is_file() and ours:
        labels = read_labels(keras_path.parent / "labels.txt")
    else:
        labels = None
    if ours:
        value_range = tuple(info.get("value_range", (0.0, 255.0))) if info else (0.0, 255.0)  # scaled inside
    elif input_range is not None:
        value_range = parse_range(input_range)
    else:
        value_range = None
    missing = []
    if labels is None:
        missing.append("--labels FILE (one label per output, in order)")
    if value_range is None:
        missing.append("--input-range LOW,HIGH (the values pixel 0 and 255 must become, e.g. -1,1)")
    missing += list(also_missing)
    if missing:
        if ours:
            why = (f"{keras_path} is an edgetl model that does not carry its labels (written by edgetl 0.1) "
                   "and has no labels.txt beside it" if labels is None else f"{keras_path} needs more")
        elif labels is None or value_range is None:
            why = f"{keras_path} was not built by edgetl, so it does not say its labels or input range"
        else:
            why = f"{keras_path} needs more"
        raise EdgetlError(f"{why}; missing: {'; '.join(missing)}",
                          hint="pass " + " and ".join(m.split(' (')[0] for m in missing)
                               + ("" if ours else " (and --resize if not 'mediapipe')"))
    if len(labels) != out_shape[1]:
        raise EdgetlError(f"{len(labels)} labels for a model with {out_shape[1]} outputs",
                          hint="pass the labels file that belongs to this model")
    if resize is None and info is not None:
        resize = info.get("resize")
    if resize is None and run is not None:
        resize = (schema.read_report(Path(run)).get("config") or {}).get("resize")
    return labels, value_range, size, resize or preprocess.DEFAULT_RESIZE


def run_dir_of(path: Path):
    p = Path(path)
    for cand in (p, p.parent):
        if runfolder.is_any_run(cand):
            return cand
    return None


# ------------------------------------------------------------------ consumer parity
# The model on the device is run by a consumer: edge_runtime (its fit, the first interpreter installed),
# MediaPipe Tasks or the Task Library (their own fit of the whole frame, which the standard metadata cannot
# change), tflite-runtime (another interpreter, whose int8 kernels round differently). Each is measured on
# the parity photos against the same Keras reference (the Keras model on the run's own fit); the declared
# ones are gated like edge_runtime.


def default_consumers(policy: str) -> list:
    """The consumers a run of ``policy`` is made for: edge_runtime on every interpreter, and MediaPipe (and
    the Task Library) when the model is trained on their fit."""
    return ["edge"] + (["mediapipe"] if policy == "mediapipe" else []) + ["tflite-runtime"]


def interpreter_unusable(name: str):
    """None when the backend ``name`` can run here, else why not (one line)."""
    from edge_runtime import backends

    try:
        backends.resolve(name)
    except EdgetlError as e:
        return e.message
    except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
        return f"{name} failed to load: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def mediapipe_tensors(paths, size):
    """(rows kept, uint8 tensors) of the photos at ``paths`` fitted as MediaPipe fits them; photos that no
    longer decode (moved since the build) are left out."""
    rows, out = [], []
    for i, p in enumerate(paths):
        try:
            out.append(preprocess.fit_like_mediapipe(preprocess.decode_image(p), size))
            rows.append(i)
        except (EdgetlError, OSError, ValueError):
            continue
    t = np.stack(out) if out else np.zeros((0, size[0], size[1], 3), np.uint8)
    return np.asarray(rows, np.int64), t


def _figures(p_keras, p, y, p_edge, test_n: int) -> dict:
    r = metrics.parity(p_keras, p, y)
    fig = {k: r.get(k) for k in ("n", "agreement", "keras_accuracy", "tflite_accuracy", "accuracy_drop_pt",
                                 "accuracy_drop_ci95_pt", "kl_mean", "max_prob_diff", "nonfinite_tflite")}
    if p_edge is not None:
        fig["agreement_with_edge"] = round(float((metrics.top1(p) == metrics.top1(p_edge)).mean()), 4) if len(p) else None
    if test_n and y is not None:
        fig["test_n"] = int(test_n)
        fig["test_accuracy"] = round(float((metrics.top1(p[:test_n]) == y[:test_n]).mean()), 4)
    return fig


def consumer_parity(path, tensors, p_keras, p_edge, y, *, policy: str, paths=None, test_n: int = 0, declared=None, max_drop: float = 1.0, min_agreement: float = 0.97, edge_backend: str = "",
                    cache: dict | None = None, trusted: bool = True, options: dict | None = None) -> tuple:
    """({consumer: figures}, [failure reasons]) of the TFLite model at ``path`` under each consumer.

    ``tensors``/``p_keras``/``p_edge``/``y``: the parity photos fitted with ``policy``, the Keras reference and
    edge_runtime's probabilities on them (already measured); ``paths``: their files (for MediaPipe's fit, when
    it differs from ``policy``); ``cache``: a dict kept across the modes of one run (MediaPipe-fitted tensors).
    ``declared``: the consumers gated (empty/None: ``default_consumers(policy)``); edge is always gated.
    Every consumer is measured where it can be; one that cannot is reported with the reason, never gated.
    ``options``: the Classifier arguments the model needs (labels, input_range, resize), as for edge."""
    from edge_runtime.classifier import Classifier

    declared = list(declared or default_consumers(policy))
    opts = dict(options or {}, resize=policy)
    gated = ["edge"] + [c for c in declared if c != "edge"]
    out, reasons = {}, []
    out["edge"] = {"fit": policy, "interpreter": edge_backend, **_figures(p_keras, p_edge, y, None, test_n)}
    # MediaPipe Tasks / the Task Library: the whole frame, their bilinear arithmetic, any model
    if policy == "mediapipe":
        out["mediapipe"] = {**out["edge"], "fit": "mediapipe", "interpreter": edge_backend, "agreement_with_edge": 1.0,
                            "note": "the run's own fit: the same pixels as edge"}
    elif paths is None:
        out["mediapipe"] = {"measured": False, "reason": "the parity photos' files are not known here"}
    else:
        cache = {} if cache is None else cache
        key = ("mediapipe", tuple(tensors.shape[1:3]), len(paths))
        if key not in cache:
            cache[key] = mediapipe_tensors(paths, tuple(tensors.shape[1:3]))
        rows, mp = cache[key]
        if not len(rows):
            out["mediapipe"] = {"measured": False, "reason": "none of the parity photos could be read again"}
        else:
            clf = Classifier(path, num_threads=2, warn=False, trusted=trusted, **opts)
            p = tflite_probabilities(clf, mp, desc=None)
            kept_test = int((rows < test_n).sum())  # rows are sorted: the test photos come first
            out["mediapipe"] = {"fit": "mediapipe", "interpreter": str(clf.model.backend),
                                **_figures(p_keras[rows], p, None if y is None else y[rows], p_edge[rows],
                                           kept_test)}
    # tflite-runtime: edge_runtime's fit, another interpreter (older int8 kernels)
    if edge_backend.split(" ")[0] == "tflite_runtime":
        out["tflite-runtime"] = {**out["edge"], "note": "the interpreter edge ran on"}
    else:
        why = interpreter_unusable("tflite_runtime")
        if why:
            out["tflite-runtime"] = {"measured": False, "reason": why}
        else:
            try:
                clf = Classifier(path, num_threads=2, warn=False, trusted=trusted, backend="tflite_runtime", **opts)
                p = tflite_probabilities(clf, tensors)
                out["tflite-runtime"] = {"fit": policy, "interpreter": "tflite_runtime",
                                         **_figures(p_keras, p, y, p_edge, test_n)}
            except EdgetlError as e:
                out["tflite-runtime"] = {"measured": False, "reason": f"this model does not load there: {e.message}"}
    for name, fig in out.items():
        fig["declared"] = name in gated
        if fig.get("measured") is False:
            continue
        fig["measured"] = True
        if name not in gated:
            continue
        ok, why = gate(fig, max_drop, min_agreement)
        fig["passed"] = ok
        if not ok and name != "edge":  # edge's own verdict is the model's main gate
            reasons.append(f"under {name}: {why}")
    return out, reasons


def consumer_line(per) -> str:
    """One line of a model's consumer figures for the progress output."""
    if not per:
        return "consumers: not measured (no parity photos)"
    parts = []
    for name, f in per.items():
        if not f.get("measured"):
            parts.append(f"{name} not measured here ({f.get('reason')})")
            continue
        acc = f.get("tflite_accuracy")
        parts.append(f"{name} agreement {f['agreement']:.4f}" + (f", accuracy {acc:.4f}" if acc is not None else "")
                     + ("" if f.get("declared") else " (not declared: not gated)"))
    return "consumers: " + "; ".join(parts)
