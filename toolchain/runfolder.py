"""The run folder: one place per run, atomic artifact writes, never overwritten without --force.

Layout (a contract later stages and users rely on):
  split.json  labels.txt  report.json  report.md  model.keras  stage1.keras
  model_<mode>.tflite  model_<mode>.json  plots/*.png  cache/ (decoded photos, features)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from edge_runtime.errors import EdgetlError

MARKERS = ("split.json", "report.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def _tmp_path(path: Path) -> Path:
    """A temporary file beside ``path`` (same filesystem, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, _MODE)  # mkstemp makes 0600; artifacts get the usual permissions
    return Path(name)


def replace_file(tmp: Path, dest: Path):
    os.replace(tmp, dest)


def write_bytes(path, data: bytes):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_with(path, save_fn):
    """Atomically produce ``path`` with ``save_fn(tmp_path)`` (e.g. a Keras model.save or savefig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        save_fn(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in MARKERS)


def check(out, force: bool) -> Path:
    """Raise unless ``out`` can become a run folder: absent, empty, or (with --force) an edgetl run. A
    folder that is not a run is never cleared, so --force cannot wipe a folder of photos by mistake."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"{out} exists and is a file", hint="choose another --out folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise EdgetlError(f"run folder {out} already exists", hint="pass --force to overwrite it, or choose another --out")
        if not is_run(out):
            raise EdgetlError(f"{out} is not empty and is not an edgetl run folder; refusing to overwrite it",
                              hint="choose another --out folder")
    return out


def prepare(out, force: bool) -> Path:
    """Create the run folder (clearing an old run with --force; see ``check``)."""
    out = check(out, force)
    if out.is_dir() and any(out.iterdir()):
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_report(run: Path) -> dict:
    p = Path(run) / "report.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def update_report(run: Path, **sections) -> dict:
    rep = read_report(run)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(rep.get(k), dict):
            rep[k].update(v)
        else:
            rep[k] = v
    write_json(Path(run) / "report.json", rep)
    return rep
