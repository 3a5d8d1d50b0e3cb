"""`edgetl parity MODEL.keras MODEL.tflite [DATA_DIR|RUN]`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgetlError

from toolchain.core import data as data_mod
from toolchain.core import modeling
from toolchain.core import parity
from toolchain import ui


def run(keras_path, tflite_path, data=None, max_drop=1.0, min_agreement=0.97, labels=None, input_range=None,
        resize=None, threads=None, consumers=None) -> dict:
    from edge_runtime.classifier import Classifier

    keras_path, tflite_path = Path(keras_path), Path(tflite_path)
    if data is not None and not Path(data).exists():
        raise EdgetlError(f"data not found: {data}", hint="pass a folder of photos or a run folder")
    clf = Classifier(tflite_path, num_threads=threads, labels=labels, input_range=input_range, resize=resize,
                     warn=False, cli=True)
    for note in clf.notes:
        ui.warn(note)
    model = modeling.load(keras_path)
    run_dir = parity.run_dir_of(keras_path)
    labels_src = labels if labels is not None else (clf.labels if clf.meta.get("labels") else None)
    range_src = input_range if input_range is not None else (clf.meta.get("input") or {}).get("value_range")
    labels_list, value_range, size, _ = parity.resolve_keras_spec(model, keras_path, labels_src, range_src, resize,
                                                                  run=run_dir)
    if tuple(size) != tuple(clf.input_size):
        raise EdgetlError(f"the Keras model takes {size[0]}x{size[1]} images but the TFLite model "
                          f"{clf.input_size[0]}x{clf.input_size[1]}", hint="compare a TFLite model with its own Keras model")
    n_out = int(model.outputs[0].shape[-1])
    if n_out != clf.num_classes:
        raise EdgetlError(f"the Keras model has {n_out} outputs but the TFLite model {clf.num_classes}",
                          hint="compare a TFLite model with its own Keras model")
    if data is not None and Path(data).is_dir() and parity.run_dir_of(Path(data)) == Path(data):
        ds = data_mod.load(data, rebuild_into=data_mod.scratch_cache())  # the run is only read
        tensors = np.asarray(ds.images[ds.rows("test")])
        y = ds.labels("test")
        paths = ds.paths("test")
        desc = f"test split of run {data}" + (" (val split: no test/)" if ds.test_is_val else "")
        if ds.classes != labels_list:
            raise EdgetlError(f"run {data} has classes {ds.classes[:5]}... unlike the model's labels",
                              hint="compare on the run the model was trained in, or on a DATA_DIR")
    elif data is not None:
        tensors, y, paths, skipped = parity.load_folder(data, clf.input_size, clf.resize, labels_list)
        if skipped:
            ui.warn(f"{len(skipped)} unreadable file(s) skipped, e.g. {skipped[0]['path']}: {skipped[0]['reason']}")
        desc = f"every photo in {data}"
    elif run_dir is not None:
        ds = data_mod.load(run_dir, rebuild_into=data_mod.scratch_cache())
        tensors = np.asarray(ds.images[ds.rows("test")])
        y = ds.labels("test")
        paths = ds.paths("test")
        desc = f"test split of run {run_dir}"
    else:
        raise EdgetlError("no photos to compare on", hint="pass DATA_DIR (a folder of photos) or RUN (a run folder)")
    p_keras = parity.keras_probabilities(model, tensors, value_range, desc="keras model")
    p_tfl = parity.tflite_probabilities(clf, tensors, desc="tflite model")
    res = parity.compare(p_keras, p_tfl, y, labels_list)
    passed, reason = parity.gate(res, max_drop, min_agreement)
    per, failed = parity.consumer_parity(tflite_path, tensors, p_keras, p_tfl, y, policy=clf.resize, paths=paths,
                                         declared=consumers, max_drop=max_drop, min_agreement=min_agreement,
                                         edge_backend=str(clf.model.backend), trusted=False,
                                         options={"labels": labels, "input_range": input_range})
    if failed:
        passed, reason = False, "; ".join(([reason] if reason else []) + failed)
    tfl_lat = parity.tflite_latency(tflite_path, tensors[0], threads=(clf.model.num_threads,), labels=labels,
                                    input_range=input_range, resize=resize)
    res.update({
        "data": desc,
        "keras_model": str(keras_path),
        "tflite_model": str(tflite_path),
        "keras_size_bytes": keras_path.stat().st_size,
        "tflite_size_bytes": tflite_path.stat().st_size,
        "keras_latency_ms_p50": parity.keras_latency(model, tensors[0]),
        "tflite_latency_ms_p50": list(tfl_lat.values())[0],
        "tflite_threads": clf.model.num_threads,
        "labels": labels_list,
        "max_drop": max_drop,
        "min_agreement": min_agreement,
        "passed": passed,
        "reason": reason or None,
        "consumers": per,
    })
    if y is None:
        res.update({"keras_accuracy": None, "tflite_accuracy": None, "accuracy_drop_pt": None})
    return res


def print_result(r: dict):
    def f(v, nd=4):
        return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    print(f"parity of {r['tflite_model']} against {r['keras_model']} on {r['n']} photos ({r['data']})")
    rows = [
        ["top-1 accuracy", f(r.get("keras_accuracy")), f(r.get("tflite_accuracy"))],
        ["size (MB)", f"{r['keras_size_bytes'] / 1e6:.2f}", f"{r['tflite_size_bytes'] / 1e6:.2f}"],
        ["p50 latency (ms, 1 image)", f(r["keras_latency_ms_p50"], 2), f(r["tflite_latency_ms_p50"], 2)],
    ]
    print(ui.table(rows, ["", "keras", "tflite"]))
    ci = r.get("accuracy_drop_ci95_pt")
    ci_text = f", 95% interval [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    print(f"accuracy drop     {f(r.get('accuracy_drop_pt'), 2)} pt{ci_text}   (gate: <= {r['max_drop']:g})")
    print(f"top-1 agreement   {r['agreement']:.4f}    (gate: >= {r['min_agreement']:g})")
    print(f"KL divergence     {f(r['kl_mean'], 6)} mean")
    print(f"cosine similarity {f(r['cosine_mean'], 6)} mean")
    print(f"max prob diff     {f(r['max_prob_diff'])}")
    if r.get("nonfinite_keras") or r.get("nonfinite_tflite"):
        print(f"non-finite scores keras {r.get('nonfinite_keras')}, tflite {r.get('nonfinite_tflite')} photos")
    change = r.get("per_class_recall_change") or {}
    moved = {c: v for c, v in change.items() if v}
    if moved:
        print("recall change per class: " + ", ".join(f"{c} {v:+.3f}" for c, v in moved.items()))
    if r.get("consumers"):
        print(parity.consumer_line(r["consumers"]))
    print("PASS" if r["passed"] else f"FAIL: {r['reason']}")
