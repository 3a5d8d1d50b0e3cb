"""edgetl's small per-device caches (the device's model choice, the crash-safety verdicts of models).

Where: ``$EDGETL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``. A cache is one
JSON document, read through ``files.read_json`` (a regular file only, size-capped, never blocking: a named
pipe or a link to ``/dev/zero`` in its place is ignored) and tolerant of damage (anything unreadable or of
another version reads as empty), written atomically (temporary file, fsync, rename) and on a best-effort
basis: a read-only home must not stop a device from classifying.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import files

MAX_CACHE_BYTES = 4 << 20


def cache_dir() -> Path:
    base = os.environ.get("EDGETL_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgetl"


def read(name: str, version: int, key: str) -> dict:
    """The document ``name`` when it is a JSON object of this ``version`` whose ``key`` holds an object;
    else a fresh empty one."""
    empty = {"version": version, key: {}}
    try:
        doc = files.read_json(cache_dir() / name, MAX_CACHE_BYTES, "cache file")
    except (files.FileProblem, ValueError):
        return empty
    if not isinstance(doc, dict) or doc.get("version") != version or not isinstance(doc.get(key), dict):
        return empty
    return doc


def write(name: str, doc: dict) -> bool:
    """Replace the document ``name`` atomically; False (and nothing changed) when it cannot be written."""
    p = cache_dir() / name
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        return True
    except (OSError, ValueError, TypeError):
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def keep_newest(entries: dict, n: int, stamp: str) -> dict:
    """At most ``n`` entries of ``entries`` (key -> dict), the newest by their ``stamp`` field."""
    if len(entries) <= n:
        return entries
    items = sorted(entries.items(), key=lambda kv: str(kv[1].get(stamp, "")) if isinstance(kv[1], dict) else "")
    return dict(items[-n:])
