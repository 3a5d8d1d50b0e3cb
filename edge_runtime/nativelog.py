"""Hold back what native libraries print on stderr (libtiff, FFmpeg, OpenCV's ``[ WARN ]`` lines, the
interpreter's banner), so that it never comes before, or instead of, edgetl's own one-line error.

``held()`` points file descriptor 2 at a temporary file for the duration of a block and gives back what
was written there; a caller shows it only where it helps (e.g. appended to the reason a file failed:
"LZWDecode: Not enough data at scanline 0"). File descriptor 2 is process-wide: use it only where one
thread works (the CLI's predict and camera loops), never around code other threads print from.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x557a8ce795c0] moov atom not found" -> "moov atom not found";
# "[ WARN:0@0.020] global cap.cpp:175 open VIDEOIO(...): ..." -> the text after the source location
_PREFIXES = re.compile(r"^\[[^\]]*@ ?0x[0-9a-f]+\]\s*|^\[\s*(WARN|ERROR|INFO)[^\]]*\]\s*(global\s+)?(\S+:\d+\s+)?",
                       re.IGNORECASE)
MAX_HELD = 1 << 20  # a long camera run keeps at most about this much (see Held.trim)


class Held:
    def __init__(self, buf):
        self._buf = buf
        self.text = ""

    def trim(self):
        """Forget what was held so far once it exceeds MAX_HELD (called between frames of a long run)."""
        if self._buf is None:
            return
        try:
            if os.fstat(self._buf.fileno()).st_size > MAX_HELD:
                self._buf.truncate(0)
                os.lseek(self._buf.fileno(), 0, os.SEEK_SET)
        except (OSError, ValueError):
            pass

    def read(self) -> str:
        if self._buf is None:
            return self.text
        try:
            self._buf.seek(0)
            self.text = self._buf.read()[-MAX_HELD:].decode("utf-8", "replace")
        except (OSError, ValueError):
            pass
        return self.text

    def lines(self) -> list:
        """The held lines, their library prefixes removed, banners and blank lines left out."""
        out = []
        for ln in self.read().splitlines():
            ln = _PREFIXES.sub("", ln.strip()).strip()
            if ln and "Created TensorFlow Lite" not in ln and ln not in out:
                out.append(ln)
        return out

    def last(self, limit: int = 160) -> str:
        """The last held line (shortened), or ""."""
        lines = self.lines()
        if not lines:
            return ""
        ln = lines[-1]
        return ln if len(ln) <= limit else ln[: limit - 3] + "..."


@contextlib.contextmanager
def held():
    """Hold back file descriptor 2 for the block; yields a Held whose ``text``/``lines()`` say what came."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded use): nothing to hold back
        yield Held(None)
        return
    buf = tempfile.TemporaryFile()
    h = Held(buf)
    try:
        os.dup2(buf.fileno(), 2)
        yield h
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        h.read()
        h._buf = None
        buf.close()
