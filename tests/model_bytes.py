"""Where the structural fields of a TFLite flatbuffer live in the file, for crafting hostile models by
patching bytes and for the structural fuzz (tests/test_model_fuzz.py, benchmarks/fuzz_models.py).

Pure Python over edge_runtime.tflite_format.Reader, so it needs neither TensorFlow nor the TFLite schema
package: it runs in every test environment. ``walk(data)`` lists every table's vtable offset, vtable
entries, every offset, vector length, tensor shape, type, buffer index, quantization scale and zero point,
operator opcode index and tensor indices, operator-code builtin code and builtin-options field, as
``Field(kind, pos, size)``; the weight buffers' bytes are never listed (they are data, not structure).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from edge_runtime.tflite_format import Corrupt, Reader


@dataclass(frozen=True)
class Field:
    kind: str
    pos: int
    size: int


@dataclass
class Tensor:
    subgraph: int
    index: int
    table: int
    shape: tuple = (None, 0)  # (start of the int32 elements, count)
    signature: tuple = (None, 0)  # shape_signature, the same way
    type_pos: int | None = None
    buffer_pos: int | None = None
    scale: tuple = (None, 0)  # float32 elements
    zero_point: tuple = (None, 0)  # int64 elements


@dataclass
class Layout:
    fields: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    subgraph_inputs: list = field(default_factory=list)  # per subgraph: (length position, start, count)
    subgraph_outputs: list = field(default_factory=list)
    operators: list = field(default_factory=list)  # per operator: {"opcode_pos", "inputs", "outputs"}

    def of_kind(self, *kinds) -> list:
        return [f for f in self.fields if f.kind in kinds]

    def by_kind(self) -> dict:
        """kind -> its distinct fields (a vtable shared by many tables is one field), computed once."""
        if getattr(self, "_by_kind", None) is None:
            groups: dict = {}
            for f in dict.fromkeys(self.fields):
                groups.setdefault(f.kind, []).append(f)
            self._by_kind = groups
        return self._by_kind


class _Walker:
    def __init__(self, data: bytes):
        self.r = Reader(data)
        self.out = Layout()
        self.seen: set = set()

    def add(self, kind, pos, size):
        self.out.fields.append(Field(kind, pos, size))

    def table(self, t: int):
        """Record the table's vtable offset and its vtable (once per table)."""
        r = self.r
        if t in self.seen:
            return
        self.seen.add(t)
        self.add("soffset", t, 4)
        vt = t - r.i32(t)
        vt_size = r.u16(vt)
        self.add("vtable", vt, 2)
        self.add("vtable", vt + 2, 2)
        for slot in range(4, vt_size, 2):
            self.add("vtable", vt + slot, 2)

    def ref(self, t, index):
        p = self.r.field(t, index)
        if p is None:
            return None
        self.add("uoffset", p, 4)
        return self.r.ref(p)

    def vector(self, t, index, elem=4, kind=None):
        """(start, count) of a vector field; records its offset, its length and (``kind``) its elements."""
        v = self.ref(t, index)
        if v is None:
            return None, 0, None
        n = self.r.u32(v)
        self.add("vector_len", v, 4)
        if v + 4 + n * elem > self.r.n:
            raise Corrupt("vector beyond the end")
        if kind:
            for i in range(n):
                self.add(kind, v + 4 + i * elem, elem)
        return v + 4, n, v

    def tables(self, t, index):
        start, n, _ = self.vector(t, index, 4)
        out = []
        for i in range(n or 0):
            p = start + 4 * i
            self.add("uoffset", p, 4)
            sub = self.r.ref(p)
            self.table(sub)
            out.append(sub)
        return out

    def scalar(self, t, index, kind, size):
        p = self.r.field(t, index)
        if p is not None:
            self.add(kind, p, size)
        return p

    def options(self, t):
        """Every field of a builtin-options table, as one-, two- or four-byte scalars (strides, padding,
        axes, activation): their widths are not known here, so each slot's first byte and word are listed."""
        self.table(t)
        r = self.r
        vt = t - r.i32(t)
        for slot in range(4, r.u16(vt), 2):
            off = r.u16(vt + slot)
            if off:
                self.add("option", t + off, 1)
                if t + off + 4 <= r.n:
                    self.add("option", t + off, 4)


