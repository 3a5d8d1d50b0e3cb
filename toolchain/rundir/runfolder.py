"""The run folder: one place per run, written so that nothing is ever lost.

Layout (a contract later stages and users rely on):
  .edgetl-run  split.json  labels.txt  report.json  report.md  model.keras  stage1.keras
  model_<mode>.tflite  model_<mode>.json  plots/*.png  cache/ (decoded photos)  logs/

Guarantees, and how they are kept:
- A run is recognised only by ``RUN/.edgetl-run``, a marker edgetl alone writes. The marker holds the
  run's **manifest**: every file edgetl wrote in the run (relative path, size, SHA-256). Only manifest
  entries whose content is still what edgetl wrote are ever replaced or deleted, at any depth; everything
  else in a run folder is the user's and is never deleted or overwritten (a file of edgetl's that the
  user edited becomes the user's). Runs of edgetl 0.1 and of the first marker format (no manifest) count
  as edgetl's only the exact names those versions wrote.
- Paths are resolved (realpath) before the lock, the containment checks and the commit, so a run
  reached through a symbolic link is the same run.
- Every command that writes a run works on a *staged copy*: a sibling folder ``.RUN.edgetl-new-PID``
  (empty for build/train; hard links of the run's manifest entries for finetune/quantize, which edgetl
  only ever replaces by rename, never modifies or appends to in place). The commit:
    1. the staged folder's manifest is written into its marker;
    2. the user's entries of the old run are hard-linked into the staged folder (same paths; a name
       the new run also uses gets ``.yours`` added);
    3. the staged folder and the run are exchanged atomically (Linux renameat2; elsewhere two renames);
    4. the old run, now beside the new one, is *dissolved*: its manifest entries are deleted, the links
       that the new run also holds are unlinked, anything else is moved into the new run (never over a
       file). A folder that cannot be emptied is left in place with a warning.
  The next command (which holds the lock) dissolves whatever a killed command left, by the same rules,
  so a kill at any point leaves either the old run or the new one, whole, and every file of the user's.
- One command at a time per run: a lock file beside it (``.RUN.edgetl-lock``, flock, opened without
  following links and refused unless it is a plain file of edgetl's) makes a second command exit 2
  naming the first one's pid.
- Files are written atomically (temporary file in the same folder, fsync, rename).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import stat
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime import __version__
from edge_runtime import files as files_mod
from edge_runtime.errors import EdgetlError
from edge_runtime.metadata import finite  # noqa: F401 (also used by the CLI's JSON)

MARKER = ".edgetl-run"
MARKER_FORMAT = "edgetl.run"
MARKER_VERSION = 2
MARKER_MAX_BYTES = 16 * 1024 * 1024
NEW, OLD, LOCK = "edgetl-new", "edgetl-old", "edgetl-lock"
MODES = ("int8", "float16", "dynamic", "float32")
# What edgetl 0.1 and the first marker format (no manifest) wrote, by exact name: in such a run these
# alone count as edgetl's.
LEGACY_FILES = frozenset(
    ["split.json", "labels.txt", "report.json", "report.md", "model.keras", "stage1.keras",
     "cache/images.npy", "cache/index.json", "plots/training_curves.png", "plots/size_accuracy_latency.png",
     "plots/confusion_keras.png"]
    + [f"model_{m}.{ext}" for m in MODES for ext in ("tflite", "json")]
    + [f"plots/confusion_{m}.png" for m in MODES] + [f"logs/convert_{m}.log" for m in MODES])
# Fault injection for the tests of the commit (tests/test_runfolder_commit.py): EDGETL_FAULT=commit:N
# makes the process kill itself (SIGKILL) at the N-th step of a commit. Unset, it costs one lookup.
FAULT_ENV = "EDGETL_FAULT"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolved(p) -> Path:
    """The real absolute path (symbolic links resolved)."""
    return Path(os.path.realpath(os.path.abspath(p)))


def literal(p) -> Path:
    """The absolute path as written (``..`` folded, symbolic links not followed)."""
    return Path(os.path.normpath(os.path.abspath(p)))


# ------------------------------------------------------------------ atomic files


def _tmp_path(path: Path) -> Path:
    """A temporary file beside ``path`` (same filesystem, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, _MODE)  # mkstemp makes 0600; artifacts get the usual permissions
    return Path(name)


