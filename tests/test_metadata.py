"""Both metadata forms in the files edgetl writes (standard TFLITE_METADATA + edgetl/metadata.json in one
stored archive), the runtime reading any standard-metadata model, and crafted metadata that must never
crash or bloat the runtime (issue 8, item 7). Real files, real interpreters, real processes."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from conftest import REF_PTQ, colour_image, run_cli
from make_test_models import EDGETL_MODELS, GRAY_LABELS, LABELS

from edge_runtime import Classifier, __version__, metadata, tflite_format
from edge_runtime.preprocess import decode_image, fit_like_mediapipe
from edge_runtime.errors import EdgetlError

HAVE_WRITER = importlib.util.find_spec("flatbuffers") is not None and (
    importlib.util.find_spec("ai_edge_litert") is not None or importlib.util.find_spec("tensorflow") is not None)
requires_writer = pytest.mark.skipif(not HAVE_WRITER, reason="writing metadata needs flatbuffers and the TFLite "
                                                              "schema (ai-edge-litert or TensorFlow)")
MODES = list(EDGETL_MODELS)


def _photo(kind="red", seed=0, size=(90, 120)):
    return colour_image(kind, np.random.default_rng(seed), size)


def _flat(path) -> bytes:
    return metadata.split(path.read_bytes())[0]


def _zip_entry(name, payload, method=0, flags=0, crc=None, file_size=None, compressed=None):
    """One member for _raw_zip: ``payload`` is the uncompressed content unless ``compressed`` is given."""
    data = payload if compressed is None else compressed
    return {"name": name.encode(), "data": data, "method": method, "flags": flags,
            "crc": zlib.crc32(payload) & 0xFFFFFFFF if crc is None else crc,
            "file_size": len(payload) if file_size is None else file_size}


def _raw_zip(entries, base: int) -> bytes:
    """A ZIP archive written byte by byte, so headers can say anything (encrypted, unknown method, lies)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        off = base + len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, e["flags"], e["method"], 0, 0x21, e["crc"],
                           len(e["data"]), e["file_size"], len(e["name"]), 0) + e["name"] + e["data"]
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, e["flags"], e["method"], 0, 0x21,
                               e["crc"], len(e["data"]), e["file_size"], len(e["name"]), 0, 0, 0, 0, 0, off) + e["name"]
    cd = base + len(out)
    out += central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), cd, 0)
    return bytes(out)


def _with_archive(flat: bytes, entries) -> bytes:
    return flat + _raw_zip(entries, len(flat))


def _labels_entry(labels=LABELS):
    return _zip_entry("labels.txt", ("\n".join(labels) + "\n").encode())


def _meta_of(test_models, name="edgetl_uint8") -> dict:
    return metadata.read((test_models / f"{name}.tflite").read_bytes())


# ------------------------------------------------------------------ what edgetl writes, every mode


