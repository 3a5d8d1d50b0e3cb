"""A small, bounds-checked reader for the TFLite flatbuffer, in pure Python.

Why: a truncated or corrupt .tflite crashes some interpreters outright (tflite-runtime 2.14 segfaults on
a truncated model), so the runtime checks the file's structure before any interpreter sees it. The
reader walks the schema's Model table (operator codes, subgraphs, tensors, operators, buffers) and
refuses any offset that points outside the file.
"""

from __future__ import annotations

import struct

from .errors import EdgetlError

IDENTIFIER = b"TFL3"

# TensorType enum of the TFLite schema (only names are needed here).
TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
    7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64",
    13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4",
}


class Corrupt(Exception):
    """The flatbuffer's structure is inconsistent (an offset or a length points outside the file)."""


class Reader:
    """Bounds-checked reads of flatbuffer scalars, tables, vectors and strings (Corrupt when out of bounds).
    Shared by this module (the Model schema) and ``metadata`` (the ModelMetadata schema)."""

    def __init__(self, data: bytes):
        self.d = memoryview(data)
        self.n = len(data)

    def _need(self, pos: int, size: int):
        if pos < 0 or pos + size > self.n:
            raise Corrupt(f"offset {pos}+{size} beyond end of file ({self.n} bytes)")

    def u8(self, p):
        self._need(p, 1)
        return self.d[p]

    def u16(self, p):
        self._need(p, 2)
        return struct.unpack_from("<H", self.d, p)[0]

    def i32(self, p):
        self._need(p, 4)
        return struct.unpack_from("<i", self.d, p)[0]

    def u32(self, p):
        self._need(p, 4)
        return struct.unpack_from("<I", self.d, p)[0]

    def f32(self, p):
        self._need(p, 4)
        return struct.unpack_from("<f", self.d, p)[0]

    def u64(self, p):
        self._need(p, 8)
        return struct.unpack_from("<Q", self.d, p)[0]

    # --- tables
    def field(self, table: int, index: int) -> int | None:
        vt = table - self.i32(table)
        vt_size = self.u16(vt)
        if vt_size < 4 or vt_size % 2:
            raise Corrupt("bad vtable")
        slot = 4 + 2 * index
        if slot >= vt_size:
            return None
        off = self.u16(vt + slot)
        return table + off if off else None

    def ref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def table(self, table: int, index: int) -> int | None:
        p = self.field(table, index)
        return None if p is None else self.ref(p)

    def vector(self, table: int, index: int, elem: int = 4):
        """(start, length) of a vector field, bounds-checked."""
        p = self.field(table, index)
        if p is None:
            return None, 0
        v = self.ref(p)
        length = self.u32(v)
        self._need(v + 4, length * elem)
        return v + 4, length

    def tables(self, table: int, index: int):
        start, length = self.vector(table, index)
        return [self.ref(start + 4 * i) for i in range(length)] if start is not None else []

    def ints(self, table: int, index: int):
        start, length = self.vector(table, index)
        return list(struct.unpack_from(f"<{length}i", self.d, start)) if start is not None else []

    def floats(self, table: int, index: int):
        start, length = self.vector(table, index)
        return list(struct.unpack_from(f"<{length}f", self.d, start)) if start is not None else []

    def union(self, table: int, index: int):
        """(type, table) of a union field stored at slots ``index`` (type) and ``index + 1`` (value)."""
        kind = self.scalar(table, index, "u8", 0)
        return kind, (self.table(table, index + 1) if kind else None)

    def string(self, table: int, index: int) -> str | None:
        start, length = self.vector(table, index, 1)
        if start is None:
            return None
        return bytes(self.d[start : start + length]).decode("utf-8", "replace")

    def scalar(self, table: int, index: int, kind: str, default=0):
        p = self.field(table, index)
        if p is None:
            return default
        return getattr(self, kind)(p)


# The zero points each integer type can hold.
ZERO_POINT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int4": (-8, 7),
                    "uint16": (0, 65535)}


