"""The fastest model of a run that passed its parity gate, on the device that runs it.

int8 is not always the fastest: on a CPU with AVX-512 VNNI (or an ARM core with dot-product
instructions) the int8 model is about 2x faster than float32, on an AVX2 laptop it can be 2x slower.
So the choice is measured on the device, once: every .tflite of the run whose gate passed, at each
thread count, in one interleaved loop (each round times every candidate once, in a rotating order, so
a background load or a clock change hits all of them alike). The fastest by median latency of
``Classifier.classify`` on a camera-sized frame wins; the choice is remembered in a small cache keyed by
the device (CPU model and instruction-set flags, core count, interpreter backend) and the SHA-256 of
every candidate file, so it is measured once per device and run.

A model counts as passed only when its bytes are those that passed: report.json records each model's
SHA-256 with its parity result, and a file whose SHA-256 differs (replaced or changed after the build, e.g.
``cp model_int8.tflite model_float32.tflite``) is left out of the automatic choice with a warning; ``--mode``
still uses it, with that warning. Runs written before the SHA-256 was recorded are trusted as before.

The models are timed through the classifier class the caller passes (``classifier_class``: ``Classifier``),
so this module does not import ``classifier`` (which imports this one for ``Classifier.from_run``).

Cache: ``choices.json`` in edgetl's cache folder (``cache.cache_dir()``: ``$EDGETL_CACHE_DIR``, else
``$XDG_CACHE_HOME/edgetl``, else ``~/.cache/edgetl``). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import cache, files
from .errors import EdgetlError

CACHE_VERSION = 1
# the instruction-set features that change which kernels are fastest
SPEED_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16",
               "asimd", "asimddp", "i8mm", "sve", "sve2", "neon", "vfpv4", "bf16")


@dataclass
class Candidate:
    mode: str
    path: Path
    passed: bool
    reason: str | None = None
    agreement: float | None = None
    size_bytes: int = 0
    sha256: str = ""  # of the file as it is now
    modified: bool = False  # report.json recorded another SHA-256 for the model that passed parity


@dataclass
class Choice:
    mode: str
    path: str
    threads: int
    p50_ms: float
    ranking: list = field(default_factory=list)  # [{mode, threads, p50_ms, p90_ms}], fastest first
    skipped: list = field(default_factory=list)  # [{mode, reason}]: gate failed
    device: dict = field(default_factory=dict)
    measured: str = ""
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ the run's candidates


def is_run_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "report.json").is_file() and any(p.glob("model_*.tflite"))


def candidates(run) -> list:
    """Every model_<mode>.tflite of a run, with its gate result from report.json."""
    run = Path(run)
    rep_path = run / "report.json"
    try:
        rep = files.read_json(rep_path, what="report")
        if not isinstance(rep, dict):
            raise ValueError("not a JSON object")
        tfl = rep.get("tflite") or {}
        if not isinstance(tfl, dict):
            raise ValueError("tflite is not an object")
    except files.FileProblem as e:
        if e.missing:
            raise EdgetlError(f"{run} is not an edgetl run folder (no report.json)",
                              hint="pass a run folder made by `edgetl build`, or a .tflite model") from None
        raise EdgetlError(e.message, hint="rebuild the run, or pass a .tflite model") from None
    except (ValueError, AttributeError) as e:
        raise EdgetlError(f"{rep_path} is damaged ({e})", hint="rebuild the run, or pass a .tflite model") from None
    out = []
    for mode, r in tfl.items():
        if not isinstance(r, dict):
            continue
        p = run / str(r.get("path") or f"model_{mode}.tflite")
        if not p.is_file() or p.parent != run:
            continue
        try:
            sha = hashlib.sha256(files.read_bytes(p, files.MAX_MODEL_BYTES, "model")).hexdigest()
        except files.FileProblem:
            continue  # not a regular file after all, or too large: never a candidate
        recorded = r.get("sha256")
        modified = isinstance(recorded, str) and recorded.lower() != sha
        passed, reason = r.get("passed") is True, r.get("reason")
        if modified:
            passed, reason = False, (f"{p.name} is not the model that passed parity: its SHA-256 differs from the "
                                     "one report.json recorded (the file was replaced or changed after the build)")
        out.append(Candidate(mode=str(mode), path=p, passed=passed, reason=reason, agreement=r.get("agreement"),
                             size_bytes=p.stat().st_size, sha256=sha, modified=modified))
    if not out:
        raise EdgetlError(f"{run} holds no TFLite model", hint=f"convert it first: edgetl quantize {run}")
    return out


def pick_mode(run, mode: str) -> Candidate:
    """The run's model of ``mode`` (forced by the user: used even if its gate failed, with a warning)."""
    for c in candidates(run):
        if c.mode == mode:
            return c
    have = ", ".join(c.mode for c in candidates(run))
    raise EdgetlError(f"{run} has no {mode} model (it has: {have})", hint=f"use --mode with one of: {have}")


