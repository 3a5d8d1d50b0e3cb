"""Keep TensorFlow's C++ chatter (import banners, converter dumps) out of the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def silenced(log_path: Path | None = None, replay_on_error: bool = True):
    """Redirect file descriptors 1 and 2 (C++ writes there directly) to ``log_path`` or a temp file.
    If the block raises and ``replay_on_error``, what was captured is written to stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        target = open(log_path, "ab")
    else:
        target = tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    failed = False
    try:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if failed and replay_on_error and log_path is None:
            target.seek(0)
            sys.stderr.write(target.read().decode("utf-8", "replace")[-4000:])
        target.close()