def _check_quantization(r: Reader, t: int, tensor: dict, index: int):
    """Corrupt when a tensor's QuantizationParameters cannot be right: as many zero points as scales (or
    none), finite non-negative scales, per-channel scales along an existing axis of that length, zero points
    within the type's range. The interpreters read these without such checks: a zero point of -1000 on a
    uint8 input segfaults LiteRT, a scale vector that disagrees with its axis reads past its end (a crash
    that comes and goes with the heap's layout, so a first load in a child process cannot be sure to see it)."""
    q = r.table(t, 4)
    if q is None:
        return
    scales = r.floats(q, 2)
    start, n_zp = r.vector(q, 3, 8)
    if not scales and not n_zp:
        return
    where = f"tensor {index} ('{tensor['name']}')"
    if n_zp not in (0, len(scales)):
        raise Corrupt(f"{where} has {len(scales)} quantization scale(s) but {n_zp} zero point(s)")
    if any(not (x >= 0.0 and x < float("inf")) for x in scales):
        raise Corrupt(f"{where} has a quantization scale that is negative, infinite or not a number")
    if len(scales) > 1:
        axis = r.scalar(q, 6, "i32", 0)
        shape = tensor["shape"]
        if not 0 <= axis < len(shape) or shape[axis] != len(scales):
            raise Corrupt(f"{where} has {len(scales)} per-channel scales along axis {axis} of shape {shape}")
    bounds = ZERO_POINT_RANGE.get(tensor["type"])
    if bounds and n_zp:
        lo, hi = bounds
        for z in struct.unpack_from(f"<{n_zp}q", r.d, start):
            if not lo <= z <= hi:
                raise Corrupt(f"{where} has zero point {z}, outside the {tensor['type']} range {lo}..{hi}")


def parse_model(data: bytes, name: str = "model") -> dict:
    """Check the structure of a TFLite file and return a summary of it.

    Raises EdgetlError (exit 2) when the file is not a TFLite model or is truncated/corrupt.
    """
    if len(data) < 8 or bytes(data[4:8]) != IDENTIFIER:
        raise EdgetlError(
            f"{name}: not a TFLite model (no 'TFL3' flatbuffer identifier)",
            hint="pass a .tflite file written by a TFLite converter",
        )
    r = Reader(data)
    try:
        root = r.ref(0)
        version = r.scalar(root, 0, "u32")
        opcodes = []
        for oc in r.tables(root, 1):
            builtin = r.scalar(oc, 3, "i32", 0)
            deprecated = r.scalar(oc, 0, "u8", 0)
            opcodes.append({"builtin": max(builtin, deprecated), "custom": r.string(oc, 1)})
        buffers, spans = [], []
        for b in r.tables(root, 4):
            start, length = r.vector(b, 0, 1)
            offset = r.scalar(b, 1, "u64", 0)
            size = r.scalar(b, 2, "u64", 0)
            if offset > 1:  # large models keep buffers outside the flatbuffer, at file offsets
                r._need(offset, size)
            buffers.append(length if start is not None else size)
            spans.append((start, length) if start is not None else ((offset, size) if offset > 1 else (0, 0)))
        subgraphs = []
        for sg in r.tables(root, 2):
            tensors = []
            for t in r.tables(sg, 0):
                code = r.scalar(t, 1, "u8", 0)
                if code not in TENSOR_TYPES:
                    raise Corrupt(f"tensor {len(tensors)} has type {code}, which TFLite does not define")
                tensors.append(
                    {
                        "shape": r.ints(t, 0),
                        "shape_signature": r.ints(t, 7),  # -1 marks a dynamic dimension; [] when absent
                        "type": TENSOR_TYPES[code],
                        "buffer": r.scalar(t, 2, "u32", 0),
                        "name": r.string(t, 3),
                    }
                )
                _check_quantization(r, t, tensors[-1], len(tensors) - 1)
            operators = []
            for op in r.tables(sg, 3):
                idx = r.scalar(op, 0, "u32", 0)
                if idx >= len(opcodes):
                    raise Corrupt(f"operator refers to opcode {idx} of {len(opcodes)}")
                ins, outs = r.ints(op, 1), r.ints(op, 2)
                for t in ins + outs:
                    if t >= len(tensors):
                        raise Corrupt(f"operator refers to tensor {t} of {len(tensors)}")
                operators.append({"opcode": idx, "inputs": ins, "outputs": outs})
            for t in tensors:
                if t["buffer"] >= max(len(buffers), 1) and buffers:
                    raise Corrupt(f"tensor refers to buffer {t['buffer']} of {len(buffers)}")
            graph_in, graph_out = r.ints(sg, 1), r.ints(sg, 2)
            for t in graph_in + graph_out:
                if not 0 <= t < len(tensors):
                    raise Corrupt(f"the graph's input or output is tensor {t} of {len(tensors)}")
            subgraphs.append(
                {
                    "tensors": tensors,
                    "inputs": graph_in,
                    "outputs": graph_out,
                    "operators": operators,
                    "name": r.string(sg, 4),
                }
            )
        description = r.string(root, 3)
        metadata = []  # Model.metadata: named entries that point at a buffer (e.g. "TFLITE_METADATA")
        for m in r.tables(root, 6):
            metadata.append({"name": r.string(m, 0), "buffer": r.scalar(m, 1, "u32", 0)})
    except (Corrupt, struct.error) as e:
        raise EdgetlError(
            f"{name}: truncated or corrupt TFLite model ({e})",
            hint="copy or export the model again; the file is incomplete",
        ) from None
    if not subgraphs:
        raise EdgetlError(f"{name}: TFLite model has no subgraph", hint="export the model again")
    return {
        "version": version,
        "description": description,
        "opcodes": opcodes,
        "subgraphs": subgraphs,
        "num_buffers": len(buffers),
        "buffer_spans": spans,  # (start, length) in the file of each buffer's bytes
        "metadata_names": [m["name"] for m in metadata],
        "metadata": metadata,
    }


