"""Model metadata inside a .tflite file: both forms, read and written here and nowhere else.

A .tflite that edgetl writes is the converter's flatbuffer with two additions:

1. **Standard TFLite metadata** (what MediaPipe Tasks, the TFLite Task Library and Android Studio read):
   a ``ModelMetadata`` flatbuffer (file identifier ``M001``, schema ``metadata_schema.fbs`` of
   tflite-support) stored in one of the model's buffers and named by a ``Model.metadata`` entry
   ``TFLITE_METADATA``. It holds the model's name, description, version and author; for the input
   tensor ``ImageProperties`` (RGB) and ``NormalizationOptions`` that are true for the model (edgetl
   models take raw 0-255 pixels and scale inside the graph: mean 0, std 1), and stats; for the output
   tensor the labels as an associated file of type ``TENSOR_AXIS_LABELS``, and stats; and the
   ``min_parser_version`` computed as tflite-support's writer computes it.
2. **One ZIP archive at the end of the file**, every entry stored (uncompressed: MediaPipe refuses
   compressed entries and reads only the last archive): the labels file the standard metadata names
   (``labels.txt``) and ``edgetl/metadata.json``, plus any entry that was already there and is not
   edgetl's (e.g. a Coral model's ``imagenet_labels.txt``). Interpreters ignore what follows the
   flatbuffer; ``unzip -l model.tflite`` lists the files.

``edgetl/metadata.json`` (format ``edgetl.metadata``; version 2 since the archive became stored with the
labels at ``labels.txt``; version 1 files, deflated with ``edgetl/labels.txt``, are still read) holds:
``labels``, ``input`` (size, colour order, resize policy, value range the model expects, dtype and
quantization), ``output`` (dtype, quantization, whether it holds probabilities), ``mode``, ``io``,
``edgetl_version``, ``keras_model_sha256``, ``dataset`` (a summary), ``parity`` (figures), ``created`` and
``tflite_metadata`` (``"edgetl"`` when edgetl wrote the standard metadata, ``"kept"`` when the model's
own was kept).

Reading is pure Python (no TensorFlow, no flatbuffers package), bounds-checked, and never trusts the
file: every archive member is capped (``MAX_MEMBER_BYTES``) before and while it is read, encrypted or
unknown-compression members are refused, JSON is depth-limited and type-checked, the ModelMetadata
flatbuffer is walked with the bounds-checked reader of ``tflite_format``. Invalid metadata of either
form is treated as no metadata of that form, and ``Found.problems`` says why (the runtime shows it as
a warning). Writing (``embed``, ``write``) needs the ``flatbuffers`` package and the TFLite schema's
object API (from ai-edge-litert or TensorFlow), imported only there.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import files, tflite_format

FORMAT = "edgetl.metadata"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_NAME = "edgetl/metadata.json"
LABELS_NAME = "labels.txt"  # the standard TENSOR_AXIS_LABELS file (format version 2)
LEGACY_LABELS_NAME = "edgetl/labels.txt"  # format version 1
EDGETL_PREFIX = "edgetl/"
STANDARD_NAME = "TFLITE_METADATA"
STANDARD_IDENTIFIER = b"M001"
AUTHOR = "edgetl"

# Limits on what a file may make the reader do.
MAX_MEMBER_BYTES = 4 << 20  # uncompressed size of one archive member the runtime reads
MAX_MEMBERS = 256  # entries in the archive
MAX_STANDARD_BYTES = 1 << 20  # the ModelMetadata flatbuffer
MAX_JSON_DEPTH = 32
MAX_LABELS = 100_000
MAX_VECTOR = 4096  # tables or floats in one ModelMetadata vector
MAX_ARCHIVES = 4  # trailing archives `embed` peels off (an older tool may have appended one after another)
EMBED_MEMBER_BYTES = 256 << 20  # members `embed` carries over (files edgetl did not write are never dropped)

# Enums of metadata_schema.fbs
CONTENT_TYPES = {0: None, 1: "FeatureProperties", 2: "ImageProperties", 3: "BoundingBoxProperties",
                 4: "AudioProperties"}
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
PROCESS_UNITS = {0: None, 1: "NormalizationOptions", 2: "ScoreCalibrationOptions", 3: "ScoreThresholdingOptions",
                 4: "BertTokenizerOptions", 5: "SentencePieceTokenizerOptions", 6: "RegexTokenizerOptions"}
FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS",
              4: "TENSOR_AXIS_SCORE_CALIBRATION", 5: "VOCABULARY", 6: "SCANN_INDEX_FILE"}
SCORE_TRANSFORMS = {0: "IDENTITY", 1: "LOG", 2: "INVERSE_LOGISTIC"}


def _code(table: dict, name):
    return next(k for k, v in table.items() if v == name)


class MetadataError(ValueError):
    """Metadata that cannot be used; the message says why. The only exception the parsers raise."""


class MetadataWarning(UserWarning):
    """A model's metadata was ignored or is incomplete (shown once, when the model is opened)."""


@dataclass
class Found:
    """What a .tflite file carries. ``edgetl``/``standard`` are None when absent or invalid."""

    edgetl: dict | None = None
    standard: dict | None = None
    files: list = field(default_factory=list)  # names in the archive at the end of the file
    problems: list = field(default_factory=list)  # why a form was ignored, or what is missing


# ====================================================================== ZIP archive


def _find_eocd(data) -> int | None:
    """Offset of an end-of-central-directory record whose comment ends exactly at the end of ``data``."""
    n = len(data)
    lo = max(0, n - 22 - 0xFFFF)
    tail = bytes(data[lo:])
    pos = len(tail)
    while True:
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            return None
        if pos + 22 <= len(tail):
            comment = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + 22 + comment == len(tail):
                return lo + pos


