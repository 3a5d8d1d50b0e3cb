"""Fuzzing the decoder: mutated JPEG/PNG/GIF/WebP/TIFF/BMP bytes (bit flips, bytes set to boundary values,
truncations, spliced and duplicated chunks) must each end as an RGB uint8 array or as that file's
ImageError: never another exception, never a hang. Then the same kind of corpus, as files in a folder,
through `edgetl predict` in a real process under a timeout: no traceback, valid JSON on every line, every
file accounted for, the exit code the documented rule gives.

Deterministic: hypothesis runs derandomized (its examples depend only on this test's code) and the file
corpus comes from a seeded NumPy generator, so a failure reproduces on every run and every machine.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from test_preprocess import watchdog

from edge_runtime import preprocess
from edge_runtime.errors import ImageError

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (pip install '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
INTERESTING = (0x00, 0x01, 0x02, 0x05, 0x07, 0x0B, 0x0C, 0x10, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _picture(h=40, w=56, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 9 % 256, y * 12 % 256, (x + y) * 5 % 256], axis=2).astype(np.int16)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> list:
    """(format, bytes) of small valid images covering each format's main code paths."""
    rgb = Image.fromarray(_picture())
    rgba = Image.fromarray(np.dstack([_picture(), np.tile(np.arange(56, dtype=np.uint8) * 4, (40, 1))]), "RGBA")
    gray = rgb.convert("L")
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(_picture(seed=i)) for i in range(2)]
    out = [
        ("JPEG", _save(rgb, "JPEG", quality=90)),
        ("JPEG", _save(rgb, "JPEG", quality=75, progressive=True, exif=exif)),
        ("JPEG", _save(gray, "JPEG")),
        ("JPEG", _save(rgb.convert("CMYK"), "JPEG")),
        ("PNG", _save(rgb, "PNG")),
        ("PNG", _save(rgba, "PNG")),
        ("PNG", _save(pal, "PNG", transparency=0)),
        ("PNG", _save(Image.fromarray((_picture()[:, :, 0].astype(np.uint16) * 257)), "PNG")),
        ("GIF", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)),
        ("GIF", _save(pal, "GIF", transparency=0)),
        ("WEBP", _save(rgb, "WEBP", quality=80)),
        ("WEBP", _save(rgba, "WEBP", lossless=True)),
        ("TIFF", _save(rgb, "TIFF")),
        ("TIFF", _save(rgb, "TIFF", compression="tiff_lzw")),
        ("TIFF", _save(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("TIFF", _save(gray, "TIFF", compression="packbits", exif=exif)),
        ("BMP", _save(rgb, "BMP")),
        ("BMP", _save(pal, "BMP")),
    ]
    for fmt, data in out:  # every seed itself decodes
        assert preprocess.decode_image(data).shape[2] == 3, fmt
    return out


SEEDS = _seeds()


def tiff_entries(data: bytes) -> list:
    """Byte offsets of the 12-byte entries of a TIFF's first IFD (tag, field type, count, value)."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(data[:2]))
    if order is None or len(data) < 8:
        return []
    ifd = int.from_bytes(data[4:8], order)
    if ifd + 2 > len(data):
        return []
    count = int.from_bytes(data[ifd : ifd + 2], order)
    return [ifd + 2 + 12 * k for k in range(count) if ifd + 14 + 12 * k <= len(data)]


def set_tiff_field(data: bytes, entry: int, field: str, value: int) -> bytes:
    """``data`` with one field (type: 2 bytes, count or value: 4 bytes) of the IFD entry at ``entry`` set."""
    order = "little" if data[:2] == b"II" else "big"
    b = bytearray(data)
    at, size = {"type": (2, 2), "count": (4, 4), "value": (8, 4)}[field]
    b[entry + at : entry + at + size] = (value % 2 ** (8 * size)).to_bytes(size, order)
    return bytes(b)


def _mutate(data: bytes, rng: np.random.Generator, others) -> bytes:
    """1 to 3 random mutations of ``data``."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        n = len(b)
        op = int(rng.integers(0, 8))
        if n == 0:
            break
        if op == 0:  # flip 1-8 bits
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(0, n))
                b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:  # bytes set to boundary values (types, lengths, counts in headers)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, n))] = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
        elif op == 2:  # truncate
            del b[int(rng.integers(0, n)):]
        elif op == 3:  # splice a chunk of another image over this one
            src = others[int(rng.integers(0, len(others)))]
            s0 = int(rng.integers(0, len(src)))
            chunk = src[s0 : s0 + int(rng.integers(1, 64))]
            d0 = int(rng.integers(0, n))
            b[d0 : d0 + len(chunk)] = chunk
        elif op == 4:  # insert a chunk of another image
            src = others[int(rng.integers(0, len(others)))]
            s0 = int(rng.integers(0, len(src)))
            d0 = int(rng.integers(0, n))
            b[d0:d0] = src[s0 : s0 + int(rng.integers(1, 64))]
        elif op == 5:  # duplicate a chunk in place
            s0 = int(rng.integers(0, n))
            chunk = b[s0 : s0 + int(rng.integers(1, 128))]
            b[s0:s0] = chunk
        elif op == 6:  # delete a chunk
            s0 = int(rng.integers(0, n))
            del b[s0 : s0 + int(rng.integers(1, 32))]
        else:  # a structural field: a TIFF IFD entry's type/count/value, else an integer in the header
            entries = tiff_entries(b)
            if entries:
                field = ("type", "count", "value")[int(rng.integers(0, 3))]
                value = int(rng.integers(0, 20)) if field == "type" else \
                    INTERESTING_INTS[int(rng.integers(0, len(INTERESTING_INTS)))]
                b = bytearray(set_tiff_field(b, entries[int(rng.integers(0, len(entries)))], field, value))
            else:
                size = (2, 4)[int(rng.integers(0, 2))]
                at = int(rng.integers(0, max(1, min(n, 64) - size)))
                value = INTERESTING_INTS[int(rng.integers(0, len(INTERESTING_INTS)))] % 2 ** (8 * size)
                b[at : at + size] = value.to_bytes(size, ("little", "big")[int(rng.integers(0, 2))])
    return bytes(b)