@pytest.mark.parametrize("name", MODES)
def test_every_mode_carries_both_forms(test_models, name):
    data = (test_models / f"{name}.tflite").read_bytes()
    mode, io_ = EDGETL_MODELS[name]
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # ONE archive at the end, every entry stored
        infos = z.infolist()
        assert [i.filename for i in infos] == ["labels.txt", "edgetl/metadata.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert z.read("labels.txt").decode().splitlines() == LABELS
    if shutil.which("unzip"):
        listing = subprocess.run(["unzip", "-lv", str(test_models / f"{name}.tflite")], capture_output=True,
                                 text=True, timeout=60).stdout
        assert "labels.txt" in listing and "edgetl/metadata.json" in listing and "Defl" not in listing
    found = metadata.read_all(data)
    assert not found.problems
    meta, std = found.edgetl, found.standard
    assert meta["format_version"] == metadata.FORMAT_VERSION and meta["mode"] == mode and meta["io"] == io_
    assert meta["tflite_metadata"] == "edgetl" and meta["labels"] == LABELS
    assert std["author"] == "edgetl" and std["version"] == __version__ and std["min_parser_version"] == "1.0.0"
    assert mode in std["name"] and std["description"]
    # these models see their whole input (--central-fraction 1): neither metadata claims a crop
    assert "central_crop" not in meta["input"] and "central" not in std["description"]
    si, so = std["input"], std["output"]
    assert si["content"] == "ImageProperties" and si["color_space"] == "RGB"
    assert si["normalization"] == {"mean": [0.0], "std": [1.0]}  # raw 0..255 pixels: scaling is in the graph
    in_type = "uint8" if io_ == "uint8" else "int8" if io_ == "int8" else "float32"
    assert si["stats"] == {"uint8": {"min": [0.0], "max": [255.0]}, "int8": {"min": [-128.0], "max": [127.0]},
                           "float32": {"min": [0.0], "max": [255.0]}}[in_type]
    assert so["content"] == "FeatureProperties" and so["stats"]["min"] == ([0.0] if in_type != "int8" else [-128.0])
    assert std["labels"] == LABELS and std["labels_file"] == "labels.txt"
    assert [(f["name"], f["type"], f["tensor"]) for f in std["associated_files"]] == [
        ("labels.txt", "TENSOR_AXIS_LABELS", "output")]
    # the interpreter installed here (ai-edge-litert, or tflite-runtime 2.14 in .venv-test-tflite) runs the file
    clf = Classifier(test_models / f"{name}.tflite", num_threads=1)
    assert clf.labels == LABELS and not clf.notes and clf.resize == "crop"
    p = clf.probabilities(_photo())
    assert p.shape == (3,) and abs(float(p.sum()) - 1) < 0.02


def test_min_parser_version_follows_the_schema_members_used():
    base = {"subgraphs": [{"inputs": [{"process_units": [{"type": "NormalizationOptions"}]}],
                           "outputs": [{"associated_files": [{"type": "TENSOR_AXIS_LABELS"}]}]}]}
    assert metadata.min_parser_version(base) == "1.0.0"
    assert metadata.min_parser_version({"associated_files": [{"type": "VOCABULARY"}]}) == "1.0.1"
    assert metadata.min_parser_version({"subgraphs": [{"input_process_units": True}]}) == "1.1.0"
    assert metadata.min_parser_version(
        {"subgraphs": [{"inputs": [{"process_units": [{"type": "RegexTokenizerOptions"}]}]}]}) == "1.2.1"
    assert metadata.min_parser_version({"subgraphs": [{"outputs": [{"content": "AudioProperties"}]}]}) == "1.3.0"
    assert metadata.min_parser_version({"associated_files": [{"type": "TENSOR_AXIS_LABELS", "version": "2"}]}) == "1.4.1"


@requires_writer
def test_model_metadata_roundtrip_and_coral_reference(shared):
    """Our writer reproduces what tflite-support's writer put in the Coral model, field for field."""
    data = REF_PTQ.read_bytes()
    raw = metadata._standard_bytes(data, tflite_format.parse_model(data))
    md = metadata.parse_model_metadata(raw)
    again = metadata.build_model_metadata(md)
    assert again[4:8] == b"M001" and metadata.parse_model_metadata(again) == md


@requires_writer
def test_embed_is_idempotent_and_keeps_foreign_entries(test_models, tmp_path):
    meta = _meta_of(test_models)
    bare = (test_models / "bare_uint8.tflite").read_bytes()
    once = metadata.embed(bare, meta)
    assert metadata.embed(once, meta) == once  # embedding twice: the same file
    assert once == (test_models / "edgetl_uint8.tflite").read_bytes()  # and what make_test_models wrote
    # an entry that is not edgetl's survives, and so do the standard labels
    flat = metadata.split(once)[0]
    with_readme = _with_archive(flat, [_labels_entry(), _zip_entry("readme.txt", b"hello\n"),
                                       _zip_entry("edgetl/metadata.json", json.dumps(meta).encode())])
    out = metadata.embed(with_readme, dict(meta, labels=["x", "y", "z"]))
    z = zipfile.ZipFile(io.BytesIO(out))
    assert [i.filename for i in z.infolist()] == ["readme.txt", "labels.txt", "edgetl/metadata.json"]
    assert z.read("readme.txt") == b"hello\n" and all(i.compress_type == 0 for i in z.infolist())
    f = metadata.read_all(out)
    assert f.standard["labels"] == ["x", "y", "z"] == f.edgetl["labels"] and not f.problems
    (tmp_path / "m.tflite").write_bytes(out)
    assert Classifier(tmp_path / "m.tflite", num_threads=1).labels == ["x", "y", "z"]


@requires_writer
def test_embed_on_a_model_with_foreign_standard_metadata_keeps_it(shared, test_models, tmp_path):
    """A Coral model keeps its own TFLITE_METADATA and imagenet_labels.txt; edgetl's JSON is added. An old
    edgetl (format 1) appended a second, deflated archive after the Coral one: that is repaired too."""
    coral = REF_PTQ.read_bytes()
    meta = dict(_meta_of(test_models), labels=[f"c{i}" for i in range(1001)])
    out = metadata.embed(coral, meta)
    assert metadata.embed(out, meta) == out
    f = metadata.read_all(out)
    assert f.files == ["imagenet_labels.txt", "edgetl/metadata.json"] and f.edgetl["tflite_metadata"] == "kept"
    assert f.standard["labels"][653] == "military uniform" and f.standard["name"] == "ImageClassifier"
    old = io.BytesIO()
    v1 = dict(meta, format_version=1, tflite_metadata="edgetl")  # even a (false) claim cannot replace theirs
    with zipfile.ZipFile(old, "w", zipfile.ZIP_DEFLATED) as z:  # what edgetl's format 1 appended
        z.writestr("edgetl/metadata.json", json.dumps(v1))
        z.writestr("edgetl/labels.txt", "\n".join(meta["labels"]))
    doubled = coral + old.getvalue()
    assert metadata.read_all(doubled).standard["labels"] is None  # last archive only, as MediaPipe reads it
    fixed = metadata.embed(doubled, meta)
    assert metadata.read_all(fixed).files == ["imagenet_labels.txt", "edgetl/metadata.json"]
    (tmp_path / "c.tflite").write_bytes(fixed)
    clf = Classifier(tmp_path / "c.tflite", num_threads=1)
    assert clf.labels[653] == "c653" and clf.sources["labels"] == "edgetl metadata"  # edgetl > standard


def test_format_1_files_are_still_read(test_models, tmp_path):
    meta = dict(_meta_of(test_models), format_version=1)
    meta.pop("tflite_metadata")
    old = io.BytesIO()
    with zipfile.ZipFile(old, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("edgetl/metadata.json", json.dumps(meta))
        z.writestr("edgetl/labels.txt", "\n".join(LABELS))
    (tmp_path / "v1.tflite").write_bytes((test_models / "bare_uint8.tflite").read_bytes() + old.getvalue())
    clf = Classifier(tmp_path / "v1.tflite", num_threads=1)
    assert clf.labels == LABELS and clf.meta["format_version"] == 1 and not clf.notes and clf.resize == "crop"


# ------------------------------------------------------------------ reading any standard-metadata model


def test_standard_metadata_alone_feeds_the_model_like_edgetl_metadata(test_models, tmp_path):
    """Without edgetl/metadata.json the standard form alone gives labels and the pixel mapping (mean 0,
    std 1 for edgetl models): same probabilities (the resize policy is the one thing it cannot carry)."""
    img = _photo("green", 3)
    for name in ("edgetl_uint8", "edgetl_float32", "edgetl_float16"):
        data = (test_models / f"{name}.tflite").read_bytes()
        only_std = _with_archive(metadata.split(data)[0], [_labels_entry()])
        (tmp_path / f"{name}.tflite").write_bytes(only_std)
        std = Classifier(tmp_path / f"{name}.tflite", num_threads=1, resize="crop")
        full = Classifier(test_models / f"{name}.tflite", num_threads=1)
        assert std.meta == {} and std.labels == LABELS and std.sources["labels"] == "TFLite metadata (labels.txt)"
        assert not std.notes
        np.testing.assert_array_equal(std.probabilities(img), full.probabilities(img))
        assert Classifier(tmp_path / f"{name}.tflite", num_threads=1).resize == "mediapipe"  # foreign default


def test_grayscale_input_and_normalization(test_models):
    clf = Classifier(test_models / "std_gray.tflite", num_threads=1)
    assert clf.labels == GRAY_LABELS and clf.color == "GRAYSCALE" and clf.channels == 1 and not clf.notes
    assert clf.normalization == ([127.5], [127.5])
    img = _photo("blue", 1, (40, 50))
    assert clf.sampling == "mediapipe"  # a foreign model: the whole frame, sampled as MediaPipe does
    px = fit_like_mediapipe(img, (32, 32))
    gray = (0.299 * px[..., 0] + 0.587 * px[..., 1] + 0.114 * px[..., 2])
    t = clf.from_pixels(px)
    assert t.shape == (32, 32, 1) and t.dtype == np.float32
    np.testing.assert_allclose(t[..., 0], (gray - 127.5) / 127.5, atol=1.5 / 127.5)  # (pixel - mean) / std
    np.testing.assert_array_equal(clf.probabilities(img), clf.run_tensor(t))


@pytest.mark.parametrize("mp_model", ["flowers10_float32", "flowers10_int8", "float_metadata"])
def test_shared_models_match_mediapipe_reference(shared, mp_model):
    """MediaPipe's own top-5 (raw photos, its squash) against edge_runtime with its fit: same top-1,
    and the LOGISTIC-ending Model Maker models keep MediaPipe's scale (no second softmax)."""
    ref = json.loads((shared / "models" / "mediapipe_reference.json").read_text())["results"]
    rel = {"float_metadata": "mobilenet_v2_1.0_224_float_metadata.tflite"}.get(
        mp_model, f"mediapipe_model_maker/{mp_model}.tflite")
    clf = Classifier(shared / "models" / rel, num_threads=2)
    assert not clf.notes and clf.resize == "mediapipe"
    for photo, top in ref[rel].items():
        got = clf.classify_path(shared / "images" / photo, top_k=5)
        assert got[0].label == top[0]["label"] and got[0].index == top[0]["index"], photo
        if "flowers10" in mp_model:
            assert clf.sources["scores"] == "the graph ends in LOGISTIC"
            assert abs(got[0].score - top[0]["score"]) < 0.05, (photo, got[0].score, top[0]["score"])


def test_predict_coral_model_with_no_flags_and_no_warning(shared):
    r = run_cli("predict", REF_PTQ, shared / "images" / "grace_hopper.bmp", "--threads", "1")
    assert r.returncode == 0 and "military uniform" in r.stdout
    assert "warning" not in r.stderr.lower() and "Traceback" not in r.stderr
    r = run_cli("predict", shared / "models" / "mobilenet_v2_1.0_224_float_metadata.tflite",
                shared / "images" / "grace_hopper.bmp", "--threads", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["label"] == "military uniform" and "warning" not in r.stderr


def test_info_shows_both_forms(test_models, shared):
    r = run_cli("info", test_models / "edgetl_float32io.tflite")
    out = r.stdout
    assert r.returncode == 0 and "archive    labels.txt, edgetl/metadata.json" in out
    assert "tflite metadata (TFLITE_METADATA, parser >= 1.0.0)" in out and "author edgetl" in out
    assert "colour space RGB, normalization mean [0] std [1]" in out
    assert "labels   3: blue | green | red (from labels.txt)" in out and "TENSOR_AXIS_LABELS" in out
    assert "metadata   edgetl" in out and "labels   3: blue | green | red" in out and "resize crop" in out
    r = run_cli("info", shared / "models" / "mediapipe_model_maker" / "flowers10_int8.tflite")
    assert "normalization mean [127.5] std [128]" in r.stdout and "ends in LOGISTIC" in r.stdout
    assert "labels   10: 01_daffodil" in r.stdout and "metadata   edgetl" not in r.stdout
    r = run_cli("info", test_models / "bare_uint8.tflite")
    assert "metadata   none" in r.stdout


# ------------------------------------------------------------------ crafted metadata (issue 8, item 7)


BAD_JSON = {
    "input is a string": ({"input": "rgb"}, "input must be an object"),
    "labels is a number": ({"labels": 5}, "labels must be a list of strings"),
    "value_range of one": ({"input": {"value_range": [1]}}, re.escape("value_range must be [low, high]")),
    "value_range reversed": ({"input": {"value_range": [255, 0]}}, re.escape("value_range must be [low, high]")),
    "resize unknown": ({"input": {"resize": "stretch"}}, "input.resize must be one of"),
    "probabilities a string": ({"output": {"probabilities": "yes"}}, "output.probabilities"),
    "newer format": ({"format_version": 99}, "newer than this runtime reads"),
    "too many labels": ({"labels": ["a", "b", "c", "d"]}, "4 labels for 3 outputs"),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_edgetl_json_is_ignored_with_a_reason(test_models, tmp_path, case):
    change, reason = BAD_JSON[case]
    meta = dict(_meta_of(test_models), **change)
    flat = _flat(test_models / "edgetl_uint8.tflite")
    path = tmp_path / "m.tflite"
    path.write_bytes(_with_archive(flat, [_labels_entry(), _zip_entry("edgetl/metadata.json",
                                                                       json.dumps(meta).encode())]))
    with pytest.warns(metadata.MetadataWarning, match=reason):
        clf = Classifier(path, num_threads=1)
    assert clf.meta == {} and clf.labels == LABELS  # the standard form still describes the model


@pytest.mark.parametrize("text, reason", [
    ('{"format": "edgetl.metadata", "format_version": 2, "input": {"value_range": [NaN, 1]}}', "not a JSON number"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ('{"a":' * 40 + "1" + "}" * 40, "nested more than"),
    ("\xff\xfe not utf-8", "not UTF-8"),
    ("{not json", "not valid JSON"),
])
def test_unparseable_json_is_ignored(test_models, tmp_path, text, reason):
    flat = _flat(test_models / "edgetl_uint8.tflite")
    payload = text.encode("latin-1") if "not utf-8" in text else text.encode()
    (tmp_path / "m.tflite").write_bytes(_with_archive(flat, [_labels_entry(),
                                                             _zip_entry("edgetl/metadata.json", payload)]))
    clf = Classifier(tmp_path / "m.tflite", num_threads=1, warn=False)
    assert clf.meta == {} and clf.labels == LABELS
    assert len(clf.notes) == 1 and "edgetl metadata ignored" in clf.notes[0] and reason in clf.notes[0]


def _deflate(payload: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(payload) + c.flush()


@pytest.mark.parametrize("case", ["encrypted", "bzip2", "method 99", "lying size", "bad crc"])
def test_unreadable_members_are_refused(test_models, tmp_path, case):
    meta = json.dumps(_meta_of(test_models)).encode()
    good = _zip_entry("edgetl/metadata.json", meta)
    bad = {
        "encrypted": dict(good, flags=0x1),
        "bzip2": dict(good, method=12),
        "method 99": dict(good, method=99),
        "lying size": _zip_entry("edgetl/metadata.json", meta, method=8, compressed=_deflate(meta), file_size=100),
        "bad crc": dict(good, crc=1234),
    }[case]
    reason = {"encrypted": "is encrypted", "bzip2": "compression method 12", "method 99": "compression method 99",
              "lying size": "cannot be read", "bad crc": "cannot be read"}[case]
    flat = _flat(test_models / "edgetl_uint8.tflite")
    (tmp_path / "m.tflite").write_bytes(_with_archive(flat, [_labels_entry(), bad]))
    clf = Classifier(tmp_path / "m.tflite", num_threads=1, warn=False)
    assert clf.meta == {} and clf.labels == LABELS and reason in clf.notes[0]
    r = run_cli("predict", tmp_path / "m.tflite", tmp_path / "m.tflite", "--threads", "1")
    assert "Traceback" not in r.stderr and "warning: edgetl metadata ignored" in r.stderr


def _bomb(size: int) -> tuple:
    """(deflate stream of ``size`` zero bytes, its CRC): about 1 KB per MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = b"\0" * (1 << 20)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(mib, crc)
    return block * (size >> 20) + c.flush(), crc & 0xFFFFFFFF


def _peak_rss_mb(*cli_args) -> tuple:
    code = ("import resource, sys\nfrom toolchain.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, code, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, cli_args)], capture_output=True, text=True, timeout=300)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("RSS ")][-1].split()
    return int(line[1]), r


def test_zip_bomb_is_capped_before_reading(test_models, tmp_path):
    """A metadata.json that inflates to 2 GiB (honest header, then a header that lies about the size):
    refused, and peak memory stays that of the clean model (it was 4.3 GB)."""
    stream, crc = _bomb(2 << 30)
    flat = _flat(test_models / "edgetl_uint8.tflite")
    honest = _zip_entry("edgetl/metadata.json", b"", method=8, compressed=stream, crc=crc, file_size=2 << 30)
    liar = dict(honest, file_size=1000)
    (tmp_path / "honest.tflite").write_bytes(_with_archive(flat, [_labels_entry(), honest]))
    (tmp_path / "liar.tflite").write_bytes(_with_archive(flat, [_labels_entry(), liar]))
    assert (tmp_path / "honest.tflite").stat().st_size < 4 << 20
    base, r = _peak_rss_mb("info", test_models / "edgetl_uint8.tflite")
    assert r.stderr.split()[-1] == "0"
    for name, reason in (("honest", "over the 4194304 byte limit"), ("liar", "cannot be read")):
        rss, r = _peak_rss_mb("info", tmp_path / f"{name}.tflite")
        assert "edgetl metadata ignored: edgetl/metadata.json" in r.stderr and reason in r.stderr, r.stderr
        assert "labels   3: blue | green | red (from labels.txt)" in r.stdout and "Traceback" not in r.stderr
        assert rss < base + 64, (name, rss, base)


def _standard_span(data: bytes) -> tuple:
    s = tflite_format.parse_model(data)
    entry = next(m for m in s["metadata"] if m["name"] == "TFLITE_METADATA")
    return s["buffer_spans"][entry["buffer"]]


@pytest.mark.parametrize("case", ["identifier", "root offset", "vtable", "huge vector", "labels missing",
                                  "label count", "std zero"])
def test_corrupt_standard_metadata_is_ignored(test_models, tmp_path, case):
    data = bytearray((test_models / "edgetl_uint8.tflite").read_bytes())
    start, length = _standard_span(bytes(data))
    mm = bytearray(data[start : start + length])
    root = struct.unpack_from("<I", mm, 0)[0]
    reason = "standard TFLite metadata ignored"
    if case == "identifier":
        mm[4:8] = b"XXXX"
    elif case == "root offset":
        struct.pack_into("<I", mm, 0, 0x7FFFFFF0)
    elif case == "vtable":
        struct.pack_into("<i", mm, root, -0x7FFFFFF0)
    elif case == "huge vector":  # the subgraph vector claims 2**31 entries
        vt = root - struct.unpack_from("<i", mm, root)[0]
        field = root + struct.unpack_from("<H", mm, vt + 4 + 2 * 3)[0]
        vec = field + struct.unpack_from("<I", mm, field)[0]
        struct.pack_into("<I", mm, vec, 0x7FFFFFFF)
    elif case == "std zero":
        i = mm.find(struct.pack("<f", 1.0))  # the std value (mean is 0.0)
        struct.pack_into("<f", mm, i, 0.0)
    data[start : start + length] = mm
    flat = metadata.split(bytes(data))[0]
    labels = {"labels missing": [], "label count": [_labels_entry(["a", "b"])]}.get(case, [_labels_entry()])
    meta = _zip_entry("edgetl/metadata.json", json.dumps(_meta_of(test_models)).encode())
    (tmp_path / "m.tflite").write_bytes(_with_archive(flat, labels + [meta]))
    clf = Classifier(tmp_path / "m.tflite", num_threads=1, warn=False)
    assert clf.labels == LABELS and clf.meta["labels"] == LABELS  # edgetl metadata still describes it
    if case in ("labels missing", "label count"):
        assert clf.standard and clf.standard["labels"] is None
        assert "label file 'labels.txt' not used" in clf.notes[0]
        assert ("not in the archive" if case == "labels missing" else "2 labels for 3 outputs") in clf.notes[0]
    else:
        assert clf.standard == {} and clf.notes and reason in clf.notes[0]
    r = run_cli("info", tmp_path / "m.tflite")
    assert r.returncode == 0 and "Traceback" not in r.stderr and "warning:" in r.stderr


def test_too_many_members_and_corrupt_archive(test_models, tmp_path):
    flat = _flat(test_models / "edgetl_uint8.tflite")
    many = [_zip_entry(f"f{i}.txt", b"x") for i in range(300)]
    (tmp_path / "many.tflite").write_bytes(_with_archive(flat, many))
    clf = Classifier(tmp_path / "many.tflite", num_threads=1, warn=False)
    assert "300 entries" in clf.notes[0] and clf.labels == ["0", "1", "2"]
    arch = bytearray(_raw_zip([_labels_entry()], len(flat)))
    arch[-10:-6] = b"\xff\xff\x00\x00"  # central directory size beyond the file
    (tmp_path / "cd.tflite").write_bytes(flat + bytes(arch))
    clf = Classifier(tmp_path / "cd.tflite", num_threads=1, warn=False)
    assert "archive ignored" in clf.notes[0]


def test_edgetl_labels_beat_standard_labels_and_flags_beat_both(test_models, tmp_path):
    meta = dict(_meta_of(test_models), labels=["e1", "e2", "e3"])
    flat = _flat(test_models / "edgetl_uint8.tflite")
    (tmp_path / "m.tflite").write_bytes(_with_archive(flat, [_labels_entry(), _zip_entry(
        "edgetl/metadata.json", json.dumps(meta).encode())]))
    clf = Classifier(tmp_path / "m.tflite", num_threads=1)
    assert clf.labels == ["e1", "e2", "e3"] and clf.standard["labels"] == LABELS
    assert Classifier(tmp_path / "m.tflite", num_threads=1, labels=["f1", "f2", "f3"]).labels == ["f1", "f2", "f3"]
    with pytest.raises(EdgetlError, match="2 labels but the model"):
        Classifier(tmp_path / "m.tflite", labels=["a", "b"])


def test_non_finite_figures_never_reach_the_json(test_models):
    out = metadata._json_bytes({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}})
    assert json.loads(out) == {"a": None, "b": [1.0, None], "c": {"d": None}}


# ------------------------------------------------------------------ a real build


def test_build_writes_both_forms_and_the_consumer_parity(tiny_run, tiny_data):
    """`edgetl build` (every mode, the default policy): both metadata forms in each model, the standard one
    beside it in model_<mode>.json; every model gives edge_runtime's answers when its photos are fitted as
    MediaPipe fits them, and report.json / report.md gate each consumer."""
    run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    for mode in ("int8", "float16", "dynamic", "float32"):
        f = metadata.read_all((run / f"model_{mode}.tflite").read_bytes())
        assert not f.problems and f.files == ["labels.txt", "edgetl/metadata.json"]
        assert f.edgetl["mode"] == mode and f.standard["labels"] == ["blue", "green", "red"]
        assert f.standard["input"]["normalization"] == {"mean": [0.0], "std": [1.0]}
        assert "'mediapipe' policy" in f.standard["description"]
        side = json.loads((run / f"model_{mode}.json").read_text())
        assert side["tflite_metadata"]["labels"] == ["blue", "green", "red"]
        cons = rep["tflite"][mode]["consumers"]
        assert cons["edge"]["declared"] and cons["mediapipe"]["declared"] and cons["mediapipe"]["passed"]
        assert cons["mediapipe"]["n"] == 45 and cons["mediapipe"]["agreement"] == rep["tflite"][mode]["agreement"]
        tr = cons["tflite-runtime"]  # measured where it loads; under NumPy 2 it says why not
        assert tr["measured"] or "NumPy" in tr["reason"]
        # the two consumer paths on real files: edge_runtime's own, and MediaPipe's fit of the decoded photo
        clf = Classifier(run / f"model_{mode}.tflite", num_threads=1)
        assert clf.resize == "mediapipe" and clf.sampling == "mediapipe"
        for photo in sorted(tiny_data.rglob("*.jpg"))[::7]:
            mp = clf.run_tensor(clf.from_pixels(fit_like_mediapipe(decode_image(photo), clf.input_size)))
            np.testing.assert_array_equal(clf.probabilities(decode_image(photo)), mp)
            assert clf.classify_path(photo)[0].index == int(np.argmax(mp))
    md = (run / "report.md").read_text()
    assert "### Consumers" in md and "| int8 | MediaPipe Tasks / Task Library fit | mediapipe |" in md
