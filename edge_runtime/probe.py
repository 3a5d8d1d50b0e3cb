"""The first load of a model the user handed edgetl, tried where a crash cannot hurt: in a child process.

A corrupt .tflite can kill the process inside the native interpreter (tflite-runtime and LiteRT check the
flatbuffer only loosely: a changed input zero point segfaults in ``allocate_tensors``, a broken vtable
offset aborts), and no Python code can catch that. So before a model is opened in this process, a child
process (a fresh Python running ``serve``) creates an interpreter for the same bytes with the same backend,
allocates its tensors and runs one inference on a zero input, under a memory limit (RLIMIT_AS: its address
space after start-up plus what this model's tensors declare, see ``budget``: a model whose operators
compute far larger tensors than it declares fails there), without core dumps, and within a time limit
(``TIMEOUT``, $EDGETL_PROBE_TIMEOUT). Its verdict:

- the child died of a signal: "the interpreter crashed on this model (signal SIGSEGV)";
- it ran past the time limit: killed, "did not finish ... within N s";
- an interpreter error (Python-level) at create or allocate time: that error, without repeating the step
  here (it may be an allocation that only the child's limit stopped);
- an error at invoke time: reported by ``Classifier`` when it runs the model (``info`` still describes it);
- success: the model is opened here.

A verdict that does not depend on chance (success, or an interpreter error) is remembered per model
SHA-256 + backend + backend version in ``probes.json`` of edgetl's cache folder (see ``cache``), so a model
is probed once per device; a crash or a timeout is tried again next time. The interpreter is deterministic
on the same bytes, so a model that loaded in the child loads here. Not covered: inputs other than zeros
(an image classifier's kernels do not branch on pixel values), re-allocation at another batch size.

One child can check many models in turn (``Prober``; the structural fuzz does), and ``session()`` keeps
one child for every check inside it; after a crash the next check starts a new child.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import cache

PROBE_VERSION = 1
CACHE_NAME = "probes.json"
CACHE_ENTRIES = 500
TIMEOUT = 120.0  # seconds for one model (start-up of the child not included); $EDGETL_PROBE_TIMEOUT
START_TIMEOUT = 300.0  # starting the child: importing the backend (TensorFlow can take 10 s or more)
# RLIMIT_AS of the child beyond its address space after start-up (see budget): twice what the model's
# data-less tensors declare (tflite_format.check_memory: the arena, plus as much again for XNNPACK's
# workspace), four times the file (the bytes themselves, XNNPACK's packed weights, the interpreter's copy)
# and a margin for the interpreter's own allocations and its threads' stacks. A MobileNetV2 1.0 at 224 px
# in float32 gets 0.9 GB; nothing a model declares can raise it past 2 x 2 GiB + 4 x 512 MB + the margin.
MARGIN_BYTES = 768 << 20


def timeout() -> float:
    text = os.environ.get("EDGETL_PROBE_TIMEOUT", "").strip()
    try:
        return max(1.0, float(text)) if text else TIMEOUT
    except ValueError:
        return TIMEOUT


def budget(model_bytes: int, declared_bytes: int) -> int:
    return 2 * int(declared_bytes) + 4 * int(model_bytes) + MARGIN_BYTES


@dataclass
class Verdict:
    ok: bool
    stage: str | None = None  # "create", "allocate" or "invoke": where the interpreter failed
    error: str | None = None  # the interpreter's error (Python level), one line
    signal: str | None = None  # the child died of this signal (SIGSEGV, SIGABRT, SIGKILL...)
    exit_code: int | None = None  # the child exited without an answer, with this code
    timeout: float | None = None  # the child was killed after this many seconds
    memory: bool = False  # the failure was the child's memory limit
    native: str = ""  # the last lines the interpreter printed on stderr
    limit: int | None = None  # the child's memory allowance (bytes beyond its start-up address space)
    skipped: str | None = None  # no check was possible (why)
    cached: bool = False

    @property
    def crashed(self) -> bool:
        return self.signal is not None or self.exit_code is not None

    @property
    def lasting(self) -> bool:
        """True when the verdict does not depend on chance and may be remembered."""
        return not (self.crashed or self.timeout or self.skipped or self.memory)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k not in ("cached", "native", "limit") and v not in (None, False)}


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# ------------------------------------------------------------------ the parent side


class Prober:
    """A child process that checks models one after another (see the module docstring). Not thread-safe."""

    def __init__(self, backend_name: str, timeout_s: float | None = None):
        self.backend_name = backend_name
        self.timeout = timeout() if timeout_s is None else float(timeout_s)
        self.proc = None
        self.backend = None  # "name version" as the child resolved it
        self._lines: queue.Queue = queue.Queue()
        self._err = None
        self._pump = None
        self.started = 0  # children started (the fuzz reports it)
        self.peak_child_rss_mb = 0.0  # the largest peak resident memory a child reported (VmHWM)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        root = str(Path(__file__).resolve().parents[1])
        code = "import sys; sys.path.insert(0, sys.argv[1]); from edge_runtime.probe import serve; serve(sys.argv[2])"
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # glibc: fill fresh and freed heap memory with a pattern and check the heap on every call, so that a
        # model which reads uninitialised or freed memory misbehaves in the child the same way every time
        # instead of only with some heap layouts (elsewhere the variable means nothing)
        env.setdefault("GLIBC_TUNABLES", "glibc.malloc.perturb=165:glibc.malloc.check=3")
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", code, root, self.backend_name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env, close_fds=True)
        self.started += 1
        lines: queue.Queue = queue.Queue()
        self._lines = lines
        out = self.proc.stdout

        def pump():
            for line in iter(out.readline, b""):
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        first = self._answer(START_TIMEOUT)
        if not isinstance(first, dict) or not first.get("ready"):
            v = first if isinstance(first, Verdict) else Verdict(False, error=str((first or {}).get("fatal")))
            self._stop()
            return v
        self.backend = first.get("backend")
        return None

    def _native(self) -> str:
        if self._err is None:
            return ""
        try:
            self._err.seek(0)
            text = self._err.read()[-4000:].decode("utf-8", "replace")
            self._err.seek(0)
            self._err.truncate()
        except (OSError, ValueError):
            return ""
        keep = [ln.strip() for ln in text.splitlines() if ln.strip() and "Created TensorFlow Lite" not in ln]
        return "\n".join(keep[-3:])

    def _answer(self, wait: float):
        """The child's next JSON line (a dict), or a Verdict when it died or ran out of time."""
        try:
            line = self._lines.get(timeout=wait)
        except queue.Empty:
            self._stop(kill=True)
            return Verdict(False, timeout=wait, native=self._native())
        if line is None:
            p, self.proc = self.proc, None
            rc = self._reap(p)
            self._close_pipes(p)
            name = signal_name(rc)
            v = Verdict(False, signal=name, exit_code=None if name else rc, native=self._native())
            return v
        try:
            return json.loads(line)
        except ValueError:
            return self._answer(wait)  # not ours (a library printed on stdout before serve redirected it)

    def _stop(self, kill: bool = False):
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if kill:
                p.kill()
            else:
                p.stdin.close()
        except OSError:
            pass
        self._reap(p, timeout=10)
        self._close_pipes(p)

    def _reap(self, p, timeout: float | None = None) -> int:
        """Wait for the child (killing it after ``timeout`` s); its exit status."""
        if hasattr(os, "wait4"):
            deadline = None if timeout is None else time.monotonic() + timeout
            while p.returncode is None:
                try:
                    pid, status, ru = os.wait4(p.pid, 0 if deadline is None else os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    deadline = None
                else:
                    time.sleep(0.005)
        elif timeout is not None:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        return p.wait()

    def _close_pipes(self, p):
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass

    def close(self):
        self._stop()
        if self._err is not None:
            self._err.close()
            self._err = None

    def probe(self, content: bytes, declared_bytes: int) -> Verdict:
        """The verdict on ``content``, whose data-less tensors declare ``declared_bytes``
        (tflite_format.check_memory): the child may allocate ``budget`` of that beyond its start-up."""
        if not sys.executable:
            return Verdict(True, skipped="no Python executable to run the check in")
        if self.proc is None:
            failed = self._start()
            if failed is not None:
                return failed
        try:
            self.proc.stdin.write(struct.pack("<QQ", len(content), int(declared_bytes)))
            self.proc.stdin.write(content)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died: its exit status says how
        ans = self._answer(self.timeout)
        if isinstance(ans, Verdict):
            return ans
        native = self._native()
        if isinstance(ans.get("peak_mb"), (int, float)):
            self.peak_child_rss_mb = max(self.peak_child_rss_mb, float(ans["peak_mb"]))
        return Verdict(bool(ans.get("ok")), stage=ans.get("stage"), error=ans.get("error"),
                       memory=bool(ans.get("memory")), native=native, limit=ans.get("limit"))


_session: Prober | None = None


@contextlib.contextmanager
def session(backend_name: str):
    """Keep one child for every check made inside (for a program that opens many models)."""
    global _session
    prev, _session = _session, Prober(backend_name)
    try:
        yield _session
    finally:
        _session.close()
        _session = prev


_memo: dict = {}


def key(content: bytes, backend) -> str:
    return f"{hashlib.sha256(content).hexdigest()}:{backend.name}:{backend.version}:{PROBE_VERSION}"


def check(content: bytes, backend, declared_bytes: int) -> Verdict:
    """The verdict on ``content`` for ``backend`` (a backends.Backend): remembered, or measured now.
    ``declared_bytes``: what its data-less tensors declare (tflite_format.check_memory)."""
    k = key(content, backend)
    if k in _memo:
        return _memo[k]
    doc = cache.read(CACHE_NAME, PROBE_VERSION, "verdicts")
    hit = doc["verdicts"].get(k)
    if isinstance(hit, dict) and isinstance(hit.get("ok"), bool):
        v = Verdict(hit["ok"], stage=hit.get("stage"), error=hit.get("error"), cached=True)
        _memo[k] = v
        return v
    if _session is not None and _session.backend_name == backend.name:
        v = _session.probe(content, declared_bytes)
    else:
        with Prober(backend.name) as p:
            v = p.probe(content, declared_bytes)
    if v.lasting:
        _memo[k] = v
        entries = doc["verdicts"]
        entries[k] = dict(v.as_dict(), at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        doc["verdicts"] = cache.keep_newest(entries, CACHE_ENTRIES, "at")
        cache.write(CACHE_NAME, doc)
    return v


# ------------------------------------------------------------------ the child side


def peak_mb() -> float | None:
    """This process's peak resident memory in MB (VmHWM: since its exec, unlike ru_maxrss, which counts the
    parent's memory a vfork-started child shared before exec), or None."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _vm_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _limit_memory(extra: int) -> int | None:
    """Limit this process's address space to what it uses now plus ``extra``; the limit set, or None."""
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_AS (the time limit still applies)
        return None
    vm = _vm_bytes()
    if vm is None:
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = vm + extra
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError):
        return None
    return extra


def _unlimit_memory():
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


MEMORY_WORDS = ("memory", "bad_alloc", "cannot allocate")


def run_once(be, content: bytes) -> dict:
    """Create an interpreter for ``content``, allocate it, invoke it once on zero inputs: {"ok"} or
    {"ok": False, "stage", "error", "memory"}."""
    import numpy as np

    from . import backends

    stage = "create"
    interp = None
    try:
        interp = backends.make_interpreter(be, content, 1)
        stage = "allocate"
        interp.allocate_tensors()
        stage = "invoke"
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
        for d in interp.get_output_details():
            interp.get_tensor(d["index"])
        return {"ok": True}
    except MemoryError:
        return {"ok": False, "stage": stage, "error": "out of memory", "memory": True}
    except Exception as e:  # noqa: BLE001 - whatever the interpreter raises is the verdict
        msg = _first_line(e)
        return {"ok": False, "stage": stage, "error": msg, "memory": any(w in msg.lower() for w in MEMORY_WORDS)}
    finally:
        del interp


def serve(backend_name: str):
    """The child: answer one JSON line per model read from stdin (8-byte length and 8-byte declared tensor
    bytes, then the model's bytes)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is expected: no core file
    except (ImportError, ValueError, OSError):
        pass
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints on stdout goes to stderr, never into the answers
    from . import backends
    from .errors import EdgetlError

    try:
        be = backends.resolve(backend_name)
    except EdgetlError as e:
        answer.write(json.dumps({"fatal": e.message}) + "\n")
        return
    answer.write(json.dumps({"ready": True, "backend": str(be)}) + "\n")
    src = sys.stdin.buffer
    while True:
        head = src.read(16)
        if len(head) < 16:
            return
        n, declared = struct.unpack("<QQ", head)
        content = src.read(n)
        if len(content) < n:
            return
        limit = _limit_memory(budget(n, declared))
        try:
            res = run_once(be, content)
        finally:
            _unlimit_memory()
        del content
        res["limit"] = limit
        res["peak_mb"] = peak_mb()
        answer.write(json.dumps(res) + "\n")