def corpus(n: int, seed: int) -> list:
    """``n`` (format, mutated bytes) cases from a seeded generator, cycling through the seeds."""
    rng = np.random.default_rng(seed)
    others = [d for _, d in SEEDS]
    return [(SEEDS[i % len(SEEDS)][0], _mutate(SEEDS[i % len(SEEDS)][1], rng, others)) for i in range(n)]


def _check(data: bytes):
    """The property: an RGB uint8 image, or an ImageError with a reason. Returns True if decoded."""
    try:
        a = preprocess.decode_image(data)
    except ImageError as e:
        assert e.reason and isinstance(e.reason, str)
        return False
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.shape[0] > 0 and a.shape[1] > 0
    return True


@st.composite
def mutated(draw):
    """Any seed, 1-3 random mutations."""
    fmt, data = draw(st.sampled_from(SEEDS))
    seed = draw(st.integers(0, 2**32 - 1))
    return fmt, _mutate(data, np.random.default_rng(seed), [d for _, d in SEEDS])


TIFF_SEEDS = [d for f, d in SEEDS if f == "TIFF"]


@st.composite
def tiff_field(draw):
    """A TIFF with one IFD entry's field type, count or value changed (where the reported crash was)."""
    data = draw(st.sampled_from(TIFF_SEEDS))
    entry = draw(st.sampled_from(tiff_entries(data)))
    field = draw(st.sampled_from(("type", "count", "value")))
    value = draw(st.integers(0, 19) if field == "type" else
                 st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**32 - 1)))
    return "TIFF", set_tiff_field(data, entry, field, value)


@settings(max_examples=2000, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=st.one_of(mutated(), tiff_field()))
def test_decode_image_mutations_hypothesis(case):
    with watchdog(30, f"one mutated {case[0]}"):
        _check(case[1])


