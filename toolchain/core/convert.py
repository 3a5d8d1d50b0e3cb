"""Keras -> TFLite in four precisions, with a full-integer check and metadata inside the file.

- ``int8``: full-integer post-training quantization (TFLITE_BUILTINS_INT8 only) calibrated on photos
  preprocessed exactly as in training; I/O ``uint8`` by default (the device feeds raw pixels), ``int8``
  or ``float32``. The result is inspected: any operator left computing in float is an error that names
  it, never a silent hybrid.
- ``float16``: float16 weights, float32 compute and I/O.
- ``dynamic``: int8 weights, activations quantized on the fly (dynamic range); dense weights per tensor, so
  the model loads in TFLite 2.4+ (tflite-runtime 2.14, the Task Library 0.4.4), not only 2.17+.
- ``float32``: plain conversion.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime import __version__, inspect_model
from edge_runtime import metadata as meta_mod
from edge_runtime import preprocess
from edge_runtime import model as model_mod
from edge_runtime.classifier import UNKNOWN_LABEL, Classifier
from edge_runtime.errors import EdgetlError

from toolchain.core import metrics
from toolchain.core import modeling
from toolchain.core import parity
from toolchain.rundir import runfolder
from toolchain import ui
from toolchain.core.quiet import silenced


CALIBRATION_BATCH = 25  # photos per calibration step: several at once is faster, and the ranges are the same


class Exported:
    """A Keras model traced once: every mode converts from this one concrete function
    (``TFLiteConverter.from_keras_model`` writes and reloads a SavedModel for every conversion), and
    int8 is calibrated on the float32 conversion, as the converter does inside (calibration, then the MLIR
    quantizer), so the float32 model is converted once for both. The calibration statistics are kept:
    another int8 recipe on the same photos quantizes again without calibrating again (per-tensor weights),
    or calibrates only the photos it adds (mirrored views), since the statistics are minimum and maximum
    over every photo seen. The converter freezes the weights into constants itself, at each conversion (it
    does so also for a graph frozen beforehand: freezing here too cost 0.8 to 1.3 s for the same bytes), so
    they are the model's weights when a mode is converted; the float32 flatbuffer is kept once made."""

    def __init__(self, model, log_path: Path | None = None):
        tf = modeling.import_keras()[0]

        self.model = model  # the Keras model (the parity reference)
        shape = tuple(model.inputs[0].shape[1:])
        # named as the Keras export names them (the model's input name, output_0); _with_signature writes
        # the signature a SavedModel would give
        spec = tf.TensorSpec((None,) + shape, tf.float32, name=model.inputs[0].name)
        try:
            with silenced(log_path):
                fn = tf.function(lambda x: {"output_0": model(x, training=False)})
                self.graph = fn.get_concrete_function(spec)
        except Exception as e:  # noqa: BLE001 - any converter failure is the model's, said in one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgetlError(f"TFLite conversion failed: the Keras model could not be traced ({msg[:300]})",
                              hint=f"see {log_path}" if log_path else "run again with a supported model") from None
        self._flat = {}
        self._calibration = None  # (key, calibrator, {flips: calibrated flatbuffer})

    def _converter(self):
        """A converter of the traced function. Without a trackable object the converter freezes and converts
        the function as it is: given the Keras model it saves and reloads a SavedModel first (measured: 5.6 s
        of a 160-px MobileNetV2's 6.5 s float32 conversion, the same flatbuffer but for tensor names and
        signature)."""
        tf = modeling.import_keras()[0]
        return tf, tf.lite.TFLiteConverter.from_concrete_functions([self.graph])

    def tflite(self, mode: str, calibration=None, io: str = "uint8", value_range=(0.0, 255.0),
               log_path: Path | None = None, per_channel: bool = True, flips: bool = False) -> bytes:
        """The flatbuffer in ``mode``; int8: calibrated on ``calibration`` (uint8 tensors (N, S, S, 3)), plus
        their mirrored views with ``flips``, weights per output channel unless ``per_channel`` is False."""
        if mode not in ("int8", "float16", "dynamic", "float32"):
            raise EdgetlError(f"unknown mode {mode!r}", hint="use int8, float16, dynamic or float32")
        if mode == "int8" and (calibration is None or len(calibration) == 0):
            raise EdgetlError("int8 conversion needs calibration photos, and the calibration set is empty",
                              hint="pass --calibration DIR with photos like the ones the model will see")
        label = f"  converting {mode}" + ("" if per_channel or mode != "int8" else " (per-tensor)")
        try:
            with silenced(log_path, heartbeat=label):  # the converter is silent for up to a minute: say it is alive
                if mode != "int8":
                    return self._plain(mode)
                return self._int8(calibration, io, value_range, per_channel, flips)
        except EdgetlError:
            raise
        except Exception as e:  # noqa: BLE001 - any converter failure is the model's, said in one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgetlError(f"TFLite conversion ({mode}) failed: {msg[:300]}",
                              hint=f"see {log_path}" if log_path else "run again with a supported model") from None

    def _plain(self, mode: str) -> bytes:
        if mode not in self._flat:
            tf, conv = self._converter()
            if mode in ("float16", "dynamic"):
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if mode == "float16":
                conv.target_spec.supported_types = [tf.float16]
            if mode == "dynamic":
                # per-channel dense weights make FULLY_CONNECTED version 12 (TFLite 2.17+): tflite-runtime 2.14
                # and the Task Library 0.4.4 cannot load that. Per-tensor dense weights keep it at version 9
                # (TFLite 2.4+); the convolutions stay per-channel (measured: the same accuracy,
                # benchmarks/bench_tflite_runtime.py)
                conv._experimental_disable_per_channel_quantization_for_dense_layers = True
            self._flat[mode] = _with_signature(bytes(conv.convert()), self.model.inputs[0].name)
        return self._flat[mode]

    def _int8(self, calibration, io, value_range, per_channel: bool, flips: bool) -> bytes:
        from tensorflow.lite.python import convert as tfl_convert
        from tensorflow.lite.python.optimize import calibrator as tfl_calibrator

        tf = modeling.import_keras()[0]
        key = (calibration, tuple(value_range))  # the very array (held here, so its id is not reused)
        if self._calibration is None or self._calibration[0][0] is not calibration or self._calibration[0][1] != key[1]:
            cal = tfl_calibrator.Calibrator(tfl_calibrator.add_intermediate_tensors(self._plain("float32")))
            self._calibration = (key, cal, {False: cal.calibrate(_batches(calibration, value_range, False))})
        _, cal, done = self._calibration
        if flips and True not in done:  # statistics so far plus the mirrored views: calibrating on both
            done[True] = cal.calibrate(_batches(calibration, value_range, True))
        io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io]
        return bytes(tfl_convert.mlir_quantize(done[flips], not per_channel, input_data_type=io_type,
                                               output_data_type=io_type))


