"""Reading files edgetl did not write safely: regular files only, never more than a size cap.

Everything edgetl reads that a user (or an attacker) can put in its way goes through here: a model, a
label file, a run's JSON files, the device-choice cache. A named pipe, a socket, a device (a link to
``/dev/zero`` or ``/dev/urandom``) or a folder is refused from ``stat`` before anything is opened, and
checked again on the open descriptor (the entry may have been swapped in between); the open never blocks
(``O_NONBLOCK``) and the read stops one byte past the cap, so neither a hang nor a runaway allocation can
happen.
"""

from __future__ import annotations

import json
import os
import stat

from .errors import EdgetlError

# Caps (documented in the README's guarantees): a model file, a JSON or text file of a run.
MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 16 * 1024 * 1024


def kind(mode: int) -> str:
    """Plain words for the type of a file system entry (from ``os.stat().st_mode``)."""
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return word
    return "special file"


class FileProblem(EdgetlError):
    """A file that cannot be read as asked: missing, not a regular file, too large, unreadable."""

    def __init__(self, path, reason: str, hint: str | None = None, missing: bool = False):
        self.path = str(path)
        self.reason = reason
        self.missing = missing
        super().__init__(f"{self.path}: {reason}", hint=hint or "pass a regular file")


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n} bytes"


def read_bytes(path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (symbolic links followed), at most ``limit`` of them;
    FileProblem otherwise, naming the file and the reason."""
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileProblem(name, f"the {what} is a dangling symbolic link") from None
        raise FileProblem(name, f"{what} not found", hint="check the path", missing=True) from None
    except OSError as e:
        raise FileProblem(name, f"cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(name, f"the {what} is not a regular file ({kind(st.st_mode)})")
    if st.st_size > limit:
        raise FileProblem(name, f"the {what} is too large ({_mb(st.st_size)}; the limit is {_mb(limit)})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:  # ENXIO: a socket took its place; EACCES: permissions
        raise FileProblem(name, f"cannot read the {what} ({e.strerror or e})") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise FileProblem(name, f"the {what} is not a regular file ({kind(fst.st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
    except OSError as e:
        raise FileProblem(name, f"cannot read the {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if total > limit:  # it grew while being read
        raise FileProblem(name, f"the {what} is too large (over {_mb(limit)})")
    return b"".join(chunks)


def read_text(path, limit: int = MAX_TEXT_BYTES, what: str = "file") -> str:
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FileProblem(str(path), f"the {what} is not UTF-8 text (byte {e.start})") from None


def read_json(path, limit: int = MAX_JSON_BYTES, what: str = "file"):
    """Parsed JSON of a regular file (any JSON value; the caller checks its shape). FileProblem when it
    cannot be read; ValueError (json.JSONDecodeError or RecursionError wrapped) when it is not JSON."""
    text = read_text(path, limit, what)
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
