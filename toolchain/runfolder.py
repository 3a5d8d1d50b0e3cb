"""The run folder: one place per run, written so that nothing is ever lost.

Layout (a contract later stages and users rely on):
  .edgetl-run  split.json  labels.txt  report.json  report.md  model.keras  stage1.keras
  model_<mode>.tflite  model_<mode>.json  plots/*.png  cache/ (decoded photos)  logs/

Guarantees, and how they are kept:
- A run is recognised only by ``RUN/.edgetl-run``, a marker edgetl alone writes (format and version).
  A folder without it is never cleared, whatever files it holds.
- Every command that writes a run works on a *staged copy*: a sibling folder ``.RUN.edgetl-new-PID``
  (a fresh folder for build/train; hard links of the run's files for finetune/quantize, which edgetl
  only ever replaces by rename, never modifies in place). The staged folder takes the run's place only
  when the command ends (success, or a failed parity gate with every artifact written), by an atomic
  exchange where the kernel offers one (Linux renameat2), else by two renames that the next command
  completes if it was killed in between. Until then the previous run is whole; a killed or failed
  command leaves it untouched, and its staged folder is removed (by itself, or by the next command).
- Entries of a run folder that edgetl did not write (a user's notes) are carried over to the new run,
  never deleted.
- One command at a time per run: a lock file beside it (``.RUN.edgetl-lock``, flock) makes a second
  command exit 2 naming the first one's pid.
- Files are written atomically (temporary file in the same folder, fsync, rename).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime import __version__
from edge_runtime.errors import EdgetlError
from edge_runtime.metadata import finite  # noqa: F401 (also used by the CLI's JSON)

MARKER = ".edgetl-run"
MARKER_FORMAT = "edgetl.run"
MARKER_VERSION = 1
# What edgetl writes in a run folder. Anything else belongs to the user and is never deleted.
ARTIFACT_FILES = ("split.json", "labels.txt", "report.json", "report.md", "model.keras", "stage1.keras", MARKER)
ARTIFACT_PATTERNS = ("model_*.tflite", "model_*.json", ".*.tmp*")
ARTIFACT_DIRS = ("plots", "cache", "logs")
NEW, OLD, LOCK = "edgetl-new", "edgetl-old", "edgetl-lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ atomic files


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
    """Strict JSON (NaN and infinity, which JSON has not, are written as null)."""
    write_text(path, json.dumps(finite(obj), indent=2, sort_keys=False, default=_jsonable, allow_nan=False) + "\n")


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


def read_json(path, what: str = "file") -> dict:
    """A JSON file of a run; a missing file is {}, a damaged one an error that says what to do."""
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise EdgetlError(f"{p} is damaged ({type(e).__name__}: {str(e)[:120]})",
                          hint=f"the {what} is incomplete (a full disk or a killed copy?); "
                               "rebuild the run with `edgetl build DATA_DIR --out RUN --force`") from None
    if not isinstance(doc, dict):
        raise EdgetlError(f"{p} is damaged (not a JSON object)",
                          hint="rebuild the run with `edgetl build DATA_DIR --out RUN --force`")
    return doc


def read_report(run: Path) -> dict:
    return read_json(Path(run) / "report.json", "run report")


def update_report(run: Path, **sections) -> dict:
    rep = read_report(run)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(rep.get(k), dict):
            rep[k].update(v)
        else:
            rep[k] = v
    write_json(Path(run) / "report.json", rep)
    return rep


# ------------------------------------------------------------------ what is a run, what is ours


def is_run(path) -> bool:
    """True only for a folder holding edgetl's marker (a small JSON file edgetl alone writes)."""
    m = Path(path) / MARKER
    try:
        if not m.is_file() or m.stat().st_size > 4096:
            return False
        doc = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == MARKER_FORMAT


def is_any_run(path) -> bool:
    """A run folder edgetl wrote: with the marker, or from edgetl 0.1 (before the marker)."""
    return is_run(path) or is_legacy_run(path)


