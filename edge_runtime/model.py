"""Open a .tflite file safely: check it, read its metadata, create the interpreter, describe its I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backends, files, metadata, nativelog, tflite_format
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
    run_error: str | None = None  # the interpreter's error when the crash-safety check ran the model once

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
        if not self.outputs:
            return None
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


def check_file(path) -> Path:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise EdgetlError(f"model file not found: {p}", hint="check the path")
    if p.is_dir():
        raise EdgetlError(f"{p} is a folder, not a .tflite model",
                          hint="pass the model file, e.g. RUN/model_int8.tflite")
    return p


def read_model_bytes(path) -> tuple:
    """(Path, bytes) of a model file: a regular file only (a named pipe, a socket, a device such as a link
    to /dev/zero is refused before it is opened), at most files.MAX_MODEL_BYTES."""
    p = check_file(path)
    return p, files.read_bytes(p, files.MAX_MODEL_BYTES, "model")


def check_io(structure: dict, name) -> None:
    """EdgetlError for a model whose main subgraph has no input or no output (nothing to feed or read)."""
    sg = structure["subgraphs"][0]
    for what in ("inputs", "outputs"):
        if not sg[what]:
            raise EdgetlError(f"{name}: the model has no {what}", hint="the file is corrupt or not a model edgetl can "
                              "run: copy or export it again")


def check_fixed_inputs(structure: dict, name) -> None:
    """EdgetlError for a model whose input has a dynamic size other than the batch (height and width -1):
    the interpreter cannot prepare it without a size, and edgetl runs image classifiers of fixed size."""
    sg = structure["subgraphs"][0]
    for i in sg["inputs"]:
        if not 0 <= i < len(sg["tensors"]):
            continue
        t = sg["tensors"][i]
        sig = t.get("shape_signature") or []
        if any(d < 0 for d in sig[1:]):
            raise EdgetlError(
                f"{name}: the model has a dynamic input size (input '{t.get('name')}' is {sig}), which edgetl "
                "does not run: it needs a fixed height and width",
                hint="export the model with a fixed input size, e.g. keras.Input((224, 224, 3)), then convert it again")


def load(path, num_threads: int | None = None, backend: str | None = None, trusted: bool = False) -> LoadedModel:
    """Open a .tflite file: read it (a regular file, size-capped), check its structure and what its tensors
    declare (tflite_format.check_memory), read its metadata, then open it in the interpreter.

    ``trusted=False`` (the default, for any file a user hands edgetl): the first load and one inference are
    tried in a child process first (``probe``: a crash of the native interpreter there is reported as an
    error, never taking this process down; the verdict is remembered per model and backend). ``trusted=True``
    skips that: for a file edgetl itself has just written (the toolchain's conversions)."""
    p, content = read_model_bytes(path)
    not_tflite(p, content)
    structure = tflite_format.parse_model(content, str(p))
    declared = tflite_format.check_memory(structure, str(p))
    check_io(structure, p)
    check_fixed_inputs(structure, p)
    found = metadata.read_all(content, structure)
    be = backends.resolve(backend)
    threads = backends.default_threads() if num_threads is None else backends.check_threads(num_threads)
    verdict = None
    if not trusted:
        from . import probe

        verdict = probe.check(content, be, declared)
        problem = verdict_error(p, verdict)
        if problem is not None:
            raise problem
    with nativelog.held():  # the interpreter's banner; a failure's own words are in its exception
        m = _open(p, content, structure, found, be, threads)
    if verdict is not None and verdict.stage == "invoke":
        m.run_error = verdict.error
    return m


def not_tflite(p: Path, content: bytes) -> None:
    """A Keras model (a .keras ZIP archive, or an HDF5 .h5) handed to the runtime: say so, and what to
    run instead (the .tflite files beside it, or `edgetl quantize` to make them)."""
    kind = ("a Keras model (.keras archive)" if content[:4] == b"PK\x03\x04" and p.suffix.lower() == ".keras"
            else "a Keras/HDF5 model" if content[:8] == b"\x89HDF\r\n\x1a\n" else None)
    if kind is None:
        return
    beside = sorted(x.name for x in p.parent.glob("model_*.tflite") if x.is_file())
    if beside and (p.parent / "report.json").is_file():  # in a run folder
        hint = (f"run one of the TFLite models beside it ({', '.join(beside)}), or pass the run folder {p.parent} "
                f"(its fastest model that passed parity); `edgetl quantize {p.parent} --quantize MODE` makes "
                "another mode")
    elif beside:
        hint = f"run one of the TFLite models beside it ({', '.join(beside)}), or convert it with `edgetl quantize`"
    else:
        hint = (f"convert it first: `edgetl quantize {p} --calibration PHOTO_DIR` writes model_int8.tflite and "
                "model_float32.tflite beside it (the build does this for a run), then pass one of those")
    raise EdgetlError(f"{p} is {kind}, not a TFLite model: the runtime runs .tflite files", hint=hint)


def verdict_error(p, v) -> EdgetlError | None:
    """The error for a probe verdict that forbids opening the model here (None: open it)."""
    if v.ok or v.stage == "invoke" and not (v.memory or v.crashed or v.timeout):
        return None
    if v.crashed:
        how = f"signal {v.signal}" if v.signal else f"exit code {v.exit_code}"
        return EdgetlError(f"{p}: the interpreter crashed on this model ({how})",
                           hint="the file is corrupt or was not written by a TFLite converter: copy or export it "
                                "again (edgetl opened it in a separate process first, so nothing else was hurt)")
    if v.timeout:
        return EdgetlError(f"{p}: the interpreter did not finish loading and running this model once within "
                           f"{v.timeout:.0f} s", hint="the file is corrupt, or this device is too slow for it: "
                                                      "set EDGETL_PROBE_TIMEOUT=SECONDS to wait longer")
    if v.memory:
        limit = f"; its limit was {v.limit / 1e9:.1f} GB, from what its tensors declare" if v.limit else ""
        return EdgetlError(f"{p}: the interpreter ran out of memory preparing this model ({v.error}{limit})",
                           hint="the file is corrupt: its operators need far more memory than its tensors declare; "
                                "copy or export it again")
    if v.stage == "create":
        return refused(p, v.error)
    return cannot_prepare(p, v.error)


def refused(p, message) -> EdgetlError:
    return EdgetlError(f"{p}: the interpreter refused the model ({message})",
                       hint="the file is corrupt or was written for a newer runtime")


MISSING_OP_WORDS = ("didn't find op", "custom op", "unsupported", "not supported", "unresolved")


def cannot_prepare(p, message) -> EdgetlError:
    text = str(message or "").strip().splitlines()
    first = text[0] if text else "no reason given"
    if any(w in first.lower() for w in MISSING_OP_WORDS):
        hint = "the model needs operators this runtime lacks; try another --backend"
    else:
        hint = "the file is corrupt or not a model this runtime can prepare: copy or export it again"
    return EdgetlError(f"{p}: cannot prepare the model ({first})", hint=hint)


def _open(p, content, structure, found, be, threads) -> LoadedModel:
    try:
        interp = backends.make_interpreter(be, content, threads)
    except ValueError as e:
        raise refused(p, e) from None
    try:
        op_details = list(interp._get_ops_details())  # before allocation: the original operators
    except Exception:  # private API; op names are informative only
        op_details = []
    try:
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise cannot_prepare(p, e) from None
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
    if len(i.shape) == 4 and i.shape[0] < 1:
        raise EdgetlError(f"{m.path}: model input has batch size {i.shape[0]}", hint="edgetl runs image classifiers "
                          "whose input is [batch, height, width, 3] with a batch of at least 1")
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
    if len(o.shape) < 2 or int(np.prod(o.shape)) != o.shape[-1] * o.shape[0]:
        raise EdgetlError(f"{m.path}: model output is not a score vector (shape {list(o.shape)})",
                          hint="edgetl runs classifiers whose output is [batch, classes]")
    if o.shape[0] < 1:
        raise EdgetlError(f"{m.path}: model output has batch size {o.shape[0]} (shape {list(o.shape)})",
                          hint="edgetl runs classifiers whose output is [batch, classes]")
    if o.shape[-1] < 2:
        raise EdgetlError(f"{m.path}: model output has {o.shape[-1]} score(s); a classifier has at least 2",
                          hint="edgetl runs classifiers whose output is [batch, classes]")
