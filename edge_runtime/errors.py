"""Errors that the CLI turns into one line, a hint and an exit code (no traceback)."""

from __future__ import annotations


class EdgetlError(Exception):
    """A user-facing error: bad usage or bad input (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class GateFailed(EdgetlError):
    """A quality gate (accuracy parity) failed: exit code 1."""

    exit_code = 1


class ImageError(EdgetlError):
    """One image could not be read. Carries the path and the reason separately."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}", hint="check or remove the file")