def _with_signature(flat: bytes, input_name: str) -> bytes:
    """``flat`` with the signature a conversion through a SavedModel writes: ``serving_default``, the
    model's input name, ``output_0`` (LiteRT's ``get_signature_runner`` and ai-edge-quantizer need one; a
    conversion of the concrete function alone writes none). The int8 quantizer keeps it."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    if model.signatureDefs or len(model.subgraphs) != 1:
        return flat
    graph = model.subgraphs[0]

    def tensor_map(name, index):
        t = schema.TensorMapT()
        t.name, t.tensorIndex = name, int(index)
        return t

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    sig.inputs = [tensor_map(input_name, graph.inputs[0])]
    sig.outputs = [tensor_map(f"output_{i}", t) for i, t in enumerate(graph.outputs)]
    model.signatureDefs = [sig]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _batches(calibration, value_range, mirrored: bool):
    """The calibration photos as float batches of CALIBRATION_BATCH (the last filled up with the first
    photos again: the same minimum and maximum), the model's input range. ``mirrored``: their mirrored views.
    The input's quantization comes from the range seen in calibration: the first photo shows it the whole
    pixel range (one black, one white pixel), so it is exactly raw pixels (scale 1, zero point 0) and a
    bright photo on the device is never clipped."""
    lo, hi = value_range
    a = np.float32((hi - lo) / 255.0)
    n = len(calibration)
    b = min(CALIBRATION_BATCH, n)

    def gen():
        for s in range(0, n, b):
            idx = np.arange(s, s + b) % n if s + b > n else np.arange(s, s + b)
            x = np.asarray(calibration[idx], np.float32)
            if mirrored:
                x = np.ascontiguousarray(x[:, :, ::-1])
            elif s == 0:
                x[0, 0, 0, :] = 0.0
                x[0, 0, 1, :] = 255.0
            if (lo, hi) != (0.0, 255.0):
                x = x * a + np.float32(lo)
            yield [x]

    return gen


def exported(model, log_path: Path | None = None) -> Exported:
    """``model`` traced and frozen (an Exported stays as it is)."""
    return model if isinstance(model, Exported) else Exported(model, log_path)


def convert(model, mode: str, calibration=None, io: str = "uint8", value_range=(0.0, 255.0),
            log_path: Path | None = None, per_channel: bool = True) -> bytes:
    """TFLite flatbuffer bytes of ``model`` (a Keras model, or its Exported form when it is converted more
    than once) in ``mode``. ``calibration``: uint8 tensors (N, S, S, 3). ``per_channel=False`` quantizes
    int8 weights per tensor instead of per output channel."""
    return exported(model, log_path).tflite(mode, calibration, io, value_range, log_path, per_channel)


def check_full_integer(path: Path, trusted: bool = True):
    """EdgetlError naming the operators that still compute in float, if any. ``trusted``: the file is a
    conversion edgetl just wrote (no crash-safety probe, see edge_runtime.model.load)."""
    m = model_mod.load(path, num_threads=1, trusted=trusted)
    bad = inspect_model.float_ops(m)
    if bad:
        names = ", ".join(f"{b['op']} (#{b['index']})" for b in bad[:12])
        raise EdgetlError(
            f"the int8 model is not full-integer: {len(bad)} operator(s) still compute in float: {names}",
            hint="these ops have no int8 kernel in this converter; use --mode dynamic or float16 for this model",
        )
    return m


def make_metadata(loaded, mode: str, labels, size, resize: str, value_range, keras_sha: str, dataset: dict,
                  parity_figures: dict | None, io: str, min_score: float | None = None, central=None) -> dict:
    """``central``: [h, w] the network sees when the graph keeps the centre of its input (None: all of it)."""
    inp, out = loaded.input, loaded.output
    extra = {"min_score": float(min_score)} if min_score else {}  # below it, the answer is "unknown"
    return {**extra,
        "format": meta_mod.FORMAT,
        "format_version": meta_mod.FORMAT_VERSION,
        "edgetl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "image_classification",
        "mode": mode,
        "full_integer": not inspect_model.float_ops(loaded),
        "labels": list(labels),
        "input": {
            "size": [int(size[0]), int(size[1])],
            "color": "RGB",
            "layout": "NHWC",
            "resize": resize,
            **({"central_crop": [int(central[0]), int(central[1])],
                "central_crop_note": "the graph keeps the central central_crop pixels of its input: feed the whole frame"}
               if central else {}),
            "interpolation": preprocess.interpolation(resize),
            "value_range": [float(value_range[0]), float(value_range[1])],
            "value_range_note": "the model expects pixel 0 -> value_range[0], 255 -> value_range[1]",
            "dtype": inp.dtype.name,
            "quantization": {"scale": inp.scale, "zero_point": inp.zero_point} if inp.quantized else None,
        },
        "output": {
            "dtype": out.dtype.name,
            "quantization": {"scale": out.scale, "zero_point": out.zero_point} if out.quantized else None,
            "probabilities": loaded.output_is_probabilities(),
        },
        "io": io,
        "keras_model_sha256": keras_sha,
        "dataset": dataset,
        "parity": parity_figures,
    }


# int8 recipes, tried in order; the first is the standard one. The others are tried only when it falls
# short on the selection photos (every photo of the evaluation set except the test split), and the recipe
# with the best agreement there is kept (ties: lower KL divergence).
RECIPES = (
    ("per-channel", {"per_channel": True, "flips": False}),
    ("per-channel, calibration + mirrored views", {"per_channel": True, "flips": True}),
    ("per-tensor", {"per_channel": False, "flips": False}),
)
GOOD_ENOUGH_AGREEMENT = 0.99


@dataclass
class EvalSet:
    """Photos both models are compared on. The first ``test_n`` are the test split (0: none)."""

    tensors: np.ndarray
    labels: np.ndarray | None
    desc: str
    test_n: int = 0
    p_keras: np.ndarray | None = None
    paths: list | None = None  # the photos' files (for consumers that fit them their own way)
    fitted: dict = field(default_factory=dict)  # tensors fitted by other consumers, kept across modes
    rows: np.ndarray | None = None  # the photos' rows in the run's cache, when they come from it
    p_tflite: dict = field(default_factory=dict)  # mode -> probabilities of the model written (convert_one)


def convert_one(model, mode: str, out_path: Path, *, labels, size, resize, value_range, calibration, io,
                keras_sha, dataset, evalset: EvalSet | None, max_drop, min_agreement, log_dir: Path | None,
                min_score: float | None = None, consumers=None, central=None) -> dict:
    """Convert, check, measure parity and latency, embed metadata, write ``out_path`` atomically.
    ``log_dir``: where the converter's log goes (a run's logs/); None: nowhere (shown if it fails)."""
    io_used = io if mode == "int8" else "float32"
    if io_used == "int8":
        ui.warn("an int8-input model runs in edge_runtime and the TFLite interpreters, but MediaPipe Tasks refuse "
                "int8 inputs (uint8 or float32 only): for a MediaPipe app keep --io uint8 (the default)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)

    def draft(flat_bytes):
        """Write ``flat_bytes`` with draft metadata to tmp (the runtime needs it to feed the model)."""
        meta = make_metadata(_load_bytes(flat_bytes, tmp), mode, labels, size, resize, value_range, keras_sha,
                             dataset, None, io_used, min_score, central)
        tmp.write_bytes(meta_mod.embed(flat_bytes, meta))

    try:
        t0 = time.perf_counter()
        recipes_tried, recipe, p_kept = [], None, None
        if mode != "int8":
            flat = convert(model, mode, None, io_used, value_range, _log(log_dir, mode))
            draft(flat)
        else:
            flat, recipes_tried, recipe, p_kept = _best_int8(model, calibration, io_used, value_range, log_dir,
                                                             evalset, labels, draft, tmp)
        seconds = time.perf_counter() - t0
        loaded = check_full_integer(tmp) if mode == "int8" else model_mod.load(tmp, num_threads=1, trusted=True)
        result = {"mode": mode, "io": io_used, "convert_seconds": round(seconds, 2),
                  "full_integer": not inspect_model.float_ops(loaded),
                  "precision": inspect_model.precision(loaded), "backend": str(loaded.backend)}
        figures = None
        result.update({"passed": True, "reason": None})
        if recipe:
            result["recipe"] = recipe
            result["recipes_tried"] = recipes_tried
        if evalset is not None and len(evalset.tensors):
            ev = evalset
            if ev.p_keras is None:
                ev.p_keras = parity.keras_probabilities(keras_model(model), ev.tensors, value_range)
            if p_kept is not None:  # int8: the kept recipe's outputs on these very photos, from its selection
                p_tfl = p_kept
            else:
                clf = Classifier(tmp, num_threads=2, warn=False, trusted=True)
                p_tfl = parity.tflite_probabilities(clf, ev.tensors, desc=f"parity {mode}")
            ev.p_tflite[mode] = p_tfl
            cmp = parity.compare(ev.p_keras, p_tfl, ev.labels, labels)
            passed, reason = parity.gate(cmp, max_drop, min_agreement)
            per, failed = parity.consumer_parity(tmp, ev.tensors, ev.p_keras, p_tfl, ev.labels, policy=resize,
                                                 paths=ev.paths, test_n=ev.test_n, declared=consumers,
                                                 max_drop=max_drop, min_agreement=min_agreement,
                                                 edge_backend=str(loaded.backend), cache=ev.fitted)
            result["consumers"] = per
            if failed:
                passed, reason = False, "; ".join(([reason] if reason else []) + failed)
            result.update({k: cmp.get(k) for k in PARITY_KEYS})
            result.update({"parity_data": ev.desc, "passed": passed, "reason": reason or None})
            if ev.test_n and ev.labels is not None:
                t = parity.compare(ev.p_keras[: ev.test_n], p_tfl[: ev.test_n], ev.labels[: ev.test_n], labels)
                result.update({"test_n": t["n"], "test_accuracy": t["tflite_accuracy"],
                               "test_accuracy_drop_pt": t["accuracy_drop_pt"], "test_agreement": t["agreement"],
                               "test_accuracy_drop_ci95_pt": t["accuracy_drop_ci95_pt"],
                               "confusion": t["confusion"], "confusion_change": t["confusion_change"]})
            else:
                result["test_accuracy"] = cmp.get("tflite_accuracy")
                result["confusion"] = cmp.get("confusion")
            result["latency_ms"] = parity.tflite_latency(tmp, ev.tensors[0], trusted=True)
            result["latency_ms_p50"] = result["latency_ms"]["1"]
            figures = {"data": ev.desc, **{k: cmp.get(k) for k in PARITY_KEYS},
                       "test_accuracy": result.get("test_accuracy"),
                       "max_drop": max_drop, "min_agreement": min_agreement, "passed": passed,
                       "consumers": {c: {k: f.get(k) for k in ("measured", "declared", "passed", "n", "agreement",
                                                                "tflite_accuracy", "reason") if k in f}
                                     for c, f in per.items()}}
        final = meta_mod.embed(flat, make_metadata(loaded, mode, labels, size, resize, value_range, keras_sha,
                                                   dataset, figures, io_used, min_score, central))
        runfolder.write_bytes(out_path, final)
        result["path"] = out_path.name
        result["size_bytes"] = len(final)
        result["sha256"] = hashlib.sha256(final).hexdigest()  # the bytes that passed (or failed) parity
        result["flatbuffer_bytes"] = len(flat)
        runfolder.write_json(out_path.with_suffix(".json"), {"file": out_path.name, "size_bytes": len(final),
                                                              "metadata": meta_mod.read(final),
                                                              "tflite_metadata": meta_mod.read_standard(final),
                                                              "figures": _public(result)})
        return result
    finally:
        tmp.unlink(missing_ok=True)


def _best_int8(model, calibration, io, value_range, log_dir, evalset, labels, draft, tmp):
    """Convert with the standard recipe; while the agreement on the selection photos is below
    GOOD_ENOUGH_AGREEMENT, try the next recipe; keep the best. Leaves the winner in ``tmp``. Returns
    (flatbuffer, recipes tried, recipe kept, the kept model's probabilities on every photo of ``evalset``
    or None). ``model``: a Keras model or its Exported form; the recipes share one export and one
    calibration (per-tensor weights quantize the same statistics again; mirrored views add theirs)."""
    source = exported(model, _log(log_dir, "int8"))
    if evalset is None or not len(evalset.tensors):
        flat = source.tflite("int8", calibration, io, value_range, _log(log_dir, "int8"))
        draft(flat)
        return flat, [{"recipe": RECIPES[0][0]}], RECIPES[0][0], None
    sel = slice(evalset.test_n, None) if len(evalset.tensors) > evalset.test_n else slice(None)
    if evalset.p_keras is None:
        evalset.p_keras = parity.keras_probabilities(keras_model(model), evalset.tensors, value_range)
    tried, best = [], None
    for name, opts in RECIPES:
        flat = source.tflite("int8", calibration, io, value_range, _log(log_dir, "int8"),
                             per_channel=opts["per_channel"], flips=opts["flips"])
        draft(flat)
        clf = Classifier(tmp, num_threads=2, warn=False, trusted=True)
        # every parity photo in one pass: the selection decides, and the kept model's outputs are its parity
        p_all = parity.tflite_probabilities(clf, evalset.tensors, desc=f"parity int8 ({name})")
        p = p_all[sel]
        m = metrics.parity(evalset.p_keras[sel], p)
        entry = {"recipe": name, "selection_n": m["n"], "selection_agreement": m["agreement"],
                 "selection_kl": m["kl_mean"]}
        tried.append(entry)
        kl = m["kl_mean"] if m["kl_mean"] is not None else float("inf")  # None: non-finite outputs
        ui.info(f"  int8 recipe '{name}': agreement {m['agreement']:.4f}, KL {kl:.5f} "
                f"on {m['n']} selection photos")
        best_kl = float("inf") if best is None or best[1]["selection_kl"] is None else best[1]["selection_kl"]
        if best is None or (m["agreement"], -kl) > (best[1]["selection_agreement"], -best_kl):
            best = (flat, entry, p_all)
        if m["agreement"] >= GOOD_ENOUGH_AGREEMENT:  # another recipe would not change the outcome
            break
    flat, entry, p_all = best
    draft(flat)
    if len(tried) > 1:
        ui.info(f"  int8: kept recipe '{entry['recipe']}'")
    return flat, tried, entry["recipe"], p_all


def keras_model(model):
    """The Keras model of ``model`` (a Keras model or its Exported form)."""
    return model.model if isinstance(model, Exported) else model


def _log(log_dir: Path | None, mode: str) -> Path | None:
    return None if log_dir is None else Path(log_dir) / f"convert_{mode}.log"


def is_edgetl_output(path: Path) -> bool:
    """True when ``path`` is a file edgetl writes beside a model: a .tflite carrying edgetl's metadata,
    or the JSON description of one (the file's own content says so)."""
    from edge_runtime import files

    try:
        if path.suffix == ".tflite":
            return meta_mod.read(files.read_bytes(path, files.MAX_MODEL_BYTES, "model")) is not None
        doc = files.read_json(path, what="model description")
        return isinstance(doc, dict) and isinstance(doc.get("metadata"), dict) \
            and doc["metadata"].get("format") == meta_mod.FORMAT
    except (EdgetlError, ValueError, UnicodeDecodeError):
        return False


def check_export_targets(paths, force: bool):
    """Before converting into a folder that is not a run (``quantize --out DIR``, or beside a .keras):
    files of those names may be replaced only with ``--force``, and only when edgetl wrote them."""
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if not existing:
        return
    if not force:
        raise EdgetlError(f"{', '.join(map(str, existing))} already exist(s)",
                          hint="pass --force to replace models edgetl wrote, or choose another --out DIR")
    foreign = [p for p in existing if p.is_symlink() or not p.is_file() or not is_edgetl_output(p)]
    if foreign:
        raise EdgetlError(f"{', '.join(map(str, foreign))} not written by edgetl; refusing to replace it even with "
                          "--force", hint="move it away, or choose another --out DIR")


def write_labels_beside(folder: Path, labels):
    """labels.txt beside exported models: written when absent; a labels.txt of another content is the
    user's and is kept (the labels are inside every model anyway)."""
    path = Path(folder) / "labels.txt"
    text = "\n".join(labels) + "\n"
    if os.path.lexists(path):
        try:
            same = path.is_file() and path.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            ui.warn(f"kept {path} (it is not the model's label list; the labels are inside every model)")
        return
    runfolder.write_text(path, text)


PARITY_KEYS = ("n", "keras_accuracy", "tflite_accuracy", "accuracy_drop_pt", "accuracy_drop_ci95_pt", "agreement", "kl_mean", "cosine_mean",
               "nonfinite_keras", "nonfinite_tflite",
               "max_prob_diff")


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("confusion", "confusion_change")}


