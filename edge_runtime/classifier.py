"""Classifier: an image in, labelled scores out, doing no needless work per frame.

How to feed the model and read its output is decided once, when it is opened, from (in this order of
trust) the caller's arguments, the model's edgetl metadata, its standard TFLite metadata
(``TFLITE_METADATA``: what MediaPipe and the Task Library read), and finally its tensors alone:
- labels: ``labels=`` > edgetl labels > the standard metadata's TENSOR_AXIS_LABELS file > output indices;
- pixels: ``input_range=`` > edgetl value range > (float inputs) the standard NormalizationOptions,
  (pixel - mean) / std per channel; quantized inputs without a range get the raw pixels through their
  own integer range (uint8: the pixel, int8: the pixel - 128), as MediaPipe feeds them;
- colour: RGB, or gray when the input has one channel or its ImageProperties say GRAYSCALE;
- resize: ``resize=`` > the edgetl policy > ``mediapipe`` (the whole frame, fitted with MediaPipe's own
  sampling, ``preprocess.fit_like_mediapipe``, as MediaPipe and the Task Library feed any model); an edgetl
  model is fitted as it was trained (``preprocess.fit``; ``crop`` for an old one that names no policy);
- output: ``output=`` (index or name) > the first score vector whose metadata has labels > the first score
  vector; a model with several outputs (MediaPipe gives one classification list per head) is read on that
  one head, and a note says which;
- scores: outputs are dequantized; a head with ``ScoreCalibrationOptions`` in the standard metadata gets
  MediaPipe's calibration (``calibration``) and nothing else; otherwise softmax is applied only when the
  graph does not end in SOFTMAX or LOGISTIC (possibly followed by DEQUANTIZE/QUANTIZE/RESHAPE), so a sigmoid
  head keeps its own scale.
- "unknown": ``min_score=`` > the edgetl ``min_score`` > the head's standard ScoreThresholdingOptions
  (what MediaPipe and the Task Library apply): when no class reaches it, the answer is ``unknown``.
A note (and a warning, unless ``warn=False``) is made only when something is missing: no labels
anywhere, or metadata that was present but unusable.
For a quantized input whose quantization already maps raw pixels (scale 1, zero point 0 for uint8) the
resized pixels go to the interpreter as they are; any other mapping is one 256-entry lookup table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files, preprocess
from . import model as model_mod
from .errors import EdgetlError
from .metadata import MetadataWarning  # noqa: F401 (re-exported: warnings filter on it)

UNKNOWN_LABEL = "unknown"  # the answer when no class reaches the model's min_score (and --unknown's class)


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    def as_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(float(self.score), 6)}


def read_labels(path) -> list[str]:
    p = Path(path)
    try:
        data = files.read_bytes(p, files.MAX_TEXT_BYTES, "label file")
    except files.FileProblem as e:
        if e.missing:
            raise EdgetlError(f"label file not found: {p}", hint="pass a text file with one label per line") from None
        raise EdgetlError(e.message, hint="pass a text file with one label per line") from None
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.strip() for ln in lines]


def parse_range(text) -> tuple[float, float]:
    if isinstance(text, (tuple, list)):
        lo, hi = text
    else:
        try:
            lo, hi = (float(x) for x in str(text).split(","))
        except ValueError:
            raise EdgetlError(f"bad input range {text!r}", hint="write it as LOW,HIGH, e.g. -1,1 or 0,1") from None
    if not hi > lo:
        raise EdgetlError(f"bad input range {text!r}: HIGH must exceed LOW", hint="e.g. -1,1 or 0,1")
    return float(lo), float(hi)


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest values, best first; equal values in ascending index order.

    A stable sort of the negated scores gives exactly that order (``argpartition`` would not: it picks
    among tied values arbitrarily, which made the answer depend on the CPU's int8 kernels)."""
    p = np.asarray(probs).reshape(-1)
    k = max(1, min(int(k), p.shape[0]))
    return np.argsort(-p, kind="stable")[:k]


