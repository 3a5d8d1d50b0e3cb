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


class _Corrupt(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.d = memoryview(data)
        self.n = len(data)

    def _need(self, pos: int, size: int):
        if pos < 0 or pos + size > self.n:
            raise _Corrupt(f"offset {pos}+{size} beyond end of file ({self.n} bytes)")

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
            raise _Corrupt("bad vtable")
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


def parse_model(data: bytes, name: str = "model") -> dict:
    """Check the structure of a TFLite file and return a summary of it.

    Raises EdgetlError (exit 2) when the file is not a TFLite model or is truncated/corrupt.
    """
    if len(data) < 8 or bytes(data[4:8]) != IDENTIFIER:
        raise EdgetlError(
            f"{name}: not a TFLite model (no 'TFL3' flatbuffer identifier)",
            hint="pass a .tflite file written by a TFLite converter",
        )
    r = _Reader(data)
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
                tensors.append(
                    {
                        "shape": r.ints(t, 0),
                        "type": TENSOR_TYPES.get(r.scalar(t, 1, "u8", 0), "unknown"),
                        "buffer": r.scalar(t, 2, "u32", 0),
                        "name": r.string(t, 3),
                    }
                )
            operators = []
            for op in r.tables(sg, 3):
                idx = r.scalar(op, 0, "u32", 0)
                if idx >= len(opcodes):
                    raise _Corrupt(f"operator refers to opcode {idx} of {len(opcodes)}")
                ins, outs = r.ints(op, 1), r.ints(op, 2)
                for t in ins + outs:
                    if t >= len(tensors):
                        raise _Corrupt(f"operator refers to tensor {t} of {len(tensors)}")
                operators.append({"opcode": idx, "inputs": ins, "outputs": outs})
            for t in tensors:
                if t["buffer"] >= max(len(buffers), 1) and buffers:
                    raise _Corrupt(f"tensor refers to buffer {t['buffer']} of {len(buffers)}")
            subgraphs.append(
                {
                    "tensors": tensors,
                    "inputs": r.ints(sg, 1),
                    "outputs": r.ints(sg, 2),
                    "operators": operators,
                    "name": r.string(sg, 4),
                }
            )
        description = r.string(root, 3)
        metadata = []  # Model.metadata: named entries that point at a buffer (e.g. "TFLITE_METADATA")
        for m in r.tables(root, 6):
            metadata.append({"name": r.string(m, 0), "buffer": r.scalar(m, 1, "u32", 0)})
    except (_Corrupt, struct.error) as e:
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
