"""edgetl metadata, carried inside the .tflite file.

Layout: the converter's flatbuffer, unchanged, followed by a small ZIP archive holding
``edgetl/metadata.json`` and ``edgetl/labels.txt``. This is the same trick TFLite's own metadata uses
for associated files: interpreters read the flatbuffer and ignore what follows it (checked with
ai-edge-litert and tflite-runtime), ``unzip -l model.tflite`` lists the files, and reading it needs only
the standard library.

metadata.json (format ``edgetl.metadata``, version 1) holds: ``labels``, ``input`` (size, colour order,
resize policy, value range the model expects, dtype and quantization), ``output`` (dtype, quantization,
whether it holds probabilities), ``mode`` (int8, float16, dynamic, float32), ``edgetl_version``,
``keras_model_sha256``, ``dataset`` (a summary), ``parity`` (the accuracy-parity figures) and
``created``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

FORMAT = "edgetl.metadata"
FORMAT_VERSION = 1
META_NAME = "edgetl/metadata.json"
LABELS_NAME = "edgetl/labels.txt"


def _open_zip(data: bytes):
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if META_NAME not in z.namelist():
        return None
    return z


def split(data: bytes):
    """(flatbuffer_bytes, metadata dict or None). The flatbuffer is the file without the archive."""
    z = _open_zip(data)
    if z is None:
        return bytes(data), None
    start = min(i.header_offset for i in z.infolist())
    meta = json.loads(z.read(META_NAME).decode("utf-8"))
    return bytes(data[:start]), meta


def read(path_or_bytes) -> dict | None:
    """The metadata dict of an edgetl model, or None for a model without it."""
    data = Path(path_or_bytes).read_bytes() if not isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    z = _open_zip(data)
    if z is None:
        return None
    try:
        meta = json.loads(z.read(META_NAME).decode("utf-8"))
    except (ValueError, zipfile.BadZipFile, OSError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta


def embed(model: bytes, meta: dict) -> bytes:
    """Return ``model`` (a flatbuffer, with or without an old archive) with ``meta`` appended."""
    flat, _ = split(model)
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(META_NAME, json.dumps(meta, indent=1, sort_keys=True))
        z.writestr(LABELS_NAME, "\n".join(meta.get("labels") or []) + "\n")
    return flat + buf.getvalue()
