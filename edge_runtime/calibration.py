"""Score calibration from the standard TFLite metadata, applied exactly as MediaPipe Tasks applies it.

A classifier's output tensor may carry a ``ScoreCalibrationOptions`` process unit (a score transformation
and a default score) and an associated file of type ``TENSOR_AXIS_SCORE_CALIBRATION``: one line per class,
``scale,slope,offset`` or ``scale,slope,offset,min_score``, or an empty line (no calibration for that class).
MediaPipe (tasks/cc/components/calculators/score_calibration_utils.cc and score_calibration_calculator.cc)
replaces each dequantized raw score ``x`` of class ``i`` with

    default_score                                   if line i is empty, or x < min_score_i
    scale_i / (1 + exp(-(slope_i * T(x) + offset_i)))   otherwise, clipped to [0, scale_i]

where ``T`` is IDENTITY (x), LOG (log x) or INVERSE_LOGISTIC (log x - log(1 - x)), the log being clamped
below 1e-16 (``2 log(t) - log(2t - x)`` there, so the order of tiny scores is kept). No softmax follows.
The file is split on every ``\\n``, so a file that ends in a newline has one line more than it has
classes: MediaPipe then refuses to classify (a mismatch between sigmoids and scores), and so is the
calibration refused here (with the reason). No TensorFlow, no MediaPipe: NumPy only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

TRANSFORMS = ("IDENTITY", "LOG", "INVERSE_LOGISTIC")
LOG_SCORE_MINIMUM = 1e-16
MAX_LINES = 100_000
# what absl::SimpleAtof accepts: a decimal or hex float, inf/infinity/nan, surrounding whitespace
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf(inity)?|nan)\s*", re.IGNORECASE)


def parse_file(raw: bytes) -> list:
    """The sigmoids of a TENSOR_AXIS_SCORE_CALIBRATION file: one entry per ``\\n``-separated line, None for
    an empty line, else (scale, slope, offset, min_score or None) as float32 values. Raises ValueError
    with MediaPipe's reason when MediaPipe would refuse the file."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the score calibration file is not UTF-8 text") from None
    if not text:
        raise ValueError("the score calibration file is empty")
    lines = text.split("\n")
    if len(lines) > MAX_LINES:
        raise ValueError(f"the score calibration file has {len(lines)} lines (at most {MAX_LINES} are read)")
    out = []
    for n, line in enumerate(lines, 1):
        if not line:
            out.append(None)
            continue
        parts = line.split(",")
        if len(parts) not in (3, 4):
            raise ValueError(f"line {n} of the score calibration file has {len(parts)} values (3 or 4 expected: "
                             "scale,slope,offset[,min_score])")
        vals = []
        for p in parts:
            if not _NUMBER.fullmatch(p):
                raise ValueError(f"line {n} of the score calibration file: {p.strip()[:40]!r} is not a number")
            vals.append(float(np.float32(float(p))))
        if vals[0] < 0 or math.isnan(vals[0]):
            raise ValueError(f"line {n} of the score calibration file: the scale must be positive, found {vals[0]:g}")
        out.append((vals[0], vals[1], vals[2], vals[3] if len(vals) == 4 else None))
    return out


@dataclass
class ScoreCalibration:
    """A head's calibration: the transformation, the default score and one sigmoid (or None) per class."""

    score_transformation: str
    default_score: float
    sigmoids: list
    file: str = ""

    def __post_init__(self):
        if self.score_transformation not in TRANSFORMS:
            raise ValueError(f"unknown score transformation {self.score_transformation}")
        sig = self.sigmoids
        self._empty = np.array([s is None for s in sig])
        self._scale = np.array([np.nan if s is None else s[0] for s in sig], np.float64)
        self._slope = np.array([np.nan if s is None else s[1] for s in sig], np.float64)
        self._offset = np.array([np.nan if s is None else s[2] for s in sig], np.float64)
        self._min = np.array([-np.inf if s is None or s[3] is None else s[3] for s in sig], np.float64)
        self._default = np.float32(self.default_score)

    def describe(self) -> str:
        return f"{self.score_transformation}, {len(self.sigmoids)} sigmoids from {self.file or 'the metadata'}"

    @staticmethod
    def _clamped_log(x: np.ndarray) -> np.ndarray:
        t = LOG_SCORE_MINIMUM
        with np.errstate(divide="ignore", invalid="ignore"):
            low = 2.0 * math.log(t) - np.log(2.0 * t - np.minimum(x, t))
            return np.where(x < t, low, np.log(np.maximum(x, t))).astype(np.float32).astype(np.float64)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated scores (float32) for raw dequantized scores (N, classes) or (classes,)."""
        x32 = np.asarray(scores, np.float32)
        x = x32.astype(np.float64)
        if self.score_transformation == "IDENTITY":
            tr = x
        elif self.score_transformation == "LOG":
            tr = self._clamped_log(x)
        else:
            one_minus = (1.0 - x).astype(np.float32).astype(np.float64)
            tr = (self._clamped_log(x) - self._clamped_log(one_minus)).astype(np.float32).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            s = (tr * self._slope + self._offset).astype(np.float32).astype(np.float64)
            pos = self._scale / (1.0 + np.exp(-np.maximum(s, 0.0)))
            e = np.exp(np.minimum(s, 0.0))
            neg = self._scale * e / (1.0 + e)
            cal = np.where(s >= 0.0, pos, neg).astype(np.float32)
        cal = np.maximum(np.minimum(cal, self._scale.astype(np.float32)), np.float32(0.0))
        use_default = self._empty | (x32 < self._min)
        return np.where(use_default, self._default, cal).astype(np.float32)