def replace_file(tmp: Path, dest: Path):
    os.replace(tmp, dest)


def _named(e: OSError, path) -> OSError:
    """``e`` with the file it concerns (ENOSPC from a write names none)."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


def write_bytes(path, data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    save_with(path, write)


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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path) from None
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
    """A JSON file of a run; a missing file is {}, a damaged one an error that says what to do. Only a
    regular file is read (a named pipe or a device in its place is an error, never a hang)."""
    p = Path(path)
    hint = (f"the {what} is incomplete (a full disk or a killed copy?); "
            "rebuild the run with `edgetl build DATA_DIR --out RUN --force`")
    try:
        doc = files_mod.read_json(p, what=what)
    except files_mod.FileProblem as e:
        if e.missing:
            return {}
        raise EdgetlError(f"{p} is damaged ({e.reason})", hint=hint) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise EdgetlError(f"{p} is damaged ({type(e).__name__}: {str(e)[:120]})", hint=hint) from None
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


# ------------------------------------------------------------------ the marker and its manifest


def read_marker(path) -> dict | None:
    """The marker of the folder ``path`` if it is edgetl's (a JSON object of edgetl's format), else None."""
    try:
        doc = files_mod.read_json(Path(path) / MARKER, MARKER_MAX_BYTES, "run marker")
    except (EdgetlError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT:
        return None
    return doc


def is_run(path) -> bool:
    """True only for a folder holding edgetl's marker (a small JSON file edgetl alone writes)."""
    return read_marker(path) is not None


def is_any_run(path) -> bool:
    """A run folder edgetl wrote: with the marker, or from edgetl 0.1 (before the marker)."""
    return is_run(path) or is_legacy_run(path)


