"""Seeded fuzzing of the metadata reader (issue 8, item 7): mutated archives, mutated ModelMetadata
flatbuffers and arbitrary JSON. Every case must end in the documented result: ``read_all`` returns (what
it cannot use is left out, with a reason), ``parse_model_metadata`` returns a dict or raises
``MetadataError``, ``validate_edgetl`` returns the dict or raises ``MetadataError``. Nothing else, no hang.
Deterministic (derandomized), a few thousand cases, bounded time."""

from __future__ import annotations

import json
import struct
import time

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (pip install '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_runtime import metadata, tflite_format  # noqa: E402

FUZZ = settings(max_examples=1200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(test_models):
    data = (test_models / "edgetl_uint8.tflite").read_bytes()
    structure = tflite_format.parse_model(data)
    archive_start = len(metadata.split(data)[0])
    entry = next(m for m in structure["metadata"] if m["name"] == "TFLITE_METADATA")
    start, length = structure["buffer_spans"][entry["buffer"]]
    return {"data": data, "structure": structure, "archive": archive_start, "mm": (start, length)}


def _mutate(buf: bytes, edits, cut) -> bytes:
    b = bytearray(buf)
    for pos, value in edits:
        if b:
            b[pos % len(b)] = value
    if cut is not None and b:
        b = b[: cut % (len(b) + 1)]
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=12)
U32 = st.sampled_from([0, 1, 4, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])


def _check_found(found):
    assert isinstance(found, metadata.Found)
    assert all(isinstance(p, str) and p for p in found.problems)
    if found.edgetl is not None:
        metadata.validate_edgetl(found.edgetl)
    if found.standard is not None and found.standard.get("labels") is not None:
        assert all(isinstance(x, str) for x in found.standard["labels"])


@FUZZ
@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 1 << 20)), words=st.lists(
    st.tuples(st.integers(0, 1 << 20), U32), max_size=3))
def test_fuzz_archive(model, edits, cut, words):
    """Bytes of the ZIP archive at the end (headers, sizes, offsets, names, data) changed at random."""
    data, a = model["data"], model["archive"]
    tail = bytearray(_mutate(data[a:], edits, None))
    for pos, value in words:  # whole 32-bit fields: sizes, offsets, counts
        p = pos % max(1, len(tail) - 4)
        struct.pack_into("<I", tail, p, value)
    mutated = data[:a] + _mutate(bytes(tail), [], cut)
    t = time.perf_counter()
    _check_found(metadata.read_all(mutated, model["structure"]))
    assert time.perf_counter() - t < 2.0


@FUZZ
@given(edits=EDITS, words=st.lists(st.tuples(st.integers(0, 1 << 20), U32), max_size=3))
def test_fuzz_model_metadata(model, edits, words):
    """The ModelMetadata flatbuffer corrupted in place (same length, so the model itself stays valid)."""
    start, length = model["mm"]
    mm = bytearray(_mutate(model["data"][start : start + length], edits, None))
    for pos, value in words:
        struct.pack_into("<I", mm, pos % (length - 4), value)
    try:
        parsed = metadata.parse_model_metadata(bytes(mm))
        assert isinstance(parsed, dict)
    except metadata.MetadataError:
        pass
    data = model["data"][:start] + bytes(mm) + model["data"][start + length :]
    _check_found(metadata.read_all(data, model["structure"]))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["labels", "input", "output", "format_version", "format", "mode", "dataset", "parity",
                        "value_range", "size", "resize", "probabilities", "quantization", "color", "tflite_metadata"])


@settings(FUZZ, max_examples=600)
@given(changes=st.dictionaries(KEYS, JSON, max_size=4), nested=st.dictionaries(KEYS, JSON, max_size=3))
def test_fuzz_edgetl_json(model, changes, nested):
    """Arbitrary JSON values in edgetl's fields (top level and inside input/output), through the archive."""
    meta = metadata.read(model["data"])
    meta.update(changes)
    for part in ("input", "output"):
        if isinstance(meta.get(part), dict):
            meta[part] = {**meta[part], **nested}
    try:
        assert metadata.validate_edgetl(json.loads(json.dumps(meta))) is not None
    except metadata.MetadataError:
        pass
    data = metadata.split(model["data"])[0]
    arch = metadata._dos_zip([("labels.txt", b"blue\ngreen\nred\n"),
                              ("edgetl/metadata.json", json.dumps(meta).encode())], len(data))
    _check_found(metadata.read_all(data + arch, model["structure"]))
