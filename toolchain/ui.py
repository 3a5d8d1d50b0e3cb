"""Terminal output: tables, progress bars, messages. Plain text, no dependencies, stderr for chatter."""

from __future__ import annotations

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


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a few plain lines otherwise."""

    def __init__(self, total: int, desc: str, unit: str = "", stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_pct = -1
        self.postfix = ""

    def update(self, k: int = 1, postfix: str | None = None):
        self.n += k
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw > 0.1 or self.n >= self.total:
                self._draw(now)
        elif self.n >= self.total and self._last_pct < 100:  # not a terminal: one line when done
            self._last_pct = 100
            self._line(now)

    def _text(self, now):
        el = now - self.start
        frac = self.n / self.total if self.total else 1.0
        width = 24
        filled = int(width * min(frac, 1.0))
        bar = "#" * filled + "." * (width - filled)
        rate = self.n / el if el > 0 else 0.0
        post = f"  {self.postfix}" if self.postfix else ""
        return f"{self.desc:<22} [{bar}] {self.n}/{self.total}{self.unit} {el:5.1f}s {rate:6.1f}/s{post}"

    def _draw(self, now):
        self._last_draw = now
        self.stream.write("\r" + self._text(now)[:160] + "\033[K")
        self.stream.flush()

    def _line(self, now):
        self.stream.write(self._text(now) + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
        elif self._last_pct < 100:
            self._last_pct = 100
            self._line(time.perf_counter())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
