"""Open a .tflite file safely: check it, read its metadata, create the interpreter, describe its I/O."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backends, metadata, tflite_format
from .errors import EdgetlError


@dataclass
class TensorInfo:
    name: str
    index: int
    shape: tuple
    shape_signature: tuple
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0
    channel_scales: int = 0  # number of per-channel scales (0 or 1: per-tensor)

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.dtype(self.dtype).kind in "iu"

    def describe(self) -> dict:
        d = {
            "name": self.name,
            "shape": list(self.shape),
            "shape_signature": list(self.shape_signature),
            "dtype": np.dtype(self.dtype).name,
        }
        if self.quantized:
            d["quantization"] = {"scale": self.scale, "zero_point": self.zero_point}
        return d


def _tensor_info(d: dict) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    qp = d.get("quantization_parameters") or {}
    return TensorInfo(
        name=d["name"],
        index=int(d["index"]),
        shape=tuple(int(x) for x in d["shape"]),
        shape_signature=tuple(int(x) for x in d.get("shape_signature", d["shape"])),
        dtype=np.dtype(d["dtype"]),
        scale=float(scale),
        zero_point=int(zp),
        channel_scales=len(qp.get("scales", ())),
    )


@dataclass
class LoadedModel:
    path: Path
    size_bytes: int
    content: bytes
    structure: dict
    meta: dict | None  # edgetl metadata (validated), or None
    backend: backends.Backend
    interpreter: object
    num_threads: int
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    ops: list = field(default_factory=list)  # original operator names, in execution order
    delegated: bool = False  # XNNPACK (or another delegate) took over part of the graph
    standard: dict | None = None  # standard TFLite metadata (TFLITE_METADATA), as metadata.read_all sees it
    archive_files: list = field(default_factory=list)  # names in the ZIP archive at the end of the file
    metadata_problems: list = field(default_factory=list)  # why metadata was ignored or is incomplete

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    @property
    def output(self) -> TensorInfo:
        return self.outputs[0]

    def op_counts(self) -> dict:
        return dict(Counter(self.ops).most_common())

    def output_ends_in(self, output: int = 0) -> str | None:
        """The activation output ``output`` (a position in ``outputs``) comes out of (SOFTMAX or LOGISTIC),
        looking through the DEQUANTIZE/QUANTIZE/RESHAPE/SQUEEZE ops a converter puts after it; None when it
        is anything else."""
        producers = {}
        for op in self._op_details:
            for t in op["outputs"]:
                producers[int(t)] = op
        t = self.outputs[output].index
        for _ in range(8):
            op = producers.get(t)
            if op is None:
                return None
            if op["op_name"] in ("SOFTMAX", "LOGISTIC"):
                return op["op_name"]
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"):
                return None
            t = int(op["inputs"][0])
        return None

    def output_is_probabilities(self, output: int = 0) -> bool:
        """True when output ``output`` already holds scores in [0, 1]: the edgetl metadata says so (it
        describes output 0), or the graph ends in SOFTMAX or LOGISTIC (a multi-label / MediaPipe Model Maker
        head). Otherwise the runtime applies softmax."""
        if output == 0 and self.meta and "probabilities" in (self.meta.get("output") or {}):
            return bool(self.meta["output"]["probabilities"])
        return self.output_ends_in(output) is not None

    _op_details: list = field(default_factory=list, repr=False)


@contextlib.contextmanager
def _native_stderr_note():
    """Hold back what the interpreter's C++ side prints on stderr while a model is prepared (the
    "INFO: Created TensorFlow Lite XNNPACK delegate" banner); it is shown again if preparing fails."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded use): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                buf.seek(0)
                sys.stderr.write(buf.read().decode("utf-8", "replace"))


def check_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise EdgetlError(f"model file not found: {p}", hint="check the path")
    if p.is_dir():
        raise EdgetlError(f"{p} is a folder, not a .tflite model",
                          hint="pass the model file, e.g. RUN/model_int8.tflite")
    return p


