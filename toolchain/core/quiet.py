"""Keep TensorFlow's C++ chatter (import banners, converter dumps) out of the user's terminal, and say that
a long silenced step is still alive (a heartbeat on the user's real stderr)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HEARTBEAT_SECONDS = 10.0  # default interval; $EDGETL_HEARTBEAT_SECONDS overrides it (0 turns it off)


def heartbeat_interval() -> float:
    from toolchain.ui import env_seconds

    return env_seconds("EDGETL_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)


class Heartbeat:
    """A daemon thread that writes ``"<label> ... 20s"`` to file descriptor ``fd`` every ``interval``
    seconds until stopped: on a terminal redrawn in place (and erased when done), otherwise one line each
    time. Writes go straight to the descriptor, so they reach the user even while fds 1 and 2 are
    redirected (``fd`` is a duplicate of the original stderr taken before)."""

    def __init__(self, label: str, fd: int, interval: float | None = None):
        self.label = label
        self.fd = fd
        self.interval = heartbeat_interval() if interval is None else interval
        try:
            self.tty = os.isatty(fd)
        except OSError:
            self.tty = False
        self._stop = threading.Event()
        self._thread = None
        self._drawn = False
        self.beats = 0

    def _write(self, text: str):
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:  # a closed pipe must not break the conversion
            pass

    def _run(self):
        from toolchain.ui import duration

        t0 = time.perf_counter()
        while not self._stop.wait(self.interval):
            self.beats += 1
            msg = f"{self.label} ... {duration(time.perf_counter() - t0)}"
            if self.tty:
                self._write("\r" + msg + "\033[K")
                self._drawn = True
            else:
                self._write(msg + "\n")

    def start(self):
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="edgetl-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._drawn:
                self._write("\r\033[K")


@contextlib.contextmanager
def silenced(log_path: Path | None = None, replay_on_error: bool = True, heartbeat: str | None = None):
    """Redirect file descriptors 1 and 2 (C++ writes there directly) to ``log_path`` or a temp file.
    If the block raises and ``replay_on_error``, what was captured is written to stderr.
    ``heartbeat``: a label; while the block runs, ``"<label> ... <elapsed>"`` is written to the real
    stderr every ``$EDGETL_HEARTBEAT_SECONDS`` (default 10) seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    target = tempfile.TemporaryFile()  # the log is written whole at the end, never appended to in place
    saved = os.dup(1), os.dup(2)
    beat = Heartbeat(heartbeat, saved[1]) if heartbeat else None
    failed = False
    try:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        if beat is not None:
            beat.start()
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if beat is not None:
            beat.stop()  # before its descriptor is closed
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        try:
            if log_path is not None:
                _save_log(Path(log_path), target)
            if failed and replay_on_error and log_path is None:
                target.seek(0)
                sys.stderr.write(target.read().decode("utf-8", "replace")[-4000:])
        finally:
            target.close()


_written_logs: set = set()  # logs this process wrote: a later step of the same command adds to them


def _save_log(path: Path, captured):
    """Write ``path`` atomically (a new file renamed into place): what this process logged there
    before, then ``captured``. A file that was there before this process (in a staged run, a hard link
    of the previous run's log) is replaced, never modified."""
    from toolchain.rundir.runfolder import write_bytes

    captured.seek(0)
    data = captured.read()
    key = str(path.resolve()) if path.parent.exists() else str(path)
    if key in _written_logs and path.is_file():
        data = path.read_bytes() + data
    write_bytes(path, data)
    _written_logs.add(str(path.resolve()))