def below_min_score(score, min_score) -> bool:
    """True when a best ``score`` is answered "unknown" under ``min_score`` (0/None: never). Compared in
    float32, as MediaPipe's and the Task Library's score threshold (a float) is, so all three give the same
    answer at the boundary (0.7 is 0.69999999 in float32: a score of exactly that is not below it)."""
    return bool(min_score) and bool(np.float32(score) < np.float32(min_score))


def answers(probs: np.ndarray, min_score=0.0) -> np.ndarray:
    """What a classifier answers for each row of ``probs`` (N, classes): the best class index (ties: the
    lower, as ``top_indices``), or -1 ("unknown") when that score is ``below_min_score``."""
    p = np.asarray(probs, np.float32)
    p = p[None] if p.ndim == 1 else p
    best = np.argmax(p, axis=1) if p.shape[0] else np.zeros(0, np.int64)
    if min_score and len(p):
        best = np.where(p[np.arange(len(p)), best] < np.float32(min_score), -1, best)
    return best


class Classifier:
    """Run a TFLite image classifier.

    ``classify(image)`` takes an RGB uint8 array by default (``bgr=True`` for OpenCV frames) of any
    size; it is fitted to the model with the model's own resize policy.
    """

    def __init__(self, model, num_threads: int | None = None, labels=None, backend: str | None = None,
                 input_range=None, resize: str | None = None, warn: bool = True, cli: bool = False,
                 trusted: bool = False, output=None, min_score: float | None = None):
        """Open ``model`` and decide once how to feed it and how to read its scores.

        Args:
            model: path to a .tflite file (edgetl's, or any image classifier with one image input and at
                least one score vector output).
            num_threads: interpreter threads; default: the machine's cores (at most 4).
            labels: a label file (path, one label per line) or a list of labels; overrides the labels in
                the model's metadata. Their number must match the model's outputs.
            backend: "ai_edge_litert", "tflite_runtime" or "tensorflow"; default: the first installed.
            input_range: the values the model expects for pixels 0 and 255, as (low, high) or "low,high"
                (e.g. (-1, 1)); overrides the metadata. Needed only for a float input that no metadata
                describes.
            resize: "mediapipe", "crop", "squash" or "pad"; default: the policy in the edgetl metadata,
                else "mediapipe" (the whole frame, fitted as MediaPipe Tasks fit it).
            warn: emit each note in ``notes`` as a ``MetadataWarning`` (they are kept in ``notes``
                either way).
            cli: phrase notes and errors for the command line (``--labels``, ``--input-range``) instead
                of this API (``labels=``, ``input_range=``).
            trusted: skip the crash-safety check of the first load (``model.load``): only for a file
                edgetl itself has just written. By default a model is first opened in a child process, once
                per model and device, so a corrupt file cannot crash this process.
            min_score: the score the best class must reach, else the answer is ``unknown`` (index -1);
                overrides the model's metadata (edgetl's ``min_score``, the standard ScoreThresholdingOptions).
                0 turns it off.
            output: for a model with several outputs, the head to read: its position in the model's outputs
                (0, 1, ...) or its name (tensor name or standard-metadata name). Default: the first score
                vector whose metadata gives labels, else the first score vector (a note says which).
        """
        self.model = model_mod.load(model, num_threads=num_threads, backend=backend, trusted=trusted)
        model_mod.check_image_classifier(self.model)
        m = self.model
        self.meta = m.meta or {}
        self.standard = m.standard or {}
        meta_in = self.meta.get("input") or {}
        std_in = self.standard.get("input") or {}
        inp = m.input
        self.input_size = (int(inp.shape[1]), int(inp.shape[2]))
        self.input_dtype = np.dtype(inp.dtype)
        self.channels = int(inp.shape[3])
        self.notes: list[str] = list(m.metadata_problems)
        self.sources: dict = {}  # where each decision came from (output, labels, pixels, resize, scores)
        label_flag = "--labels FILE" if cli else "labels=[...] (or a label file path)"
        range_flag = "--input-range" if cli else "input_range="
        self.output_index = self._pick_output(output, "--output" if cli else "output=")
        out = m.outputs[self.output_index]
        self.output_name = self._output_names()[self.output_index]
        std_outs = self.standard.get("outputs") or []
        std_out = std_outs[self.output_index] if self.output_index < len(std_outs) else {}
        self.num_classes = int(out.shape[-1])

        # labels: explicit > edgetl metadata > standard metadata > indices
        if labels is not None:
            self.labels = read_labels(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
            self.sources["labels"] = str(labels) if isinstance(labels, (str, Path)) else "labels argument"
            if len(self.labels) != self.num_classes:
                src = labels if isinstance(labels, (str, Path)) else "the labels"
                raise EdgetlError(
                    f"{src} has {len(self.labels)} labels but the model {m.path.name} has {self.num_classes} outputs",
                    hint="pass the label file that belongs to this model (one label per line)",
                )
        elif self.meta.get("labels") and self.output_index == 0:  # edgetl's metadata describes output 0
            self.labels = list(self.meta["labels"])
            self.sources["labels"] = "edgetl metadata"
        elif std_out.get("labels"):
            self.labels = list(std_out["labels"])
            self.sources["labels"] = f"TFLite metadata ({std_out.get('labels_file')})"
        else:
            self.labels = [str(i) for i in range(self.num_classes)]
            self.sources["labels"] = "output indices"
            self.notes.append(f"{m.path.name} carries no labels (no edgetl metadata, no label file in its TFLite "
                              f"metadata): scores are reported by output index; pass {label_flag}")

        # edgetl models: the policy they were trained with. Foreign models: the whole image resized to the
        # input as MediaPipe does ("mediapipe"), as MediaPipe and TFLite's reference examples feed their models.
        self.resize = resize or meta_in.get("resize") or (preprocess.LEGACY_RESIZE if m.meta else "mediapipe")
        self.sources["resize"] = ("resize argument" if resize else "edgetl metadata" if meta_in.get("resize")
                                  else "default for a model without edgetl metadata")
        if self.resize not in preprocess.RESIZE_POLICIES:
            raise EdgetlError(f"unknown resize policy {self.resize!r}",
                              hint=f"use one of {', '.join(preprocess.RESIZE_POLICIES)}")
        # "mediapipe": MediaPipe's own sampling (a foreign model's default, and edgetl's default policy)
        self.sampling = "mediapipe" if self.resize == "mediapipe" else "edgetl"

        # colour: gray for a one-channel input, or when the standard metadata says GRAYSCALE
        self.color = "GRAYSCALE" if (self.channels == 1 or std_in.get("color_space") == "GRAYSCALE") else "RGB"

        # pixel values: the range the model expects for pixels 0 and 255, or per-channel normalization
        self.value_range = None
        self.normalization = None  # (mean, std) per channel, from the standard metadata (float inputs)
        norm = std_in.get("normalization")
        if input_range is not None:
            self.value_range = parse_range(input_range)
            self.sources["pixels"] = "input_range argument"
        elif "value_range" in meta_in:
            self.value_range = tuple(float(x) for x in meta_in["value_range"])
            self.sources["pixels"] = "edgetl metadata"
        elif self.input_dtype.kind in "iu":
            self.sources["pixels"] = "raw pixels through the input's integer range"
        elif norm:
            self.normalization = (list(norm["mean"]), list(norm["std"]))
            self.sources["pixels"] = "TFLite metadata NormalizationOptions"
        else:
            raise EdgetlError(
                f"{m.path.name} has a float input and no edgetl or TFLite metadata gives its range, so its pixel "
                "range is unknown",
                hint=f"pass {range_flag}, e.g. -1,1 (MobileNet style), 0,1 or 0,255",
            )
        # "unknown": the score the best class must reach
        std_min = std_out.get("score_threshold")
        if min_score is not None:
            self.min_score, self.sources["min_score"] = float(min_score), "min_score argument"
        elif self.meta.get("min_score") is not None and self.output_index == 0:  # edgetl's describes output 0
            self.min_score, self.sources["min_score"] = float(self.meta["min_score"]), "edgetl metadata"
        elif std_min is not None:
            self.min_score, self.sources["min_score"] = float(std_min), "TFLite metadata ScoreThresholdingOptions"
        else:
            self.min_score = 0.0
        # compared in float32, as MediaPipe compares its scores with the standard metadata's float threshold
        self.min_score = float(np.float32(self.min_score))
        if warn:
            for note in self.notes:
                warnings.warn(note, MetadataWarning, stacklevel=2)
        self._setup_input()
        # scores: MediaPipe's score calibration when the head's standard metadata has one (and then nothing
        # else, as MediaPipe), else softmax unless the graph (or edgetl's metadata) says they are probabilities
        self.calibration = std_out.get("calibration")
        k = self.output_index
        if self.calibration is not None:
            self._softmax = False
            self.sources["scores"] = (f"TFLite metadata ScoreCalibrationOptions ({self.calibration.describe()}), "
                                      "applied as MediaPipe applies it")
        else:
            self._softmax = not m.output_is_probabilities(k)
            self.sources["scores"] = "softmax applied by the runtime" if self._softmax else (
                "edgetl metadata: probabilities" if k == 0 and "probabilities" in (self.meta.get("output") or {})
                else f"the graph ends in {m.output_ends_in(k)}")
        self._out_scale = out.scale if out.quantized else None
        self._out_zp = out.zero_point
        self._interp = m.interpreter
        self._in_index = inp.index
        self._out_index = out.index
        self._batch_dynamic = inp.shape_signature[:1] == (-1,)
        self._batch = int(inp.shape[0])

    def _output_names(self) -> list:
        """A name per output: its standard-metadata name, else its tensor name."""
        std_outs = self.standard.get("outputs") or []
        return [(std_outs[k].get("name") if k < len(std_outs) else None) or o.name
                for k, o in enumerate(self.model.outputs)]

    def _pick_output(self, output, flag: str) -> int:
        """The position of the head to read (see ``output`` in __init__); notes which when there are several."""
        m = self.model
        outs = m.outputs
        names = self._output_names()
        std_outs = self.standard.get("outputs") or []

        def labelled(k):
            return bool((k < len(std_outs) and std_outs[k].get("labels")) or (k == 0 and self.meta.get("labels")))

        listing = "; ".join(f"{k} {names[k]!r} {list(o.shape)}" + (" with labels" if labelled(k) else "")
                            for k, o in enumerate(outs))
        if output is not None:
            k = None
            if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
                k = int(output)
            else:
                text = str(output)
                k = next((i for i, o in enumerate(outs) if text in (o.name, names[i])), None)
                if k is None and text.strip().isdigit():
                    k = int(text)
            if k is None or not 0 <= k < len(outs):
                raise EdgetlError(f"{m.path.name} has no output {output!r} (its outputs: {listing})",
                                  hint=f"pass {flag} with a position from 0 to {len(outs) - 1} or one of those names")
            if not model_mod.is_score_vector(outs[k]):
                raise EdgetlError(f"output {k} {names[k]!r} of {m.path.name} is not a score vector "
                                  f"(shape {list(outs[k].shape)})",
                                  hint=f"choose a classifier head with {flag} (its outputs: {listing})")
            self.sources["output"] = f"output {k} {names[k]!r} ({flag})"
            return k
        if len(outs) == 1:
            self.sources["output"] = "the model's only output"
            return 0
        heads = [k for k, o in enumerate(outs) if model_mod.is_score_vector(o)]
        with_labels = [k for k in heads if labelled(k)]
        k = with_labels[0] if with_labels else heads[0]
        why = "the first score vector whose metadata gives labels" if with_labels else "the first score vector"
        self.sources["output"] = f"output {k} {names[k]!r}: {why}"
        self.notes.append(f"{m.path.name} has {len(outs)} outputs ({listing}): scores come from output {k} "
                          f"{names[k]!r}, {why}; pass {flag} to read another")
        return k

    @classmethod
    def from_run(cls, run, mode: str | None = None, num_threads: int | None = None, **kwargs) -> "Classifier":
        """The classifier of a run folder's fastest model that passed its parity gate, on this device
        (measured once per device and remembered; see ``edge_runtime.choose``). ``mode`` forces one
        (``"int8"``, ``"float16"``, ``"dynamic"``, ``"float32"``); ``num_threads`` overrides the thread
        count the choice was measured with. Other keyword arguments go to ``Classifier``."""
        import logging

        from . import choose

        picked = choose.pick(run, mode=mode, threads=num_threads, backend=kwargs.get("backend"),
                             classifier_class=cls)
        clf = cls(picked.path, num_threads=picked.threads, **kwargs)
        clf.chosen = picked.why  # why this model of the run (also in repr(clf))
        logging.getLogger("edge_runtime").info("%s: using %s (%s)", run, Path(picked.path).name, picked.why)
        return clf

    chosen: str | None = None  # from_run: why this model of the run was chosen; None: the model was given

    def __repr__(self) -> str:
        m = self.model
        mode = self.meta.get("mode")
        parts = [f"model={str(m.path)!r}", f"mode={mode!r}" if mode else "", f"threads={m.num_threads}",
                 f"backend={str(m.backend)!r}", f"classes={self.num_classes}",
                 f"chosen={self.chosen!r}" if self.chosen else "chosen='given as a file'"]
        return f"Classifier({', '.join(x for x in parts if x)})"

    # ---- input mapping, decided once
    def _setup_input(self):
        dt = self.input_dtype
        inp = self.model.input
        self._lut = None
        self._float_affine = None
        if dt.kind in "iu":
            if self.value_range is None:  # foreign quantized model: integer range == pixel range
                q = np.arange(256, dtype=np.int32) + (0 if dt == np.uint8 else -128)
            else:
                lo, hi = self.value_range
                real = lo + np.arange(256, dtype=np.float64) * (hi - lo) / 255.0
                if not inp.quantized:
                    raise EdgetlError(f"{self.model.path.name}: integer input without quantization parameters",
                                      hint="the model is malformed; convert it again")
                q = np.round(real / inp.scale + inp.zero_point).astype(np.int32)
            info = np.iinfo(dt)
            q = np.clip(q, info.min, info.max)
            if dt == np.uint8 and np.array_equal(q, np.arange(256)):
                self._lut = None  # raw pixels go straight in
            else:
                self._lut = (q.astype(np.int64) & 0xFF).astype(np.uint8)  # byte pattern, viewed as dt
        elif self.normalization is not None:
            # (pixel - mean) / std per channel; one value stands for every channel
            mean, std = np.broadcast_arrays(*(np.asarray(v, np.float64).reshape(-1) for v in self.normalization))
            a, b = 1.0 / std, -mean / std
            if a.size == 1:
                a, b = a[0], b[0]
            identity = bool(np.all(a == 1.0) and np.all(b == 0.0))
            self._float_affine = None if identity else (np.asarray(a, np.float32), np.asarray(b, np.float32))
        else:
            lo, hi = self.value_range
            a = (hi - lo) / 255.0
            self._float_affine = None if (a == 1.0 and lo == 0.0) else (np.float32(a), np.float32(lo))

    @property
    def direct_input(self) -> bool:
        """True when resized pixels are fed as they are (no float round trip, no lookup)."""
        return self.input_dtype == np.uint8 and self._lut is None

    def prepare(self, image: np.ndarray, bgr: bool = False) -> np.ndarray:
        """The model's input tensor (H, W, 3) for one image: fit, then map to the input type."""
        return self.from_pixels(preprocess.fit(image, self.input_size, self.resize, bgr=bgr))

    def from_pixels(self, px: np.ndarray) -> np.ndarray:
        """Map already-fitted RGB uint8 pixels (H, W, 3) to the input tensor (its type; gray for a
        grayscale input)."""
        if self.color == "GRAYSCALE":
            import cv2

            g = cv2.cvtColor(np.ascontiguousarray(px), cv2.COLOR_RGB2GRAY)
            px = g[:, :, None] if self.channels == 1 else np.repeat(g[:, :, None], self.channels, axis=2)
        if self._lut is not None:
            import cv2

            t = cv2.LUT(px, self._lut).reshape(px.shape)
            return t.view(np.int8) if self.input_dtype == np.int8 else t
        if self._float_affine is not None or self.input_dtype.kind == "f":
            t = px.astype(self.input_dtype)
            if self._float_affine is not None:
                a, b = self._float_affine
                t *= a
                t += b
            return t
        return px

    # ---- inference
    def _run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            if not self._batch_dynamic:  # a fixed batch of B: chunks of B, the last one padded
                b, n = self._batch, batch.shape[0]
                out = []
                for s in range(0, n, b):
                    chunk = batch[s : s + b]
                    if chunk.shape[0] < b:
                        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - chunk.shape[0], axis=0)])
                    out.append(self._invoke(chunk)[: n - s])
                return np.concatenate(out)
            self._interp.resize_tensor_input(self._in_index, [batch.shape[0], *self.input_size, self.channels])
            self._interp.allocate_tensors()
            self._batch = batch.shape[0]
        return self._invoke(batch)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        try:
            self._interp.set_tensor(self._in_index, batch)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index)
        except (RuntimeError, ValueError) as e:  # a corrupt model that prepared but cannot run: an index out
            # of bounds, "Input tensor 5 lacks data", "Tensor data is null"
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise EdgetlError(f"{self.model.path}: the interpreter failed to run the model "
                              f"({lines[0] if lines else 'no reason given'})",
                              hint="the file is corrupt or not a model this runtime can run: copy or export it "
                                   "again") from None
        if raw.size != batch.shape[0] * self.num_classes:  # a corrupt graph whose output changed at run time
            raise EdgetlError(f"{self.model.path}: the model gave {raw.size} scores for {batch.shape[0]} image(s) of "
                              f"{self.num_classes} classes (output shape {list(raw.shape)})",
                              hint="the file is corrupt: copy or export it again")
        return self._postprocess(raw)

    def _postprocess(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.reshape(raw.shape[0], -1)
        if self._out_scale is not None:
            out = (raw.astype(np.float32) - self._out_zp) * np.float32(self._out_scale)
        else:
            out = raw.astype(np.float32, copy=False)
        if self.calibration is not None:
            return self.calibration.apply(out)
        if self._softmax:
            out = out - out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        return out

    def run_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Probabilities for one prepared input tensor (H, W, 3)."""
        return self._run(tensor[None])[0]

    def probabilities(self, image: np.ndarray, bgr: bool = False) -> np.ndarray:
        return self._run(self.prepare(image, bgr)[None])[0]

    def top(self, probs: np.ndarray, top_k: int = 3) -> list[Prediction]:
        """The ``top_k`` highest scores, best first. Ties (common with uint8 outputs, where scores move in
        steps of 1/256) go to the lower class index, so the answer is the same on every CPU and run. When
        the best score is below ``min_score``, the answer is one ``Prediction("unknown", -1, best score)``
        (MediaPipe returns no category then)."""
        idx = top_indices(probs, top_k)
        if below_min_score(probs[idx[0]], self.min_score):
            return [Prediction(UNKNOWN_LABEL, -1, float(probs[idx[0]]))]
        return [Prediction(self.labels[i], int(i), float(probs[i])) for i in idx]

    def classify(self, image: np.ndarray, top_k: int = 3, bgr: bool = False) -> list[Prediction]:
        """Top-k predictions for one RGB uint8 image (``bgr=True`` for OpenCV BGR frames)."""
        return self.top(self.probabilities(image, bgr), top_k)

    def classify_path(self, path, top_k: int = 3) -> list[Prediction]:
        """Top-k predictions for an image file (any format Pillow reads; EXIF orientation applied)."""
        return self.classify(preprocess.decode_image(path), top_k)

    def probabilities_batch(self, images, bgr: bool = False, batch_size: int = 32) -> np.ndarray:
        tensors = [self.prepare(im, bgr) for im in images]
        return self.run_tensors(tensors, batch_size)

    def run_tensors(self, tensors, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, classes) for prepared tensors, in batches when the model allows it."""
        n = len(tensors)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        out = np.empty((n, self.num_classes), np.float32)
        step = max(1, int(batch_size)) if self._batch_dynamic else self._batch
        for s in range(0, n, step):
            chunk = np.stack(tensors[s : s + step])
            out[s : s + chunk.shape[0]] = self._run(chunk)
        return out

    def classify_batch(self, images, top_k: int = 3, bgr: bool = False, batch_size: int = 32):
        """Top-k predictions for a list of images, batched through the interpreter when it can."""
        probs = self.probabilities_batch(images, bgr, batch_size)
        return [self.top(p, top_k) for p in probs]