class _Archive:
    def __init__(self, z: zipfile.ZipFile, start: int):
        self.z = z
        self.start = start
        self.infos = [i for i in z.infolist() if not i.filename.endswith("/")]  # (is_dir() fails on "")
        self.names = [i.filename for i in self.infos]

    def info(self, name):
        for i in self.infos:
            if i.filename == name:
                return i
        return None

    def read(self, name, cap: int = MAX_MEMBER_BYTES) -> bytes:
        info = self.info(name)
        if info is None:
            raise MetadataError(f"{name} is not in the archive")
        return _read_member(self.z, info, cap)


def _open_archive(data) -> _Archive | None:
    """The ZIP archive at the very end of ``data`` (the last one), or None when there is none.

    Raises MetadataError when an archive is there but cannot be used."""
    if _find_eocd(data) is None:
        return None
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            raise MetadataError(f"the archive holds {len(infos)} entries (at most {MAX_MEMBERS} are read)")
        start = min([i.header_offset for i in infos] + [z.start_dir])
        if not 8 <= start <= len(data):
            raise MetadataError("the ZIP archive at the end of the file points outside it")
        return _Archive(z, start)
    except MetadataError:
        raise
    except Exception as e:  # zipfile raises many types on crafted input; all mean "unusable archive"
        raise MetadataError(f"the ZIP archive at the end of the file is corrupt ({_short(e)})") from None


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, refusing encrypted, unknown-compression and over-``cap`` members BEFORE reading,
    and reading at most ``cap + 1`` bytes (headers can lie about sizes)."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise MetadataError(f"{name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise MetadataError(f"{name} uses compression method {info.compress_type} (only stored or deflated is read)")
    if info.file_size > cap:
        raise MetadataError(f"{name} is {info.file_size} bytes uncompressed, over the {cap} byte limit")
    try:
        with z.open(info) as f:
            out = f.read(cap + 1)
    except Exception as e:  # BadZipFile (CRC, header mismatch), zlib.error, EOFError, ...
        raise MetadataError(f"{name} cannot be read ({_short(e)})") from None
    if len(out) > cap:
        raise MetadataError(f"{name} inflates past the {cap} byte limit")
    return out


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _dos_zip(files, base: int) -> bytes:
    """A ZIP archive of ``files`` [(name, bytes)], every entry STORED, deterministic (fixed dates and
    attributes), with offsets counted from the start of the file it is appended to (``base``), as
    tflite-support's populator writes them."""
    out = bytearray()
    central = bytearray()
    for name, data in files:
        raw = name.encode("utf-8")
        flags = 0x800 if not raw.isascii() else 0
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = base + len(out)
        # local header: signature, version 1.0, flags, stored, time 00:00, date 1980-01-01, crc, sizes, name
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 10, flags, 0, 0, 0x21, crc, len(data), len(data),
                           len(raw), 0) + raw + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (3 << 8) | 20, 10, flags, 0, 0, 0x21, crc,
                               len(data), len(data), len(raw), 0, 0, 0, 0, 0o100644 << 16, offset) + raw
    cd_offset = base + len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(files), len(files), len(central), cd_offset, 0)
    return bytes(out)


# ====================================================================== edgetl JSON