# ------------------------------------------------------------------ the device


def _cpuinfo() -> dict:
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        if ":" not in line:
            continue
        k, v = (x.strip() for x in line.split(":", 1))
        k = k.lower()
        if k in ("model name", "hardware", "cpu implementer", "cpu part", "cpu architecture", "model") \
                and k not in info:
            info[k] = v
        if k in ("flags", "features") and "flags" not in info:
            info["flags"] = v.split()
    return info


def device() -> dict:
    """What the measured speed depends on: the CPU and its instruction set, the cores, the backend."""
    from . import backends
    from .timing import available_cores

    ci = _cpuinfo()
    flags = sorted(set(ci.get("flags", [])) & set(SPEED_FLAGS))
    cpu = ci.get("model name") or " ".join(x for x in (ci.get("hardware"), ci.get("cpu implementer"),
                                                       ci.get("cpu part"), ci.get("model")) if x) \
        or platform.processor() or "unknown"
    try:
        be = str(backends.resolve())
    except EdgetlError:
        be = "none"
    return {"machine": platform.machine(), "cpu": cpu, "flags": flags, "cores": available_cores(), "backend": be}


def device_key(dev: dict) -> str:
    return hashlib.sha256(json.dumps(dev, sort_keys=True).encode()).hexdigest()[:16]


def cache_file() -> Path:
    return cache.cache_dir() / CACHE_NAME


CACHE_NAME = "choices.json"


def _load_cache() -> dict:
    return cache.read(CACHE_NAME, CACHE_VERSION, "choices")


def _save_cache(key: str, choice: Choice):
    """Best effort (a read-only home must not stop a device from classifying): atomic write."""
    doc = _load_cache()
    doc["choices"][key] = choice.as_dict()
    doc["choices"] = cache.keep_newest(doc["choices"], 200, "measured")  # keep the newest 200
    cache.write(CACHE_NAME, doc)


# ------------------------------------------------------------------ measuring