def load(path, num_threads: int | None = None, backend: str | None = None) -> LoadedModel:
    p = check_file(path)
    content = p.read_bytes()
    structure = tflite_format.parse_model(content, str(p))
    found = metadata.read_all(content, structure)
    be = backends.resolve(backend)
    threads = backends.default_threads() if num_threads is None else int(num_threads)
    with _native_stderr_note():
        return _open(p, content, structure, found, be, threads)


def _open(p, content, structure, found, be, threads) -> LoadedModel:
    try:
        interp = backends.make_interpreter(be, content, threads)
    except ValueError as e:
        raise EdgetlError(f"{p}: the interpreter refused the model ({e})",
                          hint="the file is corrupt or was written for a newer runtime") from None
    try:
        op_details = list(interp._get_ops_details())  # before allocation: the original operators
    except Exception:  # private API; op names are informative only
        op_details = []
    try:
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise EdgetlError(f"{p}: cannot prepare the model ({str(e).strip().splitlines()[0]})",
                          hint="the model needs operators this runtime lacks; try another --backend") from None
    delegated = False
    try:
        delegated = any(op["op_name"] == "DELEGATE" for op in interp._get_ops_details())
    except Exception:
        pass
    m = LoadedModel(
        path=p,
        size_bytes=len(content),
        content=content,
        structure=structure,
        meta=found.edgetl,
        backend=be,
        interpreter=interp,
        num_threads=threads,
        inputs=[_tensor_info(d) for d in interp.get_input_details()],
        outputs=[_tensor_info(d) for d in interp.get_output_details()],
        ops=[op["op_name"] for op in op_details],
        delegated=delegated,
        standard=found.standard,
        archive_files=list(found.files),
        metadata_problems=list(found.problems),
    )
    m._op_details = op_details
    return m


def is_score_vector(t: TensorInfo) -> bool:
    """True for an output shaped [batch, classes] (or [batch, 1, ..., classes]) with at least 2 classes."""
    return len(t.shape) >= 2 and t.shape[-1] >= 2 and int(np.prod(t.shape)) == t.shape[-1] * t.shape[0]


def check_image_classifier(m: LoadedModel):
    """Refuse models that do not take one image and give at least one score vector (a model with several
    outputs is run on one of them: see ``Classifier``'s ``output``)."""
    if len(m.inputs) != 1:
        raise EdgetlError(f"{m.path}: model has {len(m.inputs)} inputs; an image classifier has one",
                          hint="edgetl runs single-image classifiers")
    i = m.input
    if len(i.shape) != 4 or i.shape[3] not in (1, 3):
        raise EdgetlError(
            f"{m.path}: model input is not an image (shape {list(i.shape)}, {i.dtype.name}); "
            "expected [batch, height, width, 3]",
            hint="edgetl runs image classifiers",
        )
    if i.dtype.name not in ("uint8", "int8", "float32", "float16"):
        raise EdgetlError(f"{m.path}: unsupported input type {i.dtype.name}", hint="expected uint8, int8 or float32")
    if len(m.outputs) > 1:
        if not any(is_score_vector(o) for o in m.outputs):
            shapes = ", ".join(str(list(o.shape)) for o in m.outputs)
            raise EdgetlError(f"{m.path}: none of the model's {len(m.outputs)} outputs is a score vector ({shapes})",
                              hint="edgetl runs classifiers with an output shaped [batch, classes]")
        return
    if not m.outputs:
        raise EdgetlError(f"{m.path}: model has no output", hint="the model is malformed; convert it again")
    o = m.output
    if int(np.prod(o.shape)) != o.shape[-1] * (o.shape[0] if o.shape else 1) or len(o.shape) < 2:
        raise EdgetlError(f"{m.path}: model output is not a score vector (shape {list(o.shape)})",
                          hint="edgetl runs classifiers whose output is [batch, classes]")
    if o.shape[-1] < 2:
        raise EdgetlError(f"{m.path}: model output has {o.shape[-1]} score(s); a classifier has at least 2",
                          hint="edgetl runs classifiers whose output is [batch, classes]")