# ------------------------------------------------------------------ what a model may allocate

# Bits per element of each tensor type (int4 packs two per byte; strings and resources count one byte per
# element, their real size is only known at run time). Integers only: a corrupt shape's element count can
# be far beyond what a float holds.
ITEM_BITS = {"float32": 32, "float16": 16, "int32": 32, "uint8": 8, "int64": 64, "string": 8, "bool": 8, "int16": 16,
             "complex64": 64, "int8": 8, "float64": 64, "complex128": 128, "uint64": 64, "resource": 8, "variant": 8,
             "uint32": 32, "uint16": 16, "int4": 4}

# The most a model's tensors may declare, before any interpreter allocates them. Only tensors without
# data in the file count (activations, inputs, outputs, variables): constant tensors point into the file,
# which is already capped (files.MAX_MODEL_BYTES). The interpreter's arena reuses memory between
# activations, so what it allocates is at most this sum. The bound is relative to what image classifiers
# need: MobileNetV2 1.0 at 224 px in float32 declares 28 MB of such tensors (its largest one 5 MB), an
# edgetl model at 96 px under 3 MB; 2 GiB is 70 times the former and still fits the smallest device edgetl
# targets (a 4 GB Raspberry Pi), whereas a corrupt shape ([1, 12, 16580620, 48], 9.6 GB from two mutated
# bytes) is refused. $EDGETL_MAX_TENSOR_BYTES raises (or lowers) it for an unusually large model.
MAX_TENSOR_BYTES = 2 << 30


def max_tensor_bytes() -> int:
    import os

    text = os.environ.get("EDGETL_MAX_TENSOR_BYTES", "").strip()
    try:
        return max(1, int(float(text))) if text else MAX_TENSOR_BYTES
    except (ValueError, OverflowError):
        return MAX_TENSOR_BYTES


def tensor_bytes(tensor: dict) -> int:
    """The bytes a tensor of ``parse_model``'s summary declares (its shape times its element size; a
    negative dimension, which only a corrupt file holds in ``shape``, counts as 1)."""
    shape = tensor["shape"]
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= max(d, 1)
        if n > 1 << 64:  # far past any bound: stop before a corrupt shape's product grows without end
            break
    return (n * ITEM_BITS.get(tensor["type"], 8) + 7) // 8


def _size(n: int) -> str:
    if n >= 10**15:  # only a corrupt shape declares this much
        return f"over 10^{int((int(n).bit_length() - 1) * 0.30103)} bytes"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _shape(shape: list) -> str:
    return str(shape) if len(shape) <= 8 else f"[{', '.join(map(str, shape[:8]))}, ... ({len(shape)} dimensions)]"


def check_memory(structure: dict, name: str = "model", limit: int | None = None) -> int:
    """The bytes the model's data-less tensors declare (see MAX_TENSOR_BYTES); EdgetlError naming the
    largest tensor when they exceed ``limit`` (default: max_tensor_bytes())."""
    limit = max_tensor_bytes() if limit is None else limit
    spans = structure.get("buffer_spans") or []
    total, largest = 0, None
    for gi, sg in enumerate(structure["subgraphs"]):
        for ti, t in enumerate(sg["tensors"]):
            b = t["buffer"]
            if 0 < b < len(spans) and spans[b][1]:
                continue  # constant: its bytes are in the file
            n = tensor_bytes(t)
            total += n
            if largest is None or n > largest[0]:
                largest = (n, gi, ti, t)
    if total <= limit:
        return total
    n, gi, ti, t = largest
    label = str(t.get("name") or "")
    label = label if len(label) <= 60 else label[:57] + "..."
    where = f"tensor {ti}" + (f" of subgraph {gi}" if gi else "") + (f" ('{label}')" if label else "")
    what = (f"{where} declares {_shape(t['shape'])} {t['type']} = {_size(n)}" if n > limit else
            f"its tensors declare {_size(total)} in all (the largest, {where}, {_shape(t['shape'])} {t['type']} = "
            f"{_size(n)})")
    raise EdgetlError(
        f"{name}: {what}; edgetl lets a model allocate at most {_size(limit)} of tensors",
        hint="the file is corrupt (an image classifier needs well under 1 GB); copy or export it again, or "
             "raise the bound with EDGETL_MAX_TENSOR_BYTES if the model really is that large",
    )