def is_legacy_run(path) -> bool:
    """A run written by edgetl 0.1, before the marker existed (split.json and report.json of edgetl)."""
    p = Path(path)
    if is_run(p) or not ((p / "split.json").is_file() and (p / "report.json").is_file()):
        return False
    try:
        rep = files_mod.read_json(p / "report.json", what="run report")
    except (EdgetlError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(rep, dict) and "edgetl_version" in rep


def _entry(st: os.stat_result, sha: str) -> dict:
    return {"size": st.st_size, "sha256": sha, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def walk(root: Path):
    """(relative posix path, lstat) of every entry under ``root`` that is not a folder (files, links,
    special files), never following a symbolic link; the marker at the top is left out. Folders are
    visited top-down, in sorted order."""
    root = Path(root)
    stack = [""]
    while stack:
        rel = stack.pop()
        here = root / rel if rel else root
        try:
            names = sorted(os.listdir(here))
        except OSError:
            continue
        subdirs = []
        for name in names:
            r = f"{rel}/{name}" if rel else name
            if r == MARKER:
                continue
            try:
                st = os.lstat(here / name)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(r)
            else:
                yield r, st
        stack.extend(reversed(subdirs))


def _dirs(root: Path) -> list:
    """Every real folder under ``root`` (relative paths), deepest first."""
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                out.append(str(p.relative_to(root)))
    return sorted(out, key=lambda r: (-r.count("/"), r))


def entry_stat(root: Path, rel: str) -> os.stat_result | None:
    """lstat of ``root/rel`` when it is a regular file reached through real folders only (no symbolic
    link on the way: a linked ``logs/`` pointing elsewhere holds nothing of the run's); else None."""
    p = Path(root)
    parts = rel.split("/")
    try:
        for part in parts[:-1]:
            p = p / part
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                return None
        st = os.lstat(p / parts[-1])
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def matches(root: Path, rel: str, entry: dict) -> bool:
    """True when ``root/rel`` is a regular file (reached through real folders) still holding what the
    manifest ``entry`` recorded: same size; same inode and modification time, or else the same SHA-256.
    A legacy entry (no SHA-256: a run without manifest) matches any regular file there."""
    path = Path(root) / rel
    st = entry_stat(root, rel)
    if st is None or (entry.get("sha256") is not None and st.st_size != entry.get("size")):
        return False
    if entry.get("sha256") is None:
        return True
    if st.st_ino == entry.get("ino") and st.st_mtime_ns == entry.get("mtime_ns"):
        return True
    try:
        return sha256_file(path) == entry.get("sha256")
    except OSError:
        return False


# Derived data edgetl alone reads (the photo cache): an entry there whose content changed is damaged, not
# edited, and is replaced (decoded again) like a missing one; anywhere else a changed file is the user's.
DERIVED = ("cache/",)


def ours(root: Path, rel: str, entry: dict) -> bool:
    """True when ``root/rel`` is still edgetl's: unchanged since written, or damaged derived data."""
    if matches(root, rel, entry):
        return True
    return rel.startswith(DERIVED) and entry_stat(root, rel) is not None


def compute_manifest(root: Path, previous: dict | None = None) -> dict:
    """The manifest of a folder that holds only what edgetl wrote (a staged run): every regular file.
    Hashes of files unchanged since ``previous`` (same inode, size, time) are reused."""
    out = {}
    for rel, st in walk(root):
        if not stat.S_ISREG(st.st_mode):
            continue
        old = (previous or {}).get(rel)
        if old and old.get("ino") == st.st_ino and old.get("size") == st.st_size \
                and old.get("mtime_ns") == st.st_mtime_ns and old.get("sha256"):
            out[rel] = _entry(st, old["sha256"])
        else:
            out[rel] = _entry(st, sha256_file(Path(root) / rel))
    return out


def manifest(run) -> dict:
    """What edgetl wrote in ``run``: the marker's manifest, or for a run without one (edgetl 0.1, first
    marker format) the exact names those versions wrote, as they are now. {} for a folder not edgetl's."""
    run = Path(run)
    doc = read_marker(run)
    if doc is not None and isinstance(doc.get("files"), dict):
        return {k: v for k, v in doc["files"].items() if isinstance(k, str) and isinstance(v, dict)}
    if doc is None and not is_legacy_run(run):
        return {}
    out = {}
    for rel in sorted(LEGACY_FILES):
        st = entry_stat(run, rel)
        if st is not None:
            out[rel] = {"size": st.st_size, "sha256": None, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    return out


def write_marker(run: Path, status: str, files: dict | None = None, **extra):
    """The marker of ``run``. ``files``: its manifest (None: keep the one it has, if any)."""
    run = Path(run)
    old = read_marker(run) or {}
    doc = {"format": MARKER_FORMAT, "format_version": MARKER_VERSION, "edgetl_version": __version__,
           "status": status, "updated": _now(), "run_id": old.get("run_id") or uuid.uuid4().hex}
    for k in ("scratch", "replaces", "legacy"):
        if k in old:
            doc[k] = old[k]
    doc.update(extra)
    if files is None and isinstance(old.get("files"), dict):
        files = old["files"]
    if files is not None:
        doc["files"] = files
    write_json(run / MARKER, doc)


def user_entries(run) -> list:
    """Entries of a run folder (at any depth) that are not edgetl's: not in the manifest, or a manifest
    entry whose content changed since edgetl wrote it. Sorted relative paths."""
    run = Path(run)
    mf = manifest(run)
    out = []
    for rel, st in walk(run):
        e = mf.get(rel)
        if e is None or not ours(run, rel, e):
            out.append(rel)
    return out


def forget(run: Path, rels):
    """Drop ``rels`` from the run's manifest (after `clean` deleted them)."""
    doc = read_marker(run)
    if doc is None or not isinstance(doc.get("files"), dict):
        return
    files = {k: v for k, v in doc["files"].items() if k not in set(rels)}
    write_marker(run, doc.get("status", "complete"), files)


# ------------------------------------------------------------------ where a run may go


def check_data_relation(out, data_dir):
    """Refuse a run folder that is the data folder, inside it, or above it: as written and as resolved
    (a symbolic link inside the data folder pointing elsewhere would still put the run's files there)."""
    outs = {literal(out), resolved(out)}
    datas = {literal(data_dir), resolved(data_dir)}
    for o in outs:
        for d in datas:
            if o == d:
                raise EdgetlError(f"--out {out} is the data folder itself",
                                  hint="write the run somewhere else, e.g. --out runs/NAME (the default)")
            if d in o.parents:
                raise EdgetlError(f"--out {out} is inside the data folder {data_dir} (it would be read as a class)",
                                  hint="write the run outside the data folder, e.g. --out runs/NAME (the default)")
            if o in d.parents:
                raise EdgetlError(f"--out {out} contains the data folder {data_dir}",
                                  hint="write the run beside the data, not above it, e.g. --out runs/NAME")


def _check_replaceable(shown, real: Path):
    """A run folder is replaced by renaming it: a mount point (or the root) cannot be."""
    if real.exists() and (os.path.ismount(real) or real.parent == real):
        raise EdgetlError(f"--out {shown} is a mount point; edgetl replaces a run by renaming its folder, "
                          "which a mount point does not allow",
                          hint=f"write the run in a folder inside it, e.g. --out {Path(shown) / 'run'}")


def check_new(out, force: bool, data_dir=None) -> Path:
    """Raise unless ``out`` can receive a new run: absent, empty, or (with --force) an edgetl run.
    Call with the run's lock held. Nothing of the old run is touched here; it is replaced only when the
    new one is complete."""
    shown = Path(out)
    if data_dir is not None:
        check_data_relation(shown, data_dir)
    if shown.is_symlink() and not shown.exists():
        raise EdgetlError(f"{shown} is a broken symbolic link", hint="remove it or choose another --out")
    real = resolved(shown)
    recover(real)
    if real.exists() and not real.is_dir():
        raise EdgetlError(f"{shown} exists and is a file", hint="choose another --out folder")
    _check_replaceable(shown, real)
    if real.is_dir() and any(real.iterdir()):
        if not is_any_run(real):
            raise EdgetlError(f"{shown} is not empty and is not an edgetl run folder (no {MARKER}); "
                              "refusing to overwrite it", hint="choose another --out folder")
        if not force:
            raise EdgetlError(f"run folder {shown} already exists",
                              hint="pass --force to replace it (only once the new run is complete), "
                                   "or choose another --out")
    return shown


def check_existing(run) -> Path:
    """Raise unless ``run`` is an edgetl run folder (for finetune, quantize, clean). Call with the lock
    held."""
    shown = Path(run)
    real = resolved(shown)
    recover(real)
    if not real.is_dir():
        raise EdgetlError(f"run folder not found: {shown}", hint="pass a run folder made by `edgetl build` or `edgetl train`")
    if not is_any_run(real):
        raise EdgetlError(f"{shown} is not an edgetl run folder (no {MARKER})",
                          hint="pass a run folder made by `edgetl build` or `edgetl train`")
    return shown


# ------------------------------------------------------------------ one command per run


def lock_path(out) -> Path:
    real = resolved(out)
    return real.parent / f".{real.name}.{LOCK}"


class RunLock:
    """An exclusive lock on a run folder, held for a whole command (flock on a file beside the run, so
    it survives the run folder being swapped). A second command fails at once, naming the holder. The
    path is resolved first (a run reached through a symbolic link is the same run), and the lock file is
    opened without following a link and used only if it is a plain file with one name: a link or a hard
    link to a file of the user's planted there is refused, never written."""

    def __init__(self, out):
        self.shown = Path(out)
        self.out = resolved(out)
        self.path = lock_path(self.out)
        self.fd = None
        self.made_parent = None

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
            | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                raise self._foreign("a symbolic link or not a file") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise self._foreign(files_mod.kind(st.st_mode) if not stat.S_ISREG(st.st_mode)
                                else f"a file with {st.st_nlink} names (a hard link)")
        return fd

    def _foreign(self, what: str) -> EdgetlError:
        return EdgetlError(f"{self.path} (the lock file of run {self.shown}) is {what}, not edgetl's; "
                           "refusing to use it", hint=f"remove {self.path} (it is not needed), then run again")

    def acquire(self):
        import fcntl

        if not self.out.parent.exists():
            self.out.parent.mkdir(parents=True)
            self.made_parent = self.out.parent
        for _ in range(20):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                holder = self._holder(fd)
                os.close(fd)
                raise EdgetlError(f"run folder {self.shown} is in use by another edgetl command ({holder})",
                                  hint="wait for it to finish (or stop it), then run again; or choose another "
                                       "--out") from None
            # the holder may have removed the file between our open and our lock: lock the live file
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                cmd = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "edgetl"
                os.write(fd, json.dumps({"pid": os.getpid(), "command": cmd[:300]}).encode())
                return self
            os.close(fd)
        raise EdgetlError(f"could not lock {self.shown}", hint="another edgetl command keeps starting there; try again")

    @staticmethod
    def _holder(fd) -> str:
        try:
            os.lseek(fd, 0, 0)
            doc = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
            return f"pid {doc.get('pid')}: {doc.get('command')}"
        except (OSError, ValueError, AttributeError):
            return "pid unknown"

    def release(self):
        if self.fd is not None:
            try:
                if os.fstat(self.fd).st_ino == os.lstat(self.path).st_ino:
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


# ------------------------------------------------------------------ staged writes and the commit


def _fault(step: str):
    """Fault injection (tests only): EDGETL_FAULT=commit:N kills this process at the N-th commit step."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, _, n = spec.partition(":")
    if kind != "commit":
        return
    _fault.count = getattr(_fault, "count", 0) + 1
    if str(_fault.count) == n:
        import signal

        sys.stderr.write(f"[fault injection: SIGKILL at commit step {n} ({step})]\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _siblings(out: Path, kind: str) -> list:
    if not out.parent.is_dir():
        return []
    prefix = f".{out.name}.{kind}-"
    found = []
    for name in os.listdir(out.parent):
        p = out.parent / name
        if name.startswith(prefix) and p.is_dir() and not p.is_symlink():
            found.append(p)
    return sorted(found)


def _free_name(root: Path, rel: str) -> str:
    """``rel``, or ``rel`` with ``.yours`` (then ``.yours-2`` ...) added when ``root`` already has that
    path or a file where one of its folders should be."""
    def taken(r: str) -> bool:
        p = root
        parts = r.split("/")
        for i, part in enumerate(parts):
            p = p / part
            if i < len(parts) - 1:
                if os.path.lexists(p) and not (p.is_dir() and not p.is_symlink()):
                    return True
            elif os.path.lexists(p):
                return True
        return False

    if not taken(rel):
        return rel
    for n in range(1, 1000):
        cand = f"{rel}.yours" if n == 1 else f"{rel}.yours-{n}"
        if not taken(cand):
            return cand
    raise EdgetlError(f"cannot find a free name for {root / rel}", hint="tidy the run folder")


def _move_no_clobber(src: Path, dst: Path):
    """Move ``src`` to ``dst`` (same filesystem) without ever replacing an existing ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        # no hard links here (or a special file that cannot have one): rename, after checking it is free
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _inodes(root: Path) -> set:
    """(device, inode) of every entry under ``root`` that is not a folder."""
    return {(st.st_dev, st.st_ino) for _, st in walk(root)} if Path(root).is_dir() else set()


def dissolve(folder: Path, run: Path) -> list:
    """Empty ``folder`` (a staged copy or a replaced run beside ``run``) by the manifest rules, and
    remove it: its manifest entries (content unchanged) are deleted, entries that ``run`` holds too (the
    same inode: the links made at commit) are unlinked, anything else is the user's and is moved into
    ``run`` (under a free name, never over a file). A staged folder with no manifest yet holds only what
    edgetl wrote (or links of the run's files) and is emptied. Returns the user's entries moved."""
    folder, run = Path(folder), Path(run)
    doc = read_marker(folder)
    if doc is None:
        if not is_legacy_run(folder):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            return []  # not edgetl's: never touched
        write_marker(folder, "replaced", manifest(folder), legacy=True)  # recoverable if interrupted
        doc = read_marker(folder)
    # the run this folder was replaced by (after the exchange) keeps the user's empty folders too
    replaced_by_run = (read_marker(run) or {}).get("replaces") == doc.get("run_id") or bool(doc.get("legacy"))
    empty = [rel for rel in _dirs(folder) if not any(os.scandir(folder / rel))] if replaced_by_run else []
    scratch = bool(doc.get("scratch")) and not isinstance(doc.get("files"), dict)
    mf = None if scratch else manifest(folder)
    in_run = _inodes(run)
    moved = []
    for rel, st in list(walk(folder)):
        p = folder / rel
        e = None if mf is None else mf.get(rel)
        mine = mf is None or (e is not None and ours(folder, rel, e))
        _fault(f"dissolving {rel}")
        if mine or (st.st_dev, st.st_ino) in in_run:
            p.unlink()  # edgetl's, or a file the run holds too (carried over at commit)
            continue
        if not run.is_dir():
            continue
        dest = _free_name(run, rel)
        try:
            _move_no_clobber(p, run / dest)
            moved.append(dest)
        except OSError:
            pass  # left where it is; the folder stays, with a warning below
    for rel in empty:
        if run.is_dir() and not (run / rel).is_dir():
            try:
                (run / _free_name(run, rel)).mkdir(parents=True)  # an empty folder of the user's
            except OSError:
                pass
    for rel in _dirs(folder):
        try:
            (folder / rel).rmdir()
        except OSError:
            pass
    (folder / MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        from toolchain import ui

        ui.warn(f"kept {folder}: it holds files edgetl could not put back into {run} (nothing was deleted)")
    return moved


def recover(out):
    """Finish what a killed command left beside the run ``out``. Call with the run's lock held. A run
    moved aside by the two-rename swap goes back in place; staged folders and replaced runs are
    dissolved into the run (see ``dissolve``): only what edgetl wrote is ever deleted."""
    out = resolved(out)
    olds = [p for p in _siblings(out, OLD) if is_any_run(p)]
    if olds and not os.path.lexists(out):
        os.rename(olds[-1], out)  # the previous good run, back where it was
        olds = olds[:-1]
    moved = []
    for p in olds + _siblings(out, NEW):
        moved += dissolve(p, out)
    if moved:
        from toolchain import ui

        ui.info(f"an interrupted command was completed in {out}; {len(moved)} file(s) of yours put back: "
                f"{', '.join(moved[:5])}{' ...' if len(moved) > 5 else ''}")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when unavailable."""
    if not sys.platform.startswith("linux") or os.environ.get("EDGETL_NO_EXCHANGE"):
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


def _link_manifest(src: Path, dst: Path, mf: dict):
    """Hard links (copies where links are impossible) in ``dst`` of the files at ``src``'s manifest paths
    (regular files reached through real folders). Nothing edgetl writes ever modifies a file in place, so
    the link is safe. A file there that the user changed is linked too: it is the run's input as it is now
    (a split.json or report.json edited by hand is read, never ignored); if the command replaces it, the
    user's version is carried over beside it (``.yours``)."""
    for rel in mf:
        s, t = src / rel, dst / rel
        if entry_stat(src, rel) is None:
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(s, t, follow_symlinks=False)
        except OSError:
            import shutil

            shutil.copy2(s, t)


class Staged:
    """Write a run in a sibling folder and put it in place only at ``commit()`` (see the module
    docstring for the commit and its recovery).

    ``fresh=True``: the staged folder starts empty (build, train). ``fresh=False``: it starts as hard
    links of the current run's manifest entries (finetune, quantize). Used as a context manager, an
    exception (or a kill) before ``commit`` leaves the current run as it was and the staged folder is
    dissolved (by this command, or by the next)."""

    def __init__(self, out, fresh: bool):
        self.shown = Path(out)
        self.out = resolved(out)
        self.fresh = fresh
        self.path = self.out.parent / f".{self.out.name}.{NEW}-{os.getpid()}"
        self.committed = False
        self.previous = {}

    def __enter__(self) -> "Staged":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            dissolve(self.path, self.out)
        self.path.mkdir()
        old = read_marker(self.out) if self.out.is_dir() else None
        write_marker(self.path, "in-progress", scratch=True, replaces=(old or {}).get("run_id"))
        if not self.fresh and self.out.is_dir():
            self.previous = manifest(self.out)
            _link_manifest(self.out, self.path, self.previous)
        return self

    def _carry_user_entries(self) -> list:
        """Hard links in the staged folder of the user's entries of the old run (never moved: the old
        run keeps them until the new one, holding them too, is in place), and the user's folders."""
        carried = []
        for rel in user_entries(self.out):
            try:
                a, b = os.lstat(self.out / rel), os.lstat(self.path / rel)
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                    continue  # the staged run holds this very file already (an input left as it was)
            except OSError:
                pass
            dest = _free_name(self.path, rel)
            (self.path / dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.out / rel, self.path / dest, follow_symlinks=False)
            except OSError:
                continue  # moved across after the exchange instead (dissolve)
            carried.append((rel, dest))
            _fault(f"linked {rel}")
        for rel in _dirs(self.out):
            if not (self.path / rel).exists():
                try:
                    (self.path / _free_name(self.path, rel)).mkdir(parents=True)
                except OSError:
                    pass
        return carried

    def commit(self, status: str = "complete"):
        """Put the staged run in place of the old one (if any); the user's files of the old folder are in
        the new run afterwards, at the same paths (``.yours`` added where the new run uses the name)."""
        from toolchain import ui

        files = compute_manifest(self.path, self.previous)
        write_marker(self.path, status, files, scratch=False)
        _fault("manifest written")
        out = self.out
        if not os.path.lexists(out):
            os.rename(self.path, out)
            self.committed = True
            return self.shown
        carried = self._carry_user_entries()
        _fault("user files linked")
        if _exchange(self.path, out):
            self.committed = True
            _fault("exchanged")
            moved = dissolve(self.path, out)  # self.path now holds the old run
        else:
            old = out.parent / f".{out.name}.{OLD}-{os.getpid()}"
            os.rename(out, old)
            _fault("old run moved aside")
            os.rename(self.path, out)
            self.committed = True
            _fault("new run in place")
            moved = dissolve(old, out)
        _fault("old run dissolved")
        kept = [d for _, d in carried] + moved
        if kept:
            ui.info(f"kept {len(kept)} file(s) of yours that were in {self.shown}: {', '.join(kept[:5])}"
                    f"{' ...' if len(kept) > 5 else ''}")
        renamed = [(r, d) for r, d in carried if r != d]
        for r, d in renamed:
            ui.warn(f"your {r} is now {d} in {self.shown} (the new run writes a file of that name)")
        return self.shown

    def abort(self):
        if not self.committed and self.path.exists():
            dissolve(self.path, self.out)

    def __exit__(self, exc_type, exc, tb):
        self.abort()
        if exc is not None and not self.committed:
            _unstage(exc, self.path, self.shown)


def _unstage(exc: BaseException, staged: Path, shown: Path):
    """Error messages name the run, not the staged folder the command was writing."""
    a, b = str(staged), str(shown)
    if isinstance(exc, EdgetlError):
        exc.message = exc.message.replace(a, b)
        exc.args = (exc.message,)
        if exc.hint:
            exc.hint = exc.hint.replace(a, b)
    elif isinstance(exc, OSError) and isinstance(exc.filename, str):
        exc.filename = exc.filename.replace(a, b)