def is_legacy_run(path) -> bool:
    """A run written by edgetl 0.1, before the marker existed (split.json and report.json of edgetl)."""
    p = Path(path)
    if is_run(p) or not ((p / "split.json").is_file() and (p / "report.json").is_file()):
        return False
    try:
        rep = json.loads((p / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(rep, dict) and "edgetl_version" in rep


def write_marker(run: Path, status: str):
    write_json(Path(run) / MARKER, {"format": MARKER_FORMAT, "format_version": MARKER_VERSION,
                                    "edgetl_version": __version__, "status": status, "updated": _now()})


def is_artifact(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name in ARTIFACT_DIRS
    return name in ARTIFACT_FILES or any(fnmatch.fnmatchcase(name, p) for p in ARTIFACT_PATTERNS)


def foreign_entries(run: Path) -> list:
    """Entries of a run folder that edgetl did not write (sorted names)."""
    out = []
    for child in Path(run).iterdir():
        if not is_artifact(child.name, child.is_dir() and not child.is_symlink()):
            out.append(child.name)
    return sorted(out)


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(p)))


def check_data_relation(out, data_dir):
    """Refuse a run folder that is the data folder, inside it, or above it."""
    o, d = _resolved(Path(out)), _resolved(Path(data_dir))
    if o == d:
        raise EdgetlError(f"--out {out} is the data folder itself",
                          hint="write the run somewhere else, e.g. --out runs/NAME (the default)")
    if d in o.parents:
        raise EdgetlError(f"--out {out} is inside the data folder {data_dir} (it would be read as a class)",
                          hint="write the run outside the data folder, e.g. --out runs/NAME (the default)")
    if o in d.parents:
        raise EdgetlError(f"--out {out} contains the data folder {data_dir}",
                          hint="write the run beside the data, not above it, e.g. --out runs/NAME")


def check_new(out, force: bool, data_dir=None) -> Path:
    """Raise unless ``out`` can receive a new run: absent, empty, or (with --force) an edgetl run.
    Call with the run's lock held. Nothing of the old run is touched here; it is replaced only when the
    new one is complete."""
    out = Path(out)
    if data_dir is not None:
        check_data_relation(out, data_dir)
    _recover(out)
    if out.is_symlink() and not out.exists():
        raise EdgetlError(f"{out} is a broken symbolic link", hint="remove it or choose another --out")
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"{out} exists and is a file", hint="choose another --out folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_any_run(out):
            raise EdgetlError(f"{out} is not empty and is not an edgetl run folder (no {MARKER}); "
                              "refusing to overwrite it", hint="choose another --out folder")
        if not force:
            raise EdgetlError(f"run folder {out} already exists",
                              hint="pass --force to replace it (only once the new run is complete), "
                                   "or choose another --out")
    return out


def check_existing(run) -> Path:
    """Raise unless ``run`` is an edgetl run folder (for finetune, quantize, clean). Call with the lock
    held."""
    run = Path(run)
    _recover(run)
    if not run.is_dir():
        raise EdgetlError(f"run folder not found: {run}", hint="pass a run folder made by `edgetl build` or `edgetl train`")
    if not is_any_run(run):
        raise EdgetlError(f"{run} is not an edgetl run folder (no {MARKER})",
                          hint="pass a run folder made by `edgetl build` or `edgetl train`")
    return run


# ------------------------------------------------------------------ one command per run


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.{LOCK}"


class RunLock:
    """An exclusive lock on a run folder, held for a whole command (flock on a file beside the run, so
    it survives the run folder being swapped). A second command fails at once, naming the holder."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = _lock_path(self.out)
        self.fd = None
        self.made_parent = None

    def acquire(self):
        import fcntl

        if not self.out.parent.exists():
            self.out.parent.mkdir(parents=True)
            self.made_parent = self.out.parent
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                holder = self._holder(fd)
                os.close(fd)
                raise EdgetlError(f"run folder {self.out} is in use by another edgetl command ({holder})",
                                  hint="wait for it to finish (or stop it), then run again; or choose another "
                                       "--out") from None
            # the holder may have removed the file between our open and our lock: lock the live file
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                cmd = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "edgetl"
                os.write(fd, json.dumps({"pid": os.getpid(), "command": cmd[:300]}).encode())
                return self
            os.close(fd)
        raise EdgetlError(f"could not lock {self.out}", hint="another edgetl command keeps starting there; try again")

    @staticmethod
    def _holder(fd) -> str:
        try:
            os.lseek(fd, 0, 0)
            doc = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
            return f"pid {doc.get('pid')}: {doc.get('command')}"
        except (OSError, ValueError):
            return "pid unknown"

    def release(self):
        if self.fd is not None:
            try:
                os.unlink(self.path)  # unlink while locked: a waiter re-checks the inode and retries
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        if self.made_parent is not None and not self.out.exists():
            try:
                self.made_parent.rmdir()  # a failed first command leaves no empty folder behind
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------ staged writes


def _siblings(out: Path, kind: str) -> list:
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*") if p.is_dir() and not p.is_symlink())


def _recover(out: Path):
    """Finish what a killed command left. Call with the run's lock held. A run moved aside by the
    two-rename swap goes back in place; staged folders and moved-aside runs are removed. Only folders
    that hold edgetl's marker (or an empty staged folder) are touched."""
    out = Path(out)
    olds = [p for p in _siblings(out, OLD) if is_run(p)]
    if olds and not out.exists():
        os.rename(olds[-1], out)  # the previous good run, back where it was
        olds = olds[:-1]
    for p in olds + [p for p in _siblings(out, NEW) if is_run(p) or not any(p.iterdir())]:
        shutil.rmtree(p, ignore_errors=True)


def _link_tree(src: Path, dst: Path):
    """Recreate ``src`` under ``dst`` with hard links (copies where links are impossible)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for d in list(dirnames):
            s = Path(dirpath) / d
            if s.is_symlink():
                os.symlink(os.readlink(s), dst / rel / d)
                dirnames.remove(d)
        for f in filenames:
            s, t = Path(dirpath) / f, dst / rel / f
            if s.is_symlink():
                os.symlink(os.readlink(s), t)
                continue
            try:
                os.link(s, t)
            except OSError:
                shutil.copy2(s, t)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # this filesystem or kernel cannot: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


class Staged:
    """Write a run in a sibling folder and put it in place only at ``commit()``.

    ``fresh=True``: the staged folder starts empty (build, train). ``fresh=False``: it starts as hard
    links of the current run (finetune, quantize). Used as a context manager, an exception (or a kill)
    before ``commit`` leaves the current run as it was and removes the staged folder."""

    def __init__(self, out, fresh: bool):
        self.out = Path(out)
        self.fresh = fresh
        self.path = self.out.parent / f".{self.out.name}.{NEW}-{os.getpid()}"
        self.committed = False

    def __enter__(self) -> "Staged":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        if self.fresh or not self.out.is_dir():
            self.path.mkdir()
        else:
            _link_tree(self.out, self.path)
        write_marker(self.path, "in-progress")
        return self

    def commit(self, status: str = "complete"):
        """Put the staged run in place of the old one (if any). Entries of the old folder that edgetl
        did not write move into the new run."""
        write_marker(self.path, status)
        out = self.out
        if not out.exists():
            os.rename(self.path, out)
            self.committed = True
            return out
        old = out.parent / f".{out.name}.{OLD}-{os.getpid()}"
        if _exchange(self.path, out):
            os.rename(self.path, old)  # self.path now holds the old run
        else:
            os.rename(out, old)
            os.rename(self.path, out)
        self.committed = True
        kept = [name for name in foreign_entries(old) if not (out / name).exists()]
        for name in kept:
            os.rename(old / name, out / name)
        if kept:
            from . import ui

            ui.info(f"kept {len(kept)} file(s) of yours that were in {out}: {', '.join(kept[:5])}"
                    f"{' ...' if len(kept) > 5 else ''}")
        if not (old / MARKER).exists():
            write_marker(old, "replaced")  # a legacy run: mark it so a crash here is recoverable
        shutil.rmtree(old, ignore_errors=True)
        return out

    def abort(self):
        if not self.committed and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb):
        self.abort()