def _load_bytes(flat: bytes, tmp: Path):
    tmp.write_bytes(flat)
    return model_mod.load(tmp, num_threads=1, trusted=True)


def calibration_from_run(ds, cfg) -> np.ndarray:
    rows = ds.rows("train")
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(rows, size=min(cfg.calibration_size, len(rows)), replace=False))
    return np.asarray(ds.images[pick])


def calibration_from_dir(path, size, resize, classes, n: int, seed: int) -> np.ndarray:
    tensors, _, _, skipped = parity.load_folder(path, size, resize, classes, progress="calibration photos")
    if skipped:
        ui.warn(f"{len(skipped)} unreadable calibration file(s) skipped, e.g. {skipped[0]['path']}: "
                f"{skipped[0]['reason']}")
    if len(tensors) > n:
        rng = np.random.default_rng(seed)
        tensors = tensors[np.sort(rng.choice(len(tensors), n, replace=False))]
    return tensors


PARITY_CAP = 2000


def run_evalset(ds, seed: int, cap: int = PARITY_CAP) -> EvalSet:
    """The parity set of a run: the test split first, then validation, then training photos, up to
    ``cap`` photos (a seeded sample of the training split beyond that). One photo of an 80-photo test
    split is 1.25 points, too coarse to gate a 1-point drop: parity is measured over every photo.
    Agreement compares two models on the same input, so held-out photos are not required for it;
    accuracy on the test split alone is reported beside it."""
    test = ds.rows("test")
    val = ds.rows("val") if not ds.test_is_val else np.zeros(0, np.int64)
    train = ds.rows("train")
    room = max(0, cap - len(test) - len(val))
    if len(train) > room:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(train), room, replace=False))
    else:
        keep = np.arange(len(train))
    rows = np.concatenate([test, val, train[keep]])
    y = np.concatenate([ds.labels("test"), ds.labels("val") if not ds.test_is_val else np.zeros(0, np.int64),
                        ds.labels("train")[keep]])
    desc = (f"{len(rows)} photos of the run: test {len(test)}, val {len(val)}, train {len(keep)}"
            + (" (sampled)" if len(keep) < len(train) else ""))
    train_paths = ds.paths("train")  # once: a list of every training photo's path (not once per photo)
    paths = ds.paths("test") + (ds.paths("val") if not ds.test_is_val else []) + [train_paths[i] for i in keep]
    return EvalSet(np.asarray(ds.images[rows]), y, desc, test_n=len(test), rows=rows, paths=paths)


