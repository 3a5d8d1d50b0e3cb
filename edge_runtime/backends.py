"""Interpreter backends, in order of preference: ai_edge_litert, tflite_runtime, tensorflow.lite.

ai_edge_litert is the maintained LiteRT package; tflite_runtime is the older device package (2.14 is
the last release, built against NumPy 1: under NumPy 2 it crashes, so it is refused with a clear
reason); tensorflow.lite is the last resort on a laptop that has TensorFlow and nothing else. All three
apply the XNNPACK delegate to float and quantized models by default and honour ``num_threads``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from importlib import metadata as importlib_metadata

from .errors import EdgetlError

ORDER = ("ai_edge_litert", "tflite_runtime", "tensorflow")
INSTALL_HINT = "pip install ai-edge-litert   (older devices: pip install tflite-runtime 'numpy<2')"


def install_hint() -> str:
    """INSTALL_HINT, except on 32-bit ARM, where ai-edge-litert has no wheel (and tflite-runtime none for 3.12+)."""
    import platform
    import sys

    if platform.machine() in ("armv7l", "armv8l", "armv6l"):
        if sys.version_info >= (3, 12):
            return ("no TFLite interpreter has a 32-bit ARM wheel for Python 3.12+: use Python 3.9-3.11 "
                    "(pip install tflite-runtime 'numpy<2') or a 64-bit OS (ai-edge-litert)")
        return "pip install tflite-runtime 'numpy<2'   (ai-edge-litert has no 32-bit ARM wheel)"
    return INSTALL_HINT


@dataclass
class Backend:
    name: str
    version: str
    interpreter_class: type
    op_resolver_type: object | None  # the OpResolverType enum, to open a model without delegates

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _dist_version(*names: str) -> str:
    for n in names:
        try:
            return importlib_metadata.version(n)
        except importlib_metadata.PackageNotFoundError:
            continue
    return "unknown"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def _load(name: str) -> Backend:
    if name == "ai_edge_litert":
        from ai_edge_litert import interpreter as mod

        return Backend(name, _dist_version("ai-edge-litert"), mod.Interpreter, getattr(mod, "OpResolverType", None))
    if name == "tflite_runtime":
        version = _dist_version("tflite-runtime", "tflite_runtime")
        if _numpy_major() >= 2 and _older_than(version, (2, 15)):
            import numpy

            raise EdgetlError(
                f"tflite-runtime {version} was built for NumPy 1.x and crashes under NumPy {numpy.__version__}",
                hint="pip install 'numpy<2' in this environment, or use ai-edge-litert (pip install ai-edge-litert)",
            )
        from tflite_runtime import interpreter as mod

        return Backend(name, version, mod.Interpreter, getattr(mod, "OpResolverType", None))
    if name == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # last resort only; edge_runtime never needs it otherwise

        mod = tf.lite
        resolver = getattr(getattr(mod, "experimental", None), "OpResolverType", None)
        return Backend(name, _dist_version("tensorflow", "tensorflow-cpu"), mod.Interpreter, resolver)
    raise EdgetlError(f"unknown backend {name!r}", hint=f"use one of: {', '.join(ORDER)}")


def _older_than(version: str, ref: tuple) -> bool:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) < ref


def resolve(name: str | None = None) -> Backend:
    """The backend to use: ``name`` if given (error if unusable), else the first usable one."""
    if name:
        if name not in ORDER:
            raise EdgetlError(f"unknown backend {name!r}", hint=f"use one of: {', '.join(ORDER)}")
        if not _installed(name):
            pkg = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime 'numpy<2'",
                   "tensorflow": "tensorflow"}[name]
            raise EdgetlError(f"backend {name} is not installed", hint=f"pip install {pkg}")
        return _load(name)
    reasons = []
    for candidate in ORDER:
        if not _installed(candidate):
            continue
        try:
            return _load(candidate)
        except EdgetlError as e:
            reasons.append(e)
        except ImportError as e:
            reasons.append(EdgetlError(f"{candidate} failed to import: {e}"))
    if reasons:
        first = reasons[0]
        raise EdgetlError(f"no usable TFLite interpreter: {first.message}", hint=first.hint or install_hint())
    raise EdgetlError("no TFLite interpreter is installed", hint=install_hint())


def make_interpreter(backend: Backend, model_content: bytes, num_threads: int | None = None,
                     delegates: bool = True):
    """Create an interpreter (not yet allocated). ``delegates=False`` opens the model without XNNPACK,
    which is how its original operators can be listed."""
    kwargs = {"model_content": model_content}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    if not delegates and backend.op_resolver_type is not None:
        kwargs["experimental_op_resolver_type"] = backend.op_resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        return backend.interpreter_class(**kwargs)


# More interpreter threads than this is a typing mistake, not a machine (the interpreter takes a C int;
# 2147483648 overflowed it with a traceback).
MAX_THREADS = 1024


def check_threads(n, flag: str = "--threads") -> int:
    """``n`` as a thread count of 1..MAX_THREADS; EdgetlError naming ``flag`` otherwise."""
    try:
        ok = not isinstance(n, bool) and int(n) == n and 1 <= int(n) <= MAX_THREADS
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise EdgetlError(f"{flag} {n}: must be a whole number from 1 to {MAX_THREADS}",
                          hint=f"e.g. {flag} 2, or leave it out to use every core")
    return int(n)


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