def _parse_json(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError("metadata.json is not UTF-8 text") from None

    def no_constants(word):
        raise ValueError(f"{word} is not a JSON number")

    try:
        obj = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise MetadataError("metadata.json is nested too deeply") from None
    except ValueError as e:
        raise MetadataError(f"metadata.json is not valid JSON ({_short(e)})") from None
    _check_depth(obj)
    return obj


def _check_depth(obj, limit: int = MAX_JSON_DEPTH):
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                raise MetadataError(f"metadata.json is nested more than {limit} levels deep")
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_edgetl(meta) -> dict:
    """``meta`` if it is a usable edgetl metadata dict; MetadataError saying what is wrong otherwise."""
    from .preprocess import RESIZE_POLICIES

    if not isinstance(meta, dict):
        raise MetadataError(f"metadata.json holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise MetadataError(f"metadata.json is not edgetl's (format {str(meta.get('format'))[:40]!r})")
    v = meta.get("format_version")
    if not _is_int(v) or v < 1:
        raise MetadataError("format_version must be a positive integer")
    if v not in READABLE_VERSIONS:
        raise MetadataError(f"format version {v} is newer than this runtime reads ({max(READABLE_VERSIONS)}); "
                            "update edgetl")
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise MetadataError("labels must be a list of strings")
        if not 1 <= len(labels) <= MAX_LABELS:
            raise MetadataError(f"labels must hold 1 to {MAX_LABELS} names")
    inp = meta.get("input")
    if inp is not None:
        if not isinstance(inp, dict):
            raise MetadataError("input must be an object")
        size = inp.get("size")
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(_is_int(x) and 0 < x < 1 << 16 for x in size)):
            raise MetadataError("input.size must be [height, width] (positive integers)")
        vr = inp.get("value_range")
        if vr is not None and not (isinstance(vr, list) and len(vr) == 2 and all(_is_num(x) for x in vr)
                                   and vr[1] > vr[0]):
            raise MetadataError("input.value_range must be [low, high], two finite numbers with low < high")
        rz = inp.get("resize")
        if rz is not None and rz not in RESIZE_POLICIES:
            raise MetadataError(f"input.resize must be one of {', '.join(RESIZE_POLICIES)}")
        color = inp.get("color")
        if color is not None and color not in ("RGB", "GRAYSCALE"):
            raise MetadataError("input.color must be RGB or GRAYSCALE")
        for k in ("dtype", "layout", "interpolation"):
            if inp.get(k) is not None and not isinstance(inp[k], str):
                raise MetadataError(f"input.{k} must be a string")
    out = meta.get("output")
    if out is not None:
        if not isinstance(out, dict):
            raise MetadataError("output must be an object")
        if "probabilities" in out and not isinstance(out["probabilities"], bool):
            raise MetadataError("output.probabilities must be true or false")
    for part in (inp, out):
        q = (part or {}).get("quantization")
        if q is not None and not (isinstance(q, dict) and _is_num(q.get("scale")) and _is_int(q.get("zero_point"))):
            raise MetadataError("quantization must be {scale: number, zero_point: integer} or null")
    for k in ("mode", "io", "edgetl_version", "created", "keras_model_sha256", "task", "tflite_metadata"):
        if meta.get(k) is not None and not isinstance(meta[k], str):
            raise MetadataError(f"{k} must be a string")
    for k in ("dataset", "parity"):
        if meta.get(k) is not None and not isinstance(meta[k], dict):
            raise MetadataError(f"{k} must be an object")
    ms = meta.get("min_score")
    if ms is not None and not (_is_num(ms) and 0 <= ms < 1):
        raise MetadataError("min_score must be a number from 0 to 1 (below 1)")
    return meta


# ====================================================================== standard metadata: reading


def _vec_len(r, table, index, elem=4) -> tuple:
    start, length = r.vector(table, index, elem)
    if length > MAX_VECTOR:
        raise MetadataError(f"a ModelMetadata vector holds {length} items (at most {MAX_VECTOR})")
    return start, length


def _tables(r, table, index) -> list:
    start, length = _vec_len(r, table, index)
    return [r.ref(start + 4 * i) for i in range(length)] if start is not None else []


def _floats(r, table, index) -> list:
    _vec_len(r, table, index)
    return [float(x) for x in r.floats(table, index)]


def _files(r, table, index) -> list:
    out = []
    for f in _tables(r, table, index):
        t = r.scalar(f, 2, "u8", 0)
        d = {"name": r.string(f, 0), "description": r.string(f, 1), "type": FILE_TYPES.get(t, f"UNKNOWN({t})")}
        for key, slot in (("locale", 3), ("version", 4)):
            v = r.string(f, slot)
            if v:
                d[key] = v
        out.append(d)
    return out


def _tensor_md(r, t) -> dict:
    d = {"name": r.string(t, 0), "description": r.string(t, 1), "content": None}
    content = r.table(t, 3)
    if content is not None:
        kind, props = r.union(content, 0)
        d["content"] = CONTENT_TYPES.get(kind, f"unknown({kind})")
        if kind == 2 and props is not None:
            cs = r.scalar(props, 0, "u8", 0)
            d["color_space"] = COLOR_SPACES.get(cs, f"unknown({cs})")
            size = r.table(props, 1)
            if size is not None:
                d["default_size"] = {"width": r.scalar(size, 0, "u32", 0), "height": r.scalar(size, 1, "u32", 0)}
    units = []
    for pu in _tables(r, t, 4):
        kind, opt = r.union(pu, 0)
        u = {"type": PROCESS_UNITS.get(kind, f"unknown({kind})")}
        if opt is not None:
            if kind == 1:
                u["mean"], u["std"] = _floats(r, opt, 0), _floats(r, opt, 1)
            elif kind == 2:
                tr = r.scalar(opt, 0, "u8", 0)
                u["score_transformation"] = SCORE_TRANSFORMS.get(tr, f"unknown({tr})")
                u["default_score"] = r.scalar(opt, 1, "f32", 0.0)
            elif kind == 3:
                u["global_score_threshold"] = r.scalar(opt, 0, "f32", 0.0)
        units.append(u)
    d["process_units"] = units
    stats = r.table(t, 5)
    if stats is not None:
        d["stats"] = {"min": _floats(r, stats, 1), "max": _floats(r, stats, 0)}
    d["associated_files"] = _files(r, t, 6)
    return d


def parse_model_metadata(buf) -> dict:
    """The ModelMetadata flatbuffer ``buf`` as a dict. Raises MetadataError (only) when it is unusable."""
    buf = bytes(buf)
    if len(buf) > MAX_STANDARD_BYTES:
        raise MetadataError(f"the ModelMetadata flatbuffer is {len(buf)} bytes (at most {MAX_STANDARD_BYTES})")
    if len(buf) < 12 or buf[4:8] != STANDARD_IDENTIFIER:
        raise MetadataError("TFLITE_METADATA is not a ModelMetadata flatbuffer (no 'M001' identifier)")
    r = tflite_format.Reader(buf)
    try:
        root = r.ref(0)
        out = {k: r.string(root, i) for k, i in (("name", 0), ("description", 1), ("version", 2), ("author", 4),
                                                  ("license", 5), ("min_parser_version", 7))}
        subgraphs = []
        for sg in _tables(r, root, 3):
            s = {"name": r.string(sg, 0), "description": r.string(sg, 1),
                 "inputs": [_tensor_md(r, t) for t in _tables(r, sg, 2)],
                 "outputs": [_tensor_md(r, t) for t in _tables(r, sg, 3)],
                 "associated_files": _files(r, sg, 4)}
            for key, slot in (("input_process_units", 5), ("output_process_units", 6), ("input_tensor_groups", 7),
                              ("output_tensor_groups", 8), ("custom_metadata", 9)):
                if r.field(sg, slot) is not None:
                    s[key] = True  # present (only its presence matters to the parser version)
            subgraphs.append(s)
        out["subgraphs"] = subgraphs
        out["associated_files"] = _files(r, root, 6)
    except (tflite_format.Corrupt, struct.error) as e:
        raise MetadataError(f"the ModelMetadata flatbuffer is corrupt ({e})") from None
    return out


def min_parser_version(md: dict) -> str:
    """The least metadata parser version that understands ``md`` (a parsed or to-be-written ModelMetadata),
    computed as tflite-support's metadata_version.cc does: 1.0.0, raised by each later schema member used."""
    v = (1, 0, 0)

    def need(x):
        nonlocal v
        v = max(v, x)

    def files(fs):
        for f in fs or ():
            if f.get("type") == "VOCABULARY":
                need((1, 0, 1))
            elif f.get("type") == "SCANN_INDEX_FILE":
                need((1, 4, 0))
            if f.get("version"):
                need((1, 4, 1))

    def units(us):
        for u in us or ():
            t = u.get("type")
            if t in ("BertTokenizerOptions", "SentencePieceTokenizerOptions"):
                need((1, 1, 0))
            elif t == "RegexTokenizerOptions":
                need((1, 2, 1))

    for sg in md.get("subgraphs") or ():
        for t in list(sg.get("inputs") or ()) + list(sg.get("outputs") or ()):
            files(t.get("associated_files"))
            units(t.get("process_units"))
            if t.get("content") == "AudioProperties":
                need((1, 3, 0))
        files(sg.get("associated_files"))
        if sg.get("input_process_units") or sg.get("output_process_units"):
            need((1, 1, 0))
        if sg.get("input_tensor_groups") or sg.get("output_tensor_groups"):
            need((1, 2, 0))
        if sg.get("custom_metadata"):
            need((1, 5, 0))
    files(md.get("associated_files"))
    return ".".join(str(x) for x in v)


def _standard_view(md: dict, archive: _Archive | None, structure: dict | None, problems: list) -> dict:
    """What the runtime uses from a parsed ModelMetadata: the first subgraph's input and output, the
    normalization, colour space and labels (read from the archive). Raises MetadataError when unusable."""
    sgs = md.get("subgraphs") or []
    sg = sgs[0] if sgs else {}
    ins, outs = sg.get("inputs") or [], sg.get("outputs") or []
    view = {k: md.get(k) for k in ("name", "description", "version", "author", "license", "min_parser_version")}
    graph = (structure or {}).get("subgraphs", [{}])[0] if structure else None
    channels = None
    shapes_out = []
    if graph:
        tensors = graph["tensors"]
        shapes_in = [tensors[i]["shape"] for i in graph["inputs"] if 0 <= i < len(tensors)]
        shapes_out = [tensors[i]["shape"] for i in graph["outputs"] if 0 <= i < len(tensors)]
        if len(ins) not in (0, len(shapes_in)) or len(outs) not in (0, len(shapes_out)):
            raise MetadataError(f"it describes {len(ins)} input(s) and {len(outs)} output(s); the model has "
                                f"{len(shapes_in)} and {len(shapes_out)}")
        channels = shapes_in[0][-1] if shapes_in and shapes_in[0] else None
    inp = dict(ins[0]) if ins else {}
    norm = next((u for u in inp.get("process_units") or () if u["type"] == "NormalizationOptions"), None)
    if norm is not None:
        mean, std = norm.get("mean") or [], norm.get("std") or []
        allowed = {1, channels} if channels else {1, 3}
        if len(mean) not in allowed or len(std) not in allowed:
            raise MetadataError(f"NormalizationOptions has {len(mean)} mean and {len(std)} std values; the input "
                                f"has {channels or 3} channel(s)")
        if not all(math.isfinite(x) for x in mean + std) or any(x == 0 for x in std):
            raise MetadataError("NormalizationOptions holds a non-finite mean/std or a zero std")
        inp["normalization"] = {"mean": mean, "std": std}
    view["input"] = inp
    view["outputs"] = []
    for k, o in enumerate(outs):
        o = dict(o)
        n = shapes_out[k][-1] if graph and k < len(shapes_out) and shapes_out[k] else None
        where = "" if len(outs) == 1 else f" (output {k})"
        o["labels"], o["labels_file"] = _labels_of(o, archive, n, problems, where)
        o["calibration"] = _calibration_of(o, archive, n, problems, where)
        thr = next((u for u in o.get("process_units") or () if u["type"] == "ScoreThresholdingOptions"), None)
        if thr is not None and math.isfinite(thr.get("global_score_threshold", 0.0)):
            o["score_threshold"] = thr.get("global_score_threshold", 0.0)  # MediaPipe drops scores below it
        view["outputs"].append(o)
    out = view["outputs"][0] if outs else {"labels": None, "labels_file": None, "calibration": None}
    view["output"] = out
    files = []
    for where, fs in (("model", md.get("associated_files")), ("subgraph", sg.get("associated_files")),
                      ("input", inp.get("associated_files")), ("output", out.get("associated_files"))):
        files += [dict(f, tensor=where) for f in fs or ()]
    for k, o in enumerate(view["outputs"][1:], 1):
        files += [dict(f, tensor=f"output {k}") for f in o.get("associated_files") or ()]
    view["associated_files"] = files
    view["labels"], view["labels_file"] = out["labels"], out["labels_file"]
    view["calibration"] = out["calibration"]
    return view


def _labels_of(out: dict, archive, classes, problems: list, where: str = "") -> tuple:
    """(labels or None, label file name or None) of one output tensor's metadata."""
    label_files = [f for f in out.get("associated_files") or () if f["type"] == "TENSOR_AXIS_LABELS"]
    if not label_files:
        return None, None
    lf = next((f for f in label_files if not f.get("locale")), label_files[0])
    name = lf["name"] or ""
    try:
        if archive is None:
            raise MetadataError("the file has no archive with associated files")
        labels = parse_labels(archive.read(name))
        if classes is not None and len(labels) != classes:
            raise MetadataError(f"it holds {len(labels)} labels for {classes} outputs")
        return labels, name
    except MetadataError as e:
        problems.append(f"standard TFLite metadata{where}: label file {name!r} not used: {e}")
        return None, name


def _calibration_of(out: dict, archive, classes, problems: list, where: str = ""):
    """The output's ScoreCalibrationOptions with its TENSOR_AXIS_SCORE_CALIBRATION file, as a
    ``calibration.ScoreCalibration`` (None when absent; a problem, and None, when MediaPipe would refuse it)."""
    from .calibration import ScoreCalibration, parse_file

    unit = next((u for u in out.get("process_units") or () if u["type"] == "ScoreCalibrationOptions"), None)
    if unit is None:
        return None
    files = [f for f in out.get("associated_files") or () if f["type"] == "TENSOR_AXIS_SCORE_CALIBRATION"]
    name = (files[0]["name"] or "") if files else None
    try:
        if name is None:
            raise MetadataError("there is no associated file of type TENSOR_AXIS_SCORE_CALIBRATION")
        if archive is None:
            raise MetadataError("the file has no archive with associated files")
        try:
            sigmoids = parse_file(archive.read(name))
            cal = ScoreCalibration(unit.get("score_transformation", "IDENTITY"), float(unit.get("default_score", 0.0)),
                                   sigmoids, name)
        except ValueError as e:
            raise MetadataError(str(e)) from None
        if classes is not None and len(sigmoids) != classes:
            raise MetadataError(f"{name!r} holds {len(sigmoids)} lines for {classes} scores"
                                + (" (a newline at the end of the file counts as one more line)"
                                   if len(sigmoids) == classes + 1 and sigmoids[-1] is None else ""))
        return cal
    except MetadataError as e:
        problems.append(f"standard TFLite metadata{where}: score calibration not applied, scores are uncalibrated "
                        f"(MediaPipe refuses this model): {e}")
        return None


def parse_labels(raw: bytes) -> list:
    """Labels from a label file: one per line (UTF-8), trailing empty lines dropped."""
    lines = raw.decode("utf-8", "replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not 1 <= len(lines) <= MAX_LABELS:
        raise MetadataError(f"a label file must hold 1 to {MAX_LABELS} lines")
    return [ln.strip() for ln in lines]


# ====================================================================== reading both forms


def _standard_bytes(data, structure: dict) -> bytes | None:
    entry = next((m for m in structure.get("metadata") or () if m["name"] == STANDARD_NAME), None)
    if entry is None:
        return None
    spans = structure.get("buffer_spans") or []
    if not 0 <= entry["buffer"] < len(spans):
        raise MetadataError(f"TFLITE_METADATA points at buffer {entry['buffer']} of {len(spans)}")
    start, length = spans[entry["buffer"]]
    if length > MAX_STANDARD_BYTES:
        raise MetadataError(f"the ModelMetadata flatbuffer is {length} bytes (at most {MAX_STANDARD_BYTES})")
    return bytes(data[start : start + length])


def read_all(data, structure: dict | None = None) -> Found:
    """Both metadata forms of a model file's bytes. Never raises on bad metadata: what cannot be used is
    left out and ``problems`` says why. ``structure`` is ``tflite_format.parse_model(data)`` (parsed here
    when not given; a file that is not a TFLite model has no standard metadata)."""
    found = Found()
    archive = None
    try:
        archive = _open_archive(data)
    except MetadataError as e:
        found.problems.append(f"archive ignored: {e}")
    if archive is not None:
        found.files = list(archive.names)
    # edgetl JSON
    if archive is not None and META_NAME in archive.names:
        try:
            found.edgetl = validate_edgetl(_parse_json(archive.read(META_NAME)))
        except MetadataError as e:
            found.problems.append(f"edgetl metadata ignored: {e}")
    # standard ModelMetadata
    if structure is None:
        try:
            structure = tflite_format.parse_model(data)
        except Exception:
            structure = None
    if structure is not None:
        try:
            raw = _standard_bytes(data, structure)
            if raw is not None:
                found.standard = _standard_view(parse_model_metadata(raw), archive, structure, found.problems)
        except MetadataError as e:
            found.problems.append(f"standard TFLite metadata ignored: {e}")
    # labels of the edgetl form must fit the model too
    if found.edgetl and structure is not None and found.edgetl.get("labels") is not None:
        g = structure["subgraphs"][0]
        shape = g["tensors"][g["outputs"][0]]["shape"] if g["outputs"] else []
        if shape and len(found.edgetl["labels"]) != shape[-1]:
            found.problems.append(f"edgetl metadata ignored: it holds {len(found.edgetl['labels'])} labels for "
                                  f"{shape[-1]} outputs")
            found.edgetl = None
    return found


def _bytes_of(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return path_or_bytes
    return files.read_bytes(path_or_bytes, files.MAX_MODEL_BYTES, "model")  # a regular file, size-capped


def read(path_or_bytes) -> dict | None:
    """The edgetl metadata dict of a model (path or bytes), or None (absent or invalid)."""
    return read_all(_bytes_of(path_or_bytes)).edgetl


def read_standard(path_or_bytes) -> dict | None:
    """The standard TFLite metadata of a model (path or bytes) as the runtime sees it, or None."""
    return read_all(_bytes_of(path_or_bytes)).standard


def split(data) -> tuple:
    """(bytes before the archive at the end of the file, edgetl metadata dict or None)."""
    found = read_all(data)
    try:
        a = _open_archive(data)
    except MetadataError:
        a = None
    return bytes(data[: a.start] if a is not None else data), found.edgetl


# ====================================================================== writing


def _schema():
    """The TFLite model schema's Python object API, from LiteRT or TensorFlow (imported only to write)."""
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as s
        except ImportError:
            raise ImportError("writing TFLite metadata needs the TFLite schema from ai-edge-litert or "
                              "TensorFlow (pip install ai-edge-litert)") from None
    return s


def build_model_metadata(md: dict) -> bytes:
    """A ModelMetadata flatbuffer (identifier M001) for ``md``, shaped like ``parse_model_metadata``'s
    result: name, description, version, author, license, subgraphs [{inputs, outputs}] of tensors
    {name, description, content, color_space, process_units, stats, associated_files}, associated_files.
    Process units: ``{"type": "NormalizationOptions", "mean": [...], "std": [...]}`` and
    ``{"type": "ScoreCalibrationOptions", "score_transformation": "IDENTITY"|"LOG"|"INVERSE_LOGISTIC",
    "default_score": x}`` (its parameters go in an associated file of type TENSOR_AXIS_SCORE_CALIBRATION).
    ``min_parser_version`` is computed. Field ids are those of metadata_schema.fbs."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def string(x):
        return None if x is None else b.CreateString(str(x))

    def floats(vals):
        b.StartVector(4, len(vals), 4)
        for v in reversed(vals):
            b.PrependFloat32(float(v))
        return b.EndVector()

    def offsets(offs):
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    def table(nslots, offs=(), bytes_=()):
        b.StartObject(nslots)
        for slot, v in offs:
            if v is not None:
                b.PrependUOffsetTRelativeSlot(slot, v, 0)
        for slot, v in bytes_:
            if v:
                b.PrependUint8Slot(slot, v, 0)
        return b.EndObject()

    def assoc(files):
        if not files:
            return None
        made = []
        for f in files:
            name, desc = string(f.get("name")), string(f.get("description"))
            loc, ver = string(f.get("locale")), string(f.get("version"))
            made.append(table(5, [(0, name), (1, desc), (3, loc), (4, ver)],
                              [(2, _code(FILE_TYPES, f.get("type", "UNKNOWN")))]))
        return offsets(made)

    def tensor(t):
        name, desc = string(t.get("name")), string(t.get("description"))
        content = None
        kind = t.get("content")
        if kind:
            props = table(2, (), [(0, _code(COLOR_SPACES, t.get("color_space", "UNKNOWN")))]) \
                if kind == "ImageProperties" else table(0)
            content = table(3, [(1, props)], [(0, _code(CONTENT_TYPES, kind))])
        units = None
        if t.get("process_units"):
            made = []
            for u in t["process_units"]:
                if u["type"] == "NormalizationOptions":
                    mean, std = floats(u["mean"]), floats(u["std"])
                    opt = table(2, [(0, mean), (1, std)])
                elif u["type"] == "ScoreThresholdingOptions":  # table { global_score_threshold: float } (id 0)
                    b.StartObject(1)
                    b.PrependFloat32Slot(0, float(u["global_score_threshold"]), 0.0)
                    opt = b.EndObject()
                elif u["type"] == "ScoreCalibrationOptions":
                    b.StartObject(2)
                    b.PrependUint8Slot(0, _code(SCORE_TRANSFORMS, u.get("score_transformation", "IDENTITY")), 0)
                    b.PrependFloat32Slot(1, float(u.get("default_score", 0.0)), 0.0)
                    opt = b.EndObject()
                else:
                    raise ValueError(f"writing process unit {u['type']} is not supported")
                # ProcessUnit { options: ProcessUnitOptions }: the union's type (id 0), then its table (id 1)
                made.append(table(2, [(1, opt)], [(0, _code(PROCESS_UNITS, u["type"]))]))
            units = offsets(made)
        stats = None
        if t.get("stats"):
            mx, mn = floats(t["stats"]["max"]), floats(t["stats"]["min"])
            stats = table(2, [(0, mx), (1, mn)])
        files = assoc(t.get("associated_files"))
        return table(7, [(0, name), (1, desc), (3, content), (4, units), (5, stats), (6, files)])

    subgraphs = []
    for sg in md.get("subgraphs") or ():
        ins = offsets([tensor(t) for t in sg.get("inputs") or ()])
        outs = offsets([tensor(t) for t in sg.get("outputs") or ()])
        name, desc, files = string(sg.get("name")), string(sg.get("description")), assoc(sg.get("associated_files"))
        subgraphs.append(table(5, [(0, name), (1, desc), (2, ins), (3, outs), (4, files)]))
    sgs = offsets(subgraphs) if subgraphs else None
    fields = {k: string(md.get(k)) for k in ("name", "description", "version", "author", "license")}
    files = assoc(md.get("associated_files"))
    mpv = string(min_parser_version(md))
    root = table(8, [(0, fields["name"]), (1, fields["description"]), (2, fields["version"]), (3, sgs),
                     (4, fields["author"]), (5, fields["license"]), (6, files), (7, mpv)])
    b.Finish(root, file_identifier=STANDARD_IDENTIFIER)
    return bytes(b.Output())


def set_tflite_metadata(flat: bytes, model_metadata: bytes | None) -> bytes:
    """``flat`` (a TFLite flatbuffer, nothing after it) re-serialized with its TFLITE_METADATA buffer set to
    ``model_metadata`` (None removes the entry). An existing entry keeps its buffer index, so writing the
    same metadata twice gives the same bytes. Buffers are kept 16-byte aligned, as the converter writes them."""
    import flatbuffers
    import numpy as np

    s = _schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(flat), 0)
    for buf in model.buffers or ():
        if buf is not None and buf.offset > 1:
            raise ValueError("models whose buffers live outside the flatbuffer (over 2 GB) are not supported")
    entries = list(model.metadata or [])
    names = [(e.name.decode("utf-8", "replace") if isinstance(e.name, bytes) else e.name) for e in entries]
    idx = names.index(STANDARD_NAME) if STANDARD_NAME in names else None
    if model_metadata is None:
        if idx is not None:
            model.buffers[entries[idx].buffer].data = None  # buffer indices must not move
            del entries[idx]
    else:
        data = np.frombuffer(model_metadata, np.uint8)
        if idx is not None:
            model.buffers[entries[idx].buffer].data = data
        else:
            buf = s.BufferT()
            buf.data = data
            model.buffers.append(buf)
            e = s.MetadataT()
            e.name = STANDARD_NAME
            e.buffer = len(model.buffers) - 1
            entries.append(e)
    model.metadata = entries or None

    class _Aligned(s.BufferT):
        def Pack(self, builder):  # noqa: N802 (the generated API's name)
            vec = None
            if self.data is not None:
                raw = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head : builder.head + len(raw)] = raw
                builder.vectorNumElems = len(raw)
                vec = builder.EndVector()
            s.BufferStart(builder)
            if vec is not None:
                s.BufferAddData(builder, vec)
            s.BufferAddOffset(builder, self.offset)
            s.BufferAddSize(builder, self.size)
            return s.BufferEnd(builder)

    aligned = []
    for buf in model.buffers or ():
        a = _Aligned()
        if buf is not None:
            a.data, a.offset, a.size = buf.data, buf.offset, buf.size
        aligned.append(a)
    model.buffers = aligned
    builder = flatbuffers.Builder(len(flat) + (len(model_metadata) if model_metadata else 0) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=tflite_format.IDENTIFIER)
    return bytes(builder.Output())


def _strip(data: bytes) -> tuple:
    """(flatbuffer, [(name, bytes)] of every archive member, oldest first, later copies winning,
    edgetl JSON found or None). Peels off up to MAX_ARCHIVES trailing archives."""
    files: dict = {}
    prev = None
    for _ in range(MAX_ARCHIVES):
        a = _open_archive(data)
        if a is None:
            break
        got = [(name, a.read(name, EMBED_MEMBER_BYTES)) for name in a.names]
        if prev is None and META_NAME in a.names:
            try:
                prev = validate_edgetl(_parse_json(dict(got)[META_NAME]))
            except MetadataError:
                prev = None
        older = {n: d for n, d in got if n not in files}
        files = {**older, **files}
        data = data[: a.start]
    return bytes(data), list(files.items()), prev


def finite(obj):
    """``obj`` with every non-finite float (NumPy's too) replaced by None, so its JSON is valid everywhere
    (recursively through dicts, lists and arrays). The toolchain writes its JSON through this too."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.floating):
        return finite(float(obj))
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    return obj


def _norm_from_range(value_range) -> tuple:
    """(mean, std) such that (pixel - mean) / std maps pixel 0 to low and 255 to high."""
    lo, hi = float(value_range[0]), float(value_range[1])
    std = 255.0 / (hi - lo)
    return 0.0 - lo * std, std  # 0.0 - 0.0 is +0.0 (never a "-0" mean)


def standard_from_edgetl(meta: dict, structure: dict, labels_name: str = LABELS_NAME) -> dict:
    """The standard ModelMetadata (as a dict for ``build_model_metadata``) that describes an edgetl model
    truly: its pixels go in as the model expects them (raw 0-255 for edgetl's own models: mean 0, std 1),
    RGB, with the output's labels as a TENSOR_AXIS_LABELS file."""
    g = structure["subgraphs"][0]
    tin = g["tensors"][g["inputs"][0]]
    tout = g["tensors"][g["outputs"][0]]
    inp, outm = meta.get("input") or {}, meta.get("output") or {}
    mean, std = _norm_from_range(inp.get("value_range") or (0.0, 255.0))
    in_type, out_type = tin["type"], tout["type"]
    if in_type == "uint8":
        in_stats = {"min": [0.0], "max": [255.0]}
    elif in_type == "int8":
        in_stats = {"min": [-128.0], "max": [127.0]}
    else:
        in_stats = {"min": [(0.0 - mean) / std], "max": [(255.0 - mean) / std]}
    if out_type == "uint8":
        out_stats = {"min": [0.0], "max": [255.0]}
    elif out_type == "int8":
        out_stats = {"min": [-128.0], "max": [127.0]}
    else:
        out_stats = {"min": [0.0], "max": [1.0]}
    probs = outm.get("probabilities", True)
    size = inp.get("size") or list(tin["shape"][1:3])
    resize = inp.get("resize", "crop")
    ds = meta.get("dataset") or {}
    n_classes = len(meta.get("labels") or [])
    cc = inp.get("central_crop")
    if not (isinstance(cc, list) and len(cc) == 2 and all(_is_int(x) and 0 < x for x in cc)
            and list(cc) != list(size)):
        cc = None
    desc = (f"Image classifier made by edgetl (MobileNetV2 transfer learning), {meta.get('mode', '?')} TFLite, "
            f"{n_classes} classes" + (f", trained on {ds['total']} photos" if _is_int(ds.get("total")) else "")
            + f". Trained on photos resized with the '{resize}' policy"
            + (" (the whole frame, fitted exactly as MediaPipe Tasks fit it)" if resize == "mediapipe" else
               " (MediaPipe fits the whole frame instead; edge_runtime applies this policy)") + "."
            + (f" The network sees the central {cc[0]}x{cc[1]} pixels of the {size[0]}x{size[1]} input (a crop inside "
               "the graph): feed the whole frame." if cc else ""))
    return {
        "name": f"edgetl image classifier ({meta.get('mode', 'tflite')})",
        "description": desc,
        "version": str(meta.get("edgetl_version") or ""),
        "author": AUTHOR,
        "subgraphs": [{
            "inputs": [{
                "name": "image",
                "description": (f"RGB image, {size[0]}x{size[1]} pixels. Values are (pixel - mean) / std "
                                f"with mean {mean:g} and std {std:g}" + (" (raw 0-255 pixels: the model scales "
                                                                         "them inside its graph)."
                                                                         if (mean, std) == (0.0, 1.0) else ".")),
                "content": "ImageProperties",
                "color_space": "RGB",
                "process_units": [{"type": "NormalizationOptions", "mean": [mean], "std": [std]}],
                "stats": in_stats,
            }],
            "outputs": [{
                "name": "probability" if probs else "score",
                "description": ("Probabilities of the labels respectively (softmax)." if probs
                                else "Scores of the labels respectively (logits: no softmax in the graph)."),
                "content": "FeatureProperties",
                **({"process_units": [{"type": "ScoreThresholdingOptions",
                                       "global_score_threshold": float(meta["min_score"])}]}
                   if meta.get("min_score") else {}),
                "stats": out_stats,
                "associated_files": [{"name": labels_name, "type": "TENSOR_AXIS_LABELS",
                                      "description": "Labels for categories that the model can recognize."}],
            }],
        }],
    }


def _labels_text(labels) -> bytes:
    return ("\n".join(str(x).replace("\r", " ").replace("\n", " ") for x in labels) + "\n").encode("utf-8")


def _assemble(flat: bytes, old: list, standard: dict | None, new: list) -> bytes:
    if standard is not None:
        flat = set_tflite_metadata(flat, build_model_metadata(standard))
    replaced = {n for n, _ in new}
    kept = [(n, d) for n, d in old if n not in replaced and not n.startswith(EDGETL_PREFIX)]
    entries = kept + list(new)
    return flat + (_dos_zip(entries, len(flat)) if entries else b"")


def _json_bytes(meta: dict) -> bytes:
    return json.dumps(finite(meta), indent=1, sort_keys=True, allow_nan=False).encode("utf-8")


def write(model: bytes, edgetl: dict | None = None, standard: dict | None = None, files=None) -> bytes:
    """Low-level writer: ``model`` (flatbuffer, with or without archives) with the standard metadata
    ``standard`` (a dict for ``build_model_metadata``; None keeps the model's own), the edgetl dict
    ``edgetl`` (None: none) and ``files`` [(name, bytes)] in one stored archive at the end. Archive entries
    already in the model that are not edgetl's are kept (a name in ``files`` replaces its old copy)."""
    flat, old, _ = _strip(bytes(model))
    new = list(files or [])
    if edgetl is not None:
        new.append((META_NAME, _json_bytes(edgetl)))
    return _assemble(flat, old, standard, new)


def embed(model: bytes, meta: dict, labels_name: str = LABELS_NAME) -> bytes:
    """``model`` (a flatbuffer, with or without metadata already) with both metadata forms made from the
    edgetl dict ``meta``: the standard TFLITE_METADATA (unless the model carries standard metadata that
    edgetl did not write: that is kept) and one stored archive with the labels file and
    ``edgetl/metadata.json``. Entries that are not edgetl's are kept. Idempotent: embedding the same
    ``meta`` again gives the same bytes."""
    data = bytes(model)
    flat, old, prev = _strip(data)
    structure = tflite_format.parse_model(flat, "model")
    meta = dict(meta)
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    has_standard = any(m["name"] == STANDARD_NAME for m in structure.get("metadata") or ())
    existing = read_all(data).standard if has_standard else None
    # edgetl replaces only the standard metadata it wrote itself (its JSON says so and its author is edgetl)
    ours = not has_standard or bool(prev and prev.get("tflite_metadata") == "edgetl" and existing
                                    and existing.get("author") == AUTHOR)
    new, standard = [], None
    if ours:
        labels = meta.get("labels") or []
        if not labels:
            raise ValueError("edgetl metadata without labels: the standard metadata needs a label file")
        if existing:  # written by an earlier embed: its label file is edgetl's, replaced below
            old = [(n, d) for n, d in old if n != existing.get("labels_file")]
        meta["tflite_metadata"] = "edgetl"
        standard = standard_from_edgetl(meta, structure, labels_name)
        new.append((labels_name, _labels_text(labels)))
    else:
        meta["tflite_metadata"] = "kept"
    new.append((META_NAME, _json_bytes(meta)))
    return _assemble(flat, old, standard, new)
