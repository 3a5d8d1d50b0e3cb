"""Terminal output: tables, progress bars, messages. Plain text, no dependencies, stderr for chatter."""

from __future__ import annotations

import math
import os
import reprlib
import shutil
import sys
import time


def info(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def table(rows, headers, align=None) -> str:
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    align = align or ["<"] + [">"] * (len(headers) - 1)

    def fmt(r):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


PLAIN_FRACTION = 0.10  # not a terminal: a line every 10% of the work ...
PLAIN_SECONDS = 10.0  # ... and at least this many seconds apart (whichever is rarer), plus the final line


def env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable ``name`` (``default`` if unset or bad)."""
    try:
        v = float(os.environ.get(name, default))
    except ValueError:
        return default
    return v if math.isfinite(v) and v >= 0 else default


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """A progress bar on stderr with the elapsed time, the rate and an ETA.

    On a terminal it is redrawn in place (10 times a second at most). Otherwise (a pipe, a log file, CI) it
    prints plain lines: one each time another 10% is done, at least ``$EDGETL_PROGRESS_SECONDS`` (default
    10) seconds after the previous line, whichever is rarer, and a final line when it is closed."""

    def __init__(self, total: int, desc: str, unit: str = "", stream=None, min_interval: float | None = None):
        self.total = max(int(total or 0), 0)
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.min_interval = (env_seconds("EDGETL_PROGRESS_SECONDS", PLAIN_SECONDS) if min_interval is None
                             else min_interval)
        self._last_draw = 0.0
        self._last_line = (self.start, 0)  # (time, n) of the last plain line
        self._closed = False
        self.postfix = ""

    def update(self, k: int = 1, postfix: str | None = None):
        self.n += k
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw > 0.1 or self.n >= self.total:
                self._draw(now)
        elif self.total and self.n < self.total:  # the final line is close()'s
            t, n = self._last_line
            if (self.n - n) / self.total >= PLAIN_FRACTION and now - t >= self.min_interval:
                self._last_line = (now, self.n)
                self._line(now)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the mean rate so far (None before the first step or when the total is unknown)."""
        now = time.perf_counter() if now is None else now
        el = now - self.start
        if not self.total or self.n <= 0 or el <= 0:
            return None
        return max(self.total - self.n, 0) * el / self.n

    def _text(self, now):
        el = now - self.start
        frac = self.n / self.total if self.total else 1.0
        width = 24
        filled = int(width * min(frac, 1.0))
        bar = "#" * filled + "." * (width - filled)
        rate = self.n / el if el > 0 else 0.0
        if self.n < self.total:
            eta = self.eta(now)
            left = f"  ETA {duration(eta)}" if eta is not None else "  ETA ?"
        else:
            left = ""
        post = f"  {self.postfix}" if self.postfix else ""
        return f"{self.desc:<22} [{bar}] {self.n}/{self.total}{self.unit}  {el:.1f}s  {rate:.1f}/s{left}{post}"

    def _draw(self, now, full: bool = False):
        """Redraw in place; cut to the terminal's width (a wrapped line cannot be redrawn) unless ``full``."""
        self._last_draw = now
        text = self._text(now)
        if not full:
            text = text[: max(20, self._columns() - 1)]
        self.stream.write("\r" + text + "\033[K")
        self.stream.flush()

    def _columns(self) -> int:
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            cols = 0
        return cols or shutil.get_terminal_size((160, 24)).columns  # 0: a terminal that does not say

    def _line(self, now):
        self.stream.write(self._text(now) + "\n")
        self.stream.flush()

    def close(self):
        now = time.perf_counter()
        if self.tty:
            if not self._closed:
                self._closed = True
                self._draw(now, full=True)
                self.stream.write("\n")
                self.stream.flush()
        elif not self._closed:
            self._closed = True
            self._line(now)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 40, 40, 4, 4, 2


def shown(value) -> str:
    """A short, printable picture of any value (deep or huge values are cut: ``[[[...]]]``, ``'aaa...'``)."""
    try:
        return _REPR.repr(value)
    except (RecursionError, ValueError):  # pragma: no cover - reprlib bounds depth and size already
        return f"a {type(value).__name__}"