def quantize_run(run: Path, cfg, model=None, ds=None, modes=None, calibration_dir=None, force: bool = True,
                 dest: Path | None = None, calibration=None, evalset: EvalSet | None = None,
                 min_score: float | None = None) -> dict:
    """Convert a run's model.keras to each mode, with parity on the run's photos. The models go into the
    run (and report.json is updated), or into ``dest`` (with labels.txt; the run is only read).
    ``calibration``, ``evalset`` (with ``p_keras``): made beforehand (by every worker of a distributed run).
    ``min_score``: the score below which the models answer "unknown" (written into both metadata forms);
    None: ``--min-score``, else the threshold the run recorded (report.json ``unknown``), else none."""
    from toolchain.core import data as data_mod

    run = Path(run)
    target = Path(dest) if dest is not None else run
    modes = list(modes or cfg.quantize)
    if dest is not None:  # a folder of the user's: only edgetl's own files there are ever replaced
        check_export_targets([target / f"model_{m}.{ext}" for m in modes for ext in ("tflite", "json")], force)
    existing = [m for m in modes if (target / f"model_{m}.tflite").exists()]
    if existing and not force:
        raise EdgetlError(f"{target} already has {', '.join(f'model_{m}.tflite' for m in existing)}",
                          hint="pass --force to convert again")
    if model is None:
        model = modeling.load(run / "model.keras")
    if ds is None:
        # into another folder (dest): the run is only read, so a missing photo cache is rebuilt elsewhere
        ds = data_mod.load(run, rebuild_into=data_mod.scratch_cache() if dest is not None else None)
    labels = ds.classes
    size = (cfg.input_size(), cfg.input_size())
    keras_sha = runfolder.sha256_file(run / "model.keras")
    if calibration is not None:
        calib, calib_desc = calibration, "train split"
    elif "int8" in modes:
        if calibration_dir:
            calib = calibration_from_dir(calibration_dir, size, cfg.resize, labels, cfg.calibration_size, cfg.seed)
            calib_desc = str(calibration_dir)
        else:
            calib = calibration_from_run(ds, cfg)
            calib_desc = "train split"
    else:
        calib, calib_desc = None, None
    prepared = evalset is not None and evalset.p_keras is not None
    if not prepared:
        evalset = run_evalset(ds, cfg.seed)
    summary = ds.summary()
    summary["calibration"] = {"source": calib_desc, "n": 0 if calib is None else len(calib)}
    if not prepared:
        evalset.p_keras = parity.keras_probabilities(model, evalset.tensors, (0.0, 255.0), desc="keras on parity set")
    calibrated = None
    if min_score is None:
        min_score = cfg.min_score or None
    if min_score is None and UNKNOWN_LABEL in labels and evalset.rows is not None:
        from toolchain.core import diagnose  # --unknown: the threshold from the held-out unknown photos

        calibrated = diagnose.calibrate_min_score(ds, evalset)
        min_score = calibrated["min_score"] or None
        ui.info(f"unknown: models answer '{UNKNOWN_LABEL}' below a score of {min_score or 0:g} (calibrated on "
                f"{calibrated['val_unknown']} held-out unknown photos)")
    results = {}
    source = exported(model)  # traced once: every mode (and every int8 recipe) converts from this graph
    for mode in modes:
        ui.info(f"converting to {mode} ...")
        target.mkdir(parents=True, exist_ok=True)
        r = convert_one(source, mode, target / f"model_{mode}.tflite", labels=labels, size=size, resize=cfg.resize,
                        value_range=(0.0, 255.0), calibration=calib if mode == "int8" else None, io=cfg.io,
                        keras_sha=keras_sha, dataset=summary, evalset=evalset, max_drop=cfg.max_drop,
                        min_agreement=cfg.min_agreement, log_dir=None if dest is not None else target / "logs",
                        min_score=min_score, consumers=cfg.consumers, central=modeling.central_size(model))
        results[mode] = r
        ui.info(f"  {mode}: {r['size_bytes'] / 1e6:.2f} MB, {r['precision']}, converted in {r['convert_seconds']:.1f}s; "
                f"parity on {r.get('n')} photos: drop {r.get('accuracy_drop_pt')} pt, agreement {r.get('agreement')}; "
                f"test acc {r.get('test_accuracy')}; p50 {r.get('latency_ms', {}).get('1')} ms (1 thread) -> "
                f"{'pass' if r['passed'] else 'FAIL: ' + str(r['reason'])}")
        ui.info("    " + parity.consumer_line(r.get("consumers")))
    if dest is not None:
        write_labels_beside(target, labels)
        return results
    rep = runfolder.read_report(run)
    tfl = dict(rep.get("tflite") or {})
    tfl.update(results)
    # the photos some model gets wrong (thumbnails under plots/), on the parity set just measured
    from toolchain.core import diagnose

    extra = diagnose.after_parity(ds, evalset, run, min_score, calibrated) if evalset.rows is not None else {}
    runfolder.update_report(run, tflite=tfl, **extra)
    return results