def walk(data: bytes) -> Layout:
    """The structural fields of the flatbuffer ``data`` (see the module docstring)."""
    w = _Walker(data)
    r = w.r
    w.add("uoffset", 0, 4)
    root = r.ref(0)
    w.table(root)
    for oc in w.tables(root, 1):
        w.scalar(oc, 0, "opcode", 1)
        w.scalar(oc, 3, "opcode", 4)
        w.scalar(oc, 2, "opcode_version", 4)
    buffers = w.tables(root, 4)
    for b in buffers:
        w.vector(b, 0, 1)  # the offset and the length, never the bytes
        w.scalar(b, 1, "buffer_offset", 8)
        w.scalar(b, 2, "buffer_offset", 8)
    for gi, sg in enumerate(w.tables(root, 2)):
        for ti, t in enumerate(w.tables(sg, 0)):
            ten = Tensor(gi, ti, t)
            s, n, _ = w.vector(t, 0, 4, "shape")
            ten.shape = (s, n)
            s, n, _ = w.vector(t, 7, 4, "shape")  # shape_signature
            ten.signature = (s, n)
            ten.type_pos = w.scalar(t, 1, "type", 1)
            ten.buffer_pos = w.scalar(t, 2, "buffer_index", 4)
            w.scalar(t, 5, "flag", 1)
            q = w.ref(t, 4)
            if q is not None:
                w.table(q)
                w.vector(q, 0, 4, "quant_minmax")
                w.vector(q, 1, 4, "quant_minmax")
                s, n, _ = w.vector(q, 2, 4, "quant_scale")
                ten.scale = (s, n)
                s, n, _ = w.vector(q, 3, 8, "quant_zero_point")
                ten.zero_point = (s, n)
                w.scalar(q, 6, "quant_dimension", 4)
            w.out.tensors.append(ten)
        for key, slot in (("subgraph_inputs", 1), ("subgraph_outputs", 2)):
            s, n, v = w.vector(sg, slot, 4, "tensor_index")
            getattr(w.out, key).append((v, s, n))
        for op in w.tables(sg, 3):
            opcode_pos = w.scalar(op, 0, "opcode_index", 4)
            ins = w.vector(op, 1, 4, "tensor_index")[:2]
            outs = w.vector(op, 2, 4, "tensor_index")[:2]
            w.scalar(op, 3, "options_type", 1)
            opt = w.ref(op, 4)
            if opt is not None:
                w.options(opt)
            w.out.operators.append({"opcode_pos": opcode_pos, "inputs": ins, "outputs": outs})
    for m in w.tables(root, 6):
        w.scalar(m, 1, "buffer_index", 4)
    return w.out


def put(data: bytearray, fmt: str, pos: int, value):
    struct.pack_into("<" + fmt, data, pos, value)


# ------------------------------------------------------------------ structural mutations (the fuzz)

_INT32 = (0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 1000, 65535, 65536, 1 << 20, 16580620, 0x7FFFFFFF, -1, -2, -4, -1000,
          -0x80000000)
