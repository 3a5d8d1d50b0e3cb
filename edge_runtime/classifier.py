"""Classifier: an image in, labelled scores out, doing no needless work per frame.

Input handling is decided once, when the model is opened:
- edgetl models say in their metadata what they expect (raw 0-255 RGB, resize policy, labels);
- a foreign model without metadata is fed according to its input tensor: a uint8 input gets the raw
  pixels, an int8 input the pixels shifted by -128, a float input the pixels mapped to
  ``input_range`` (required: e.g. (-1, 1) or (0, 1)); the whole image is resized to the input
  ("squash", as TFLite's reference examples do) unless ``resize`` says otherwise.
For a quantized input whose quantization already maps raw pixels (scale 1, zero point 0 for uint8) the
resized pixels go to the interpreter as they are; any other mapping is one 256-entry lookup table.
Outputs are dequantized, and softmax is applied only when the model does not end in one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import model as model_mod
from . import preprocess
from .errors import EdgetlError


class MetadataWarning(UserWarning):
    pass


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    def as_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(float(self.score), 6)}


def read_labels(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"label file not found: {p}", hint="pass a text file with one label per line")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
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


class Classifier:
    """Run a TFLite image classifier.

    ``classify(image)`` takes an RGB uint8 array by default (``bgr=True`` for OpenCV frames) of any
    size; it is fitted to the model with the model's own resize policy.
    """

    def __init__(self, model, num_threads: int | None = None, labels=None, backend: str | None = None,
                 input_range=None, resize: str | None = None, warn: bool = True):
        self.model = model_mod.load(model, num_threads=num_threads, backend=backend)
        model_mod.check_image_classifier(self.model)
        m = self.model
        self.meta = m.meta or {}
        meta_in = self.meta.get("input") or {}
        inp = m.input
        self.input_size = (int(inp.shape[1]), int(inp.shape[2]))
        self.input_dtype = np.dtype(inp.dtype)
        self.num_classes = int(m.output.shape[-1])
        self.notes: list[str] = []

        # labels: explicit > metadata > indices
        if labels is not None:
            self.labels = read_labels(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
        elif self.meta.get("labels"):
            self.labels = list(self.meta["labels"])
        else:
            self.labels = [str(i) for i in range(self.num_classes)]
        if len(self.labels) != self.num_classes:
            src = labels if isinstance(labels, (str, Path)) else "the labels"
            raise EdgetlError(
                f"{src} has {len(self.labels)} labels but the model {m.path.name} has {self.num_classes} outputs",
                hint="pass the label file that belongs to this model (one label per line)",
            )

        # edgetl models: the policy they were trained with. Foreign models: the whole image resized to the
        # input ("squash"), as TFLite's reference examples feed their models.
        self.resize = resize or meta_in.get("resize") or (preprocess.DEFAULT_RESIZE if m.meta else "squash")
        if self.resize not in preprocess.RESIZE_POLICIES:
            raise EdgetlError(f"unknown resize policy {self.resize!r}",
                              hint=f"use one of {', '.join(preprocess.RESIZE_POLICIES)}")

        # value range the model expects for pixel 0 and pixel 255
        if input_range is not None:
            self.value_range = parse_range(input_range)
        elif "value_range" in meta_in:
            self.value_range = tuple(float(x) for x in meta_in["value_range"])
        elif self.input_dtype.kind in "iu":
            self.value_range = None  # quantized foreign model: the full integer range is the pixel range
        else:
            raise EdgetlError(
                f"{m.path.name} has a float input and no edgetl metadata, so its pixel range is unknown",
                hint="pass --input-range, e.g. -1,1 (MobileNet style), 0,1 or 0,255",
            )
        if not m.meta:
            self.notes.append(
                f"{m.path.name} carries no edgetl metadata: labels from "
                f"{'--labels' if labels is not None else 'output indices'}, input from its "
                f"{self.input_dtype.name} tensor, resize '{self.resize}'"
            )
            if warn:
                warnings.warn(self.notes[-1], MetadataWarning, stacklevel=2)
        self._setup_input()
        self._softmax = not m.output_is_probabilities()
        out = m.output
        self._out_scale = out.scale if out.quantized else None
        self._out_zp = out.zero_point
        self._interp = m.interpreter
        self._in_index = inp.index
        self._out_index = out.index
        self._batch_dynamic = inp.shape_signature[:1] == (-1,)
        self._batch = int(inp.shape[0])

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
        px = preprocess.fit(image, self.input_size, self.resize, bgr=bgr)
        return self.from_pixels(px)

    def from_pixels(self, px: np.ndarray) -> np.ndarray:
        """Map already-fitted RGB uint8 pixels (H, W, 3) to the input tensor's type."""
        if self._lut is not None:
            import cv2

            t = cv2.LUT(px, self._lut)
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
            if not self._batch_dynamic:  # a fixed-batch model: one image at a time
                return np.concatenate([self._run(batch[j : j + 1]) for j in range(batch.shape[0])])
            self._interp.resize_tensor_input(self._in_index, [batch.shape[0], *self.input_size, 3])
            self._interp.allocate_tensors()
            self._batch = batch.shape[0]
        self._interp.set_tensor(self._in_index, batch)
        self._interp.invoke()
        return self._postprocess(self._interp.get_tensor(self._out_index))

    def _postprocess(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.reshape(raw.shape[0], -1)
        if self._out_scale is not None:
            out = (raw.astype(np.float32) - self._out_zp) * np.float32(self._out_scale)
        else:
            out = raw.astype(np.float32, copy=False)
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
        steps of 1/256) go to the lower class index, so the answer is the same on every CPU and run."""
        return [Prediction(self.labels[i], int(i), float(probs[i])) for i in top_indices(probs, top_k)]

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
        step = max(1, int(batch_size)) if self._batch_dynamic else 1
        for s in range(0, n, step):
            chunk = np.stack(tensors[s : s + step])
            out[s : s + chunk.shape[0]] = self._run(chunk)
        return out

    def classify_batch(self, images, top_k: int = 3, bgr: bool = False, batch_size: int = 32):
        """Top-k predictions for a list of images, batched through the interpreter when it can."""
        probs = self.probabilities_batch(images, bgr, batch_size)
        return [self.top(p, top_k) for p in probs]