def test_decode_image_seeded_corpus():
    """3,000 more cases from a fixed seed; both outcomes occur (the corpus really hits the decoders)."""
    t0 = time.perf_counter()
    decoded = failed = 0
    with watchdog(180, "the seeded corpus"):
        for fmt, data in corpus(3000, seed=2024):
            if _check(data):
                decoded += 1
            else:
                failed += 1
    assert decoded > 100 and failed > 100, (decoded, failed)
    print(f"3000 cases in {time.perf_counter() - t0:.1f} s: {decoded} decoded, {failed} ImageError")


def test_corrupt_tiff_field_type_is_an_image_error():
    """The reported crash: one byte of a TIFF field's type changed (ImageWidth as ASCII, RATIONAL,
    UNDEFINED or FLOAT) raised TypeError out of decode_image."""
    data = _save(Image.fromarray(_picture()), "TIFF")
    assert data[:2] == b"II"
    entries = {int.from_bytes(data[e : e + 2], "little"): e for e in tiff_entries(data)}
    assert 273 in entries  # StripOffsets: as SHORT/LONG fine, as ASCII/RATIONAL/UNDEFINED/DOUBLE a TypeError
    for tag in (256, 257, 273, 277, 278, 279):  # width, height, strip offsets, samples, rows, strip sizes
        for ftype in (2, 5, 7, 10, 11, 12):
            bad = set_tiff_field(data, entries[tag], "type", ftype)
            try:
                preprocess.decode_image(bad)
            except ImageError as e:
                assert e.reason
            # decoding anyway (Pillow coping with the odd type) is fine too; any other exception fails


# ------------------------------------------------------------------ the CLI on a folder of fuzzed files


def test_predict_on_a_folder_of_fuzzed_files(test_models, tmp_path):
    d = tmp_path / "fuzzed"
    d.mkdir()
    cases = corpus(600, seed=7)
    names = []
    for i, (fmt, data) in enumerate(cases):
        name = f"case_{i:03d}{EXT[fmt]}"
        (d / name).write_bytes(data)
        names.append(name)
    # what the decoder says in this process: the oracle for the CLI's answer
    ok = {n for n, (_, data) in zip(names, cases) if _check(data)}
    # and strays that are not images at all: a text file, a named pipe, a socket, a link to /dev/zero
    (d / "labels.txt").write_text("cat\ndog\n")
    os.mkfifo(d / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))  # the socket file stays after close
    sock.close()
    os.symlink("/dev/zero", d / "zero.jpg")
    strays = {"labels.txt", "pipe.jpg", "sock.png", "zero.jpg"}
    t0 = time.perf_counter()
    r = run_cli("predict", test_models / "edgetl_uint8.tflite", d, "--json", "--threads", "1", timeout=300)
    took = time.perf_counter() - t0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]

    def no_nan(x):
        raise ValueError(f"not JSON: {x}")

    lines = [json.loads(x, parse_constant=no_nan) for x in r.stdout.splitlines()]
    by_name = {os.path.basename(x["path"]): x for x in lines}
    assert len(by_name) == len(lines) == len(names) + len(strays)  # each file once
    assert {n for n, x in by_name.items() if "label" in x} == ok
    assert {n for n, x in by_name.items() if "skipped" in x} == strays
    failed = {n for n, x in by_name.items() if "error" in x}
    assert failed == set(names) - ok and failed  # the corpus has corrupt photos...
    assert ok  # ...and photos that still decode
    for x in lines:
        if "label" in x:
            assert 0.0 <= x["score"] <= 1.0 and x["top_k"][0]["label"] == x["label"]
    # the rule: a corrupt photo makes it exit 2, with one error line and one hint line
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and f"{len(failed)} of {len(lines)} file(s) could not be classified" in err[0]
    assert sum(ln.startswith("hint:") for ln in r.stderr.splitlines()) == 1
    assert f"; {len(ok)} other file(s) were classified and 4 skipped as not images" in r.stderr
    print(f"predict on {len(lines)} files: {took:.1f} s")