def default_threads(cores: int) -> list:
    """1, 2, 4, ... up to the cores (and the cores themselves)."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    out.append(max(1, cores))
    return sorted(set(out))


def measure(models: list, threads: list, runs: int = 60, warmup: int = 10, frame=None, backend=None, *,
            classifier_class) -> list:
    """Median latency of ``classifier_class.classify`` (``Classifier``) for every (model, threads), in one
    interleaved loop (``timing.time_interleaved``). ``models``: [(name, path)]. Returns [{name, path, threads,
    p50_ms, p90_ms}] fastest first."""
    from .timing import test_frame, time_interleaved

    frame = test_frame() if frame is None else frame
    combos = [(name, path, t, classifier_class(path, num_threads=t, backend=backend, warn=False))
              for name, path in models for t in threads]
    times = time_interleaved(*[lambda c=c: c.classify(frame, bgr=True) for *_, c in combos], runs=runs,
                             warmup=warmup)
    out = [{"name": name, "path": str(path), "threads": t, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3)} for (name, path, t, _), ms in zip(combos, times)]
    out.sort(key=lambda r: (r["p50_ms"], r["threads"]))
    return out


def choose(run, threads=None, backend=None, runs: int = 60, warmup: int = 10, remeasure: bool = False,
           use_cache: bool = True, frame=None, on_measure=None, *, classifier_class) -> Choice:
    """The fastest passing model of ``run`` on this device (from the cache when it was measured here),
    timed through ``classifier_class`` (``Classifier``). ``on_measure``: called just before measuring (not
    when the cache answers), e.g. to tell the user."""
    run = Path(run)
    cands = candidates(run)
    passing = [c for c in cands if c.passed]
    skipped = [{"mode": c.mode, "reason": c.reason or "parity gate failed"} for c in cands if not c.passed]
    if not passing:
        raise EdgetlError(f"no model of {run} passed its parity gate ({'; '.join(s['mode'] + ': ' + str(s['reason']) for s in skipped)})",
                          hint="force one with --mode MODE (at your own risk), or rebuild with other settings")
    dev = device()
    thr = sorted(set(int(t) for t in threads)) if threads else default_threads(dev["cores"])
    key = device_key({"device": dev, "models": {c.mode: c.sha256 for c in passing}, "threads": thr})
    if use_cache and not remeasure:
        ch = _cached(run, key, passing)
        if ch is not None:
            return ch
    if on_measure is not None:
        on_measure()
    ranking = measure([(c.mode, c.path) for c in passing], thr, runs=runs, warmup=warmup, frame=frame,
                      backend=backend, classifier_class=classifier_class)
    best = ranking[0]
    ch = Choice(mode=best["name"], path=str(run / Path(best["path"]).name), threads=best["threads"],
                p50_ms=best["p50_ms"],
                ranking=[{"mode": r["name"], "threads": r["threads"], "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"]}
                         for r in ranking],
                skipped=skipped, device=dev,
                measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if use_cache:
        _save_cache(key, ch)
    return ch


def _cached(run: Path, key: str, passing: list) -> Choice | None:
    hit = _load_cache().get("choices", {}).get(key)
    if isinstance(hit, dict) and Path(str(hit.get("path", ""))).name in {c.path.name for c in passing}:
        try:
            ch = Choice(**{k: hit[k] for k in Choice.__dataclass_fields__ if k in hit})
            ch.path = str(run / Path(ch.path).name)  # the run may have moved since
            ch.cached = True
            return ch
        except (TypeError, KeyError):
            pass
    return None


def remembered(run) -> Choice | None:
    """The choice ``choose`` would take from the cache for this device (default thread counts), without
    measuring anything: None when it was never measured here (or no model passed)."""
    run = Path(run)
    passing = [c for c in candidates(run) if c.passed]
    if not passing:
        return None
    dev = device()
    key = device_key({"device": dev, "models": {c.mode: c.sha256 for c in passing},
                      "threads": default_threads(dev["cores"])})
    return _cached(run, key, passing)


def describe(ch: Choice) -> str:
    """One line for the user: which model, why, and how it compares."""
    others = {}
    for r in ch.ranking:
        others.setdefault(r["mode"], r["p50_ms"])
    rest = ", ".join(f"{m} {ms:.2f} ms" for m, ms in others.items() if m != ch.mode)
    how = "chosen earlier on this device" if ch.cached else "measured now"
    return (f"using {Path(ch.path).name} at {ch.threads} thread(s): the fastest model that passed parity on this "
            f"device ({ch.p50_ms:.2f} ms{'; ' + rest if rest else ''}; {how}; --mode forces another)")


@dataclass
class Picked:
    """The model a caller runs, and why: ``why`` is one sentence (``describe`` for the device's choice)."""
    path: Path
    threads: int | None
    mode: str | None = None  # the run's mode; None for a .tflite file given as it is
    why: str = "given as a file"


def resolve(model, mode: str | None = None, threads: int | None = None, backend=None, say=None, *,
            classifier_class):
    """(model path, thread count) for a .tflite file or a run folder (``pick`` says why)."""
    p = pick(model, mode=mode, threads=threads, backend=backend, say=say, classifier_class=classifier_class)
    return p.path, p.threads


def pick(model, mode: str | None = None, threads: int | None = None, backend=None, say=None, *,
         classifier_class) -> Picked:
    """The model to run for a .tflite file or a run folder, its thread count and why. For a run: ``mode``
    if given (a model whose gate failed, or whose bytes are not those that passed, gets a warning), else the
    choice for this device (measured now, through ``classifier_class``, if it never was). ``say``: where
    the one-line explanation ("using model_int8.tflite ...", in both cases) and the warnings go (e.g. a
    function printing to stderr); without it, warnings are Python warnings."""
    p = Path(model)
    if not p.is_dir():
        if mode:
            raise EdgetlError("--mode chooses among a run's models; MODEL is a single .tflite file",
                              hint="pass the run folder with --mode, or drop --mode")
        return Picked(p, threads)
    if not is_run_folder(p):
        raise EdgetlError(f"{p} is a folder but not an edgetl run with TFLite models",
                          hint="pass a .tflite model, or a run folder made by `edgetl build`")
    def warn(text):
        if say:
            say(f"warning: {text}")
        else:
            import warnings

            warnings.warn(text, UserWarning, stacklevel=3)

    if mode:
        c = pick_mode(p, mode)
        at = f" at {threads} thread(s)" if threads is not None else ""
        forced = f"--mode {mode}" if say else f"mode={mode!r}"  # the command line's words, or the API's
        if c.modified:
            warn(f"{c.reason}; using it because --mode says so")
            why = f"forced by {forced}; its bytes are not those that passed parity"
        elif not c.passed:
            if say:
                say(f"warning: {c.path.name} did not pass its parity gate ({c.reason}); using it because --mode "
                    "says so")
            why = f"forced by {forced}; it did not pass its parity gate ({c.reason})"
        else:
            why = f"forced by {forced}; it passed its parity gate"
        if say:
            say(f"using {c.path.name}{at}: {why}")
        return Picked(c.path, threads, c.mode, why)
    for c in candidates(p):
        if c.modified:
            warn(f"{c.reason}: left out of the choice")
    ch = choose(p, backend=backend, classifier_class=classifier_class, on_measure=say and (lambda: say(
        f"measuring the models of {p} on this device (once; `edgetl bench {p}` shows the figures) ...")))
    line = describe(ch)
    if say:
        say(line)
    why = (line.split(": ", 1)[1] if ": " in line else line).replace("; --mode forces another", "")
    return Picked(Path(ch.path), threads if threads is not None else ch.threads, ch.mode, why)