_FLOATS = (0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"))


def _int_value(rng, old: int, bits: int) -> int:
    """A hostile replacement for an integer field: a boundary value, a small step from the old one, a
    flipped bit, or random bits."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    roll = rng.random()
    if roll < 0.35:
        v = rng.choice(_INT32)
    elif roll < 0.6:
        v = old + rng.choice((-8, -4, -2, -1, 1, 2, 4, 8))
    elif roll < 0.85:
        v = old ^ (1 << rng.randrange(bits))
    else:
        v = rng.randrange(lo, hi + 1)
    v &= (1 << bits) - 1  # wrap into the field's width
    return v - (1 << bits) if v > hi else v


def mutate(flat: bytes, layout: Layout, rng, count: int | None = None) -> tuple:
    """(mutated flatbuffer, [description]) with ``count`` (default 1-3) structural fields changed: a field
    kind is drawn uniformly (vtables, offsets, vector lengths, shapes, types, buffer and tensor indices,
    quantization scales and zero points, opcodes, options), then one field of it."""
    by_kind = layout.by_kind()
    kinds = sorted(by_kind)
    b = bytearray(flat)
    done = []
    for _ in range(count or rng.choice((1, 1, 1, 2, 2, 3))):
        kind = rng.choice(kinds)
        f = rng.choice(by_kind[kind])
        if f.pos + f.size > len(b):
            continue
        if kind == "quant_scale" and rng.random() < 0.7:
            v = rng.choice(_FLOATS)
            struct.pack_into("<f", b, f.pos, v)
        elif f.size == 1:
            v = rng.randrange(256) if rng.random() < 0.5 else b[f.pos] ^ (1 << rng.randrange(8))
            b[f.pos] = v
        else:
            fmt = {2: "<H", 4: "<i", 8: "<q"}[f.size]
            old = struct.unpack_from(fmt, b, f.pos)[0]
            v = _int_value(rng, old, 8 * f.size)
            if f.size == 2:
                v &= 0xFFFF
            struct.pack_into(fmt, b, f.pos, v)
        done.append(f"{kind}@{f.pos}={v}")
    return bytes(b), done


def fuzz_worker(model_path, count: int, seed: int, workdir, progress=None) -> dict:
    """Load ``count`` structural mutants of ``model_path`` (its flatbuffer mutated, its metadata archive kept)
    the way `edgetl info` and `edgetl predict` do, in this process: ``model.load`` + ``inspect_model.describe``,
    then ``Classifier`` + one ``classify``. Untrusted loads go through the crash-safety probe (one child kept
    for the whole run, restarted after each crash). Returns the counts of each outcome, the mutants that
    raised anything but EdgetlError (a traceback in the CLI), and the peak memory of this process and of the
    largest probe child. ``progress``: a file that holds the index of the mutant being loaded, so a parent
    can name it if this process dies."""
    import random
    import resource
    import time
    from pathlib import Path

    from edge_runtime import inspect_model, metadata, probe
    from edge_runtime import model as model_mod
    from edge_runtime.backends import resolve
    from edge_runtime.classifier import Classifier
    from edge_runtime.errors import EdgetlError
    from edge_runtime.timing import test_frame

    data = Path(model_path).read_bytes()
    flat, _ = metadata.split(data)
    tail = bytes(data[len(flat):])
    layout = walk(flat)
    rng = random.Random(seed)
    frame = test_frame(160, 120)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "mutant.tflite"
    counts: dict = {}
    crashes: dict = {}
    tracebacks = []
    t0 = time.perf_counter()
    be = resolve()

    def bump(key):
        counts[key] = counts.get(key, 0) + 1

    with probe.session(be.name) as prober:
        for k in range(count):
            blob, desc = mutate(flat, layout, rng)
            target.write_bytes(blob + tail)
            if progress is not None:
                Path(progress).write_text(f"{k} {' '.join(desc)}\n")
            stage = "info"
            try:
                m = model_mod.load(target, num_threads=1)
                inspect_model.describe(m)
                m.output_ends_in()
                del m  # `info` and `predict` are separate processes: one interpreter at a time
                stage = "predict"
                clf = Classifier(target, num_threads=1, warn=False)
                clf.classify(frame, bgr=True)
                bump("classified")
            except EdgetlError as e:
                msg = e.message
                key = ("crashed in the probe" if "crashed" in msg else "refused: memory" if "allocate at most" in msg
                       or "out of memory" in msg else "timeout" if "did not finish" in msg
                       else f"refused at {stage}")
                bump(key)
                if "crashed" in msg:
                    sig = msg.rsplit("(", 1)[-1].rstrip(")")
                    crashes[sig] = crashes.get(sig, 0) + 1
            except Exception as e:  # noqa: BLE001 - what the CLI would show as a traceback
                bump("traceback")
                if len(tracebacks) < 20:
                    tracebacks.append({"mutant": k, "stage": stage, "mutation": desc, "error": f"{type(e).__name__}: {e}"[:300]})
        children = prober.started
    peak_child = prober.peak_child_rss_mb  # the children's own VmHWM (a crashed child reports nothing)
    return {"mutants": count, "seed": seed, "model": str(model_path), "counts": counts, "crashes": crashes,
            "tracebacks": tracebacks, "probe_children": children, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(probe.peak_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_child_rss_mb": round(peak_child, 1)}


# ------------------------------------------------------------------ crafted models (by patching bytes)


def split_model(data: bytes) -> tuple:
    """(flatbuffer, what follows it: edgetl's metadata archive)."""
    from edge_runtime import metadata

    flat, _ = metadata.split(data)
    return bytes(flat), bytes(data[len(flat):])


def with_input_zero_point(data: bytes, value: int) -> bytes:
    """The model with its (quantized) input's zero point set to ``value``."""
    flat, tail = split_model(data)
    lay = walk(flat)
    _, start, n = lay.subgraph_inputs[0]
    (idx,) = struct.unpack_from("<i", flat, start)
    t = next(t for t in lay.tensors if t.subgraph == 0 and t.index == idx)
    zp, count = t.zero_point
    assert zp is not None and count >= 1, "the input is not quantized"
    b = bytearray(flat)
    struct.pack_into("<q", b, zp, value)
    return bytes(b) + tail


def tensor_vtable(flat: bytes) -> int:
    """The position of the vtable most tensors share (flatbuffers writes one vtable per table layout)."""
    from collections import Counter

    r = Reader(flat)
    lay = walk(flat)
    return Counter(t.table - r.i32(t.table) for t in lay.tensors).most_common(1)[0][0]


def with_tensor_vtable_slot(data: bytes, slot: int, offset: int) -> bytes:
    """The model with field ``slot`` of the vtable most tensors share pointing at ``offset`` (0: absent).
    Tensor fields: 0 shape, 1 type, 2 buffer, 3 name, 4 quantization, 7 shape_signature."""
    flat, tail = split_model(data)
    vt = tensor_vtable(flat)
    b = bytearray(flat)
    struct.pack_into("<H", b, vt + 4 + 2 * slot, offset)
    return bytes(b) + tail


def with_subgraph_outputs(data: bytes, count: int) -> bytes:
    """The model with the length of subgraph 0's output list set to ``count`` (0: no outputs)."""
    flat, tail = split_model(data)
    v, _, _ = walk(flat).subgraph_outputs[0]
    b = bytearray(flat)
    struct.pack_into("<I", b, v, count)
    return bytes(b) + tail


def with_input_shape(data: bytes, shape, signature=None) -> bytes:
    """The model with its input tensor's shape (and, given, its shape_signature) replaced (same rank)."""
    flat, tail = split_model(data)
    lay = walk(flat)
    _, start, _ = lay.subgraph_inputs[0]
    (idx,) = struct.unpack_from("<i", flat, start)
    t = next(t for t in lay.tensors if t.subgraph == 0 and t.index == idx)
    b = bytearray(flat)
    for vec, values in ((t.shape, shape), (t.signature, signature)):
        s, n = vec
        if values is None or s is None:
            continue
        assert n == len(values)
        for i, d in enumerate(values):
            struct.pack_into("<i", b, s + 4 * i, d)
    return bytes(b) + tail


def with_tensor_shape(data: bytes, shape, largest: bool = True) -> bytes:
    """The model with the shape of its largest activation (a tensor without data) set to ``shape`` (same rank)."""
    from edge_runtime import tflite_format

    flat, tail = split_model(data)
    st = tflite_format.parse_model(flat)
    spans = st["buffer_spans"]
    lay = walk(flat)
    best = None
    for t in lay.tensors:
        info = st["subgraphs"][t.subgraph]["tensors"][t.index]
        b = info["buffer"]
        if (0 < b < len(spans) and spans[b][1]) or len(info["shape"]) != len(shape):
            continue
        n = tflite_format.tensor_bytes(info)
        if best is None or n > best[0]:
            best = (n, t)
    t = best[1]
    s, _ = t.shape
    b = bytearray(flat)
    for i, d in enumerate(shape):
        struct.pack_into("<i", b, s + 4 * i, d)
    return bytes(b) + tail


def with_buffer_index(data: bytes, tensor_pick, value: int) -> bytes:
    """The model with the buffer index of the tensor chosen by ``tensor_pick(info) -> bool`` (the first
    one, in subgraph 0) set to ``value``."""
    from edge_runtime import tflite_format

    flat, tail = split_model(data)
    st = tflite_format.parse_model(flat)
    for t in walk(flat).tensors:
        info = st["subgraphs"][t.subgraph]["tensors"][t.index]
        if t.subgraph == 0 and t.buffer_pos is not None and tensor_pick(info):
            b = bytearray(flat)
            struct.pack_into("<I", b, t.buffer_pos, value)
            return bytes(b) + tail
    raise LookupError("no such tensor")
