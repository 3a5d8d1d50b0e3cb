"""`edgetl build` of this tree against a baseline commit, side by side: the same data, the same seed (so the
same split), the same flags, alternating old and new builds on this machine, each in its own process.

Prints for every build its wall time, peak memory (max RSS) and a per-step breakdown read from the build's
own progress lines (each timed as it arrives; a progress line carries its elapsed time, so a step's start
is known exactly), then the median of each step, the ratio new / old of the median wall times, and the
results (test accuracy, every model's parity gate and agreement). The machine may be shared: compare the
medians of alternating runs, not single figures.

    python benchmarks/bench_build.py [DATA] [--baseline main] [--runs 2] [-- extra build flags]
    python benchmarks/bench_build.py --report [DATA]     # one build, every mode, parity of each over all photos

The baseline's toolchain and runtime come from `git archive BASELINE` (as tests/test_one_pipeline.py does),
so a baseline is any commit whose `edgetl build` takes the same flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLOWERS, ROOT, edgetl, imagenet_env, need_shared

MODES = ("int8", "float16", "dynamic", "float32")
CODE = "from toolchain.cli import main; main()"  # as the `edgetl` command runs it (argv from sys.argv)
ELAPSED = re.compile(r"\]\s+\d+/\d+\S*\s+([\d.]+)s\b")


def checkout(commit: str, dest: Path) -> tuple[Path, str]:
    """The toolchain and runtime of ``commit`` unpacked in ``dest``; (folder, full hash)."""
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    archive = dest.parent / f"{dest.name}.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), full, "toolchain", "edge_runtime"],
                   check=True, capture_output=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as t:
        t.extractall(dest)
    archive.unlink()
    return dest, full


def timed_build(code_dir: Path, data, out: Path, flags: list, env: dict) -> dict:
    """Run one build of the code in ``code_dir``; returns wall seconds, max RSS, exit code and its stderr
    lines, each with the time (from the start) it arrived."""
    env = dict(env, PYTHONPATH=str(code_dir), EDGETL_PROGRESS_SECONDS="0")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CODE, "build", str(data), "--out", str(out), *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(code_dir))
    lines = []

    def read():
        buf = b""
        while True:
            chunk = os.read(p.stderr.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            now = time.perf_counter() - t0
            lines.extend((now, s.decode("utf-8", "replace")) for s in parts if s.strip())
        if buf.strip():
            lines.append((time.perf_counter() - t0, buf.decode("utf-8", "replace")))

    th = threading.Thread(target=read, daemon=True)
    th.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    th.join(10)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "rc": p.returncode, "lines": lines}


def steps(lines: list, wall: float, modes: list) -> dict:
    """Seconds per step, from the times the build's lines arrived (see the module docstring)."""

    def first(pat):
        return next(((t, s) for t, s in lines if re.match(pat, s)), None)

    def last(pat):
        hit = [(t, s) for t, s in lines if re.match(pat, s)]
        return hit[-1] if hit else None

    def start(pat):  # when the progress bar that matches began: its first line's time minus its elapsed
        hit = first(pat)
        if hit is None:
            return None
        m = ELAPSED.search(hit[1])
        return hit[0] - (float(m.group(1)) if m else 0.0)

    def at(hit):
        return None if hit is None else hit[0]

    marks = [("Python + TensorFlow import + weights", 0.0),
             ("decode photos", start(r"decoding photos")),
             ("stage 1: features + head", start(r"base features")),
             ("stage 1: saves + evaluation", at(last(r"stage 1 epoch"))),
             ("stage 2: epochs", at(first(r"stage 1:"))),
             ("stage 2: validation + saves", at(last(r"stage 2 epoch"))),
             ("Keras on the parity photos", at(first(r"stage 2:")))]
    for m in modes:
        marks.append((f"{m}: conversion (+ recipe choice)", at(first(rf"converting to {m}\b"))))
        marks.append((f"{m}: parity + latency + estimate", start(rf"parity {m}\b")))
    summaries = [at(last(rf"  {m}: .* -> ")) for m in modes]
    marks.append(("report + commit + exit", summaries[-1] if summaries else None))
    marks.append(("(end)", wall))
    known = [(name, t) for name, t in marks if t is not None]
    return {known[i][0]: max(0.0, known[i + 1][1] - known[i][1]) for i in range(len(known) - 1)}


def results(run: Path) -> dict:
    try:
        rep = json.loads((run / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {"test_accuracy": rep.get("keras", {}).get("test_accuracy"),
           "stage2": (rep.get("stages", {}).get("fine_tune") or {}).get("kept")}
    for m, t in (rep.get("tflite") or {}).items():
        out[m] = (t.get("passed"), t.get("agreement"), t.get("test_accuracy"), t.get("recipe"))
    return out


def side_by_side(args, extra: list):
    env = imagenet_env()
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-bench-build-"))
    try:
        old_code, full = checkout(args.baseline, tmp / "baseline")
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "toolchain", "edge_runtime"],
                               capture_output=True, text=True, check=False).stdout.strip()
        sides = {"old": old_code, "new": ROOT}
        names = {"old": f"baseline {args.baseline} ({full[:7]})", "new": f"this tree ({head}{', modified' if dirty else ''})"}
        flags = ["--force", *extra]
        modes = [extra[i + 1] for i, x in enumerate(extra[:-1]) if x == "--quantize"] or ["int8", "float32"]
        print(f"data {args.data}; flags {' '.join(flags) or '(defaults)'}; {args.runs} runs each, alternating; "
              f"{os.cpu_count()} cores", flush=True)
        runs = {"old": [], "new": []}
        splits = {}
        for i in range(args.runs):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for side in order:
                out = tmp / f"run-{side}"
                b = timed_build(sides[side], args.data, out, flags, env)
                b["steps"] = steps(b["lines"], b["wall"], modes)
                b["results"] = results(out)
                try:
                    splits[side] = json.loads((out / "split.json").read_text()).get("files")
                except (OSError, ValueError):
                    splits[side] = None
                runs[side].append(b)
                print(f"  {side} run {i + 1}: {b['wall']:.1f} s wall, exit {b['rc']}, peak RSS {b['rss_mb']:.0f} MB, "
                      f"{b['results']}", flush=True)
                if b["rc"] not in (0, 1):
                    print("\n".join(s for _, s in b["lines"][-15:]))
                shutil.rmtree(out, ignore_errors=True)
        print(f"\nthe same split: {splits.get('old') == splits.get('new') and splits.get('old') is not None}")
        names_all = list(dict.fromkeys(k for side in runs for b in runs[side] for k in b["steps"]))
        med = {side: {k: statistics.median([b["steps"].get(k, 0.0) for b in runs[side]]) for k in names_all}
               for side in runs}
        wall = {side: statistics.median([b["wall"] for b in runs[side]]) for side in runs}
        print(f"\nmedian seconds per step ({args.runs} builds each)")
        print(f"  {'step':40} {'old':>7} {'new':>7}  share new")
        for k in names_all:
            print(f"  {k:40} {med['old'][k]:7.1f} {med['new'][k]:7.1f}  {100 * med['new'][k] / wall['new']:5.0f}%")
        print(f"  {'wall (median)':40} {wall['old']:7.1f} {wall['new']:7.1f}")
        for side, builds in runs.items():
            walls = ", ".join(f"{b['wall']:.1f}" for b in builds)
            print(f"  {side}: {names[side]}: wall {walls} s; peak RSS {max(b['rss_mb'] for b in builds):.0f} MB")
        print(f"\nratio new / old (median wall): {wall['new'] / wall['old']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args):
    """One build of this tree, every mode, and `edgetl parity` of each model over all photos."""
    env = imagenet_env()
    tmp = tempfile.mkdtemp(prefix="edgetl-bench-")
    run = Path(tmp) / "flowers"
    try:
        quantize = [x for m in MODES for x in ("--quantize", m)]
        t0 = time.perf_counter()
        r = edgetl("build", args.data, "--out", run, "--force", "--image-size", args.image_size, *quantize, env=env)
        total = time.perf_counter() - t0
        rep = json.loads((run / "report.json").read_text())
        k = rep["keras"]
        print(f"edgetl build {args.data} ({args.image_size} px, ImageNet weights): exit {r.returncode}, "
              f"{total:.1f} s wall (report: {rep['timing']['total_seconds']} s)")
        st = rep["stages"]
        print(f"  stage 1 {st['feature_extraction']['epochs']} epochs {st['feature_extraction']['seconds']} s; "
              f"stage 2 {st['fine_tune']['epochs']} epochs {st['fine_tune']['seconds']} s, kept {st['fine_tune']['kept']}")
        print(f"  Keras model: test accuracy {k['test_accuracy']:.4f} on {k['n']} photos, val {k['val_accuracy']:.4f}")
        rows = []
        f32 = rep["tflite"]["float32"]["size_bytes"]
        for mode in MODES:
            t = rep["tflite"][mode]
            p = json.loads(edgetl("parity", run / "model.keras", run / t["path"], args.data, "--json",
                                  env=env).stdout)
            rows.append((mode, t, p))
        print(f"  {'mode':8} {'size KB':>8} {'x f32':>6} {'full-int':>8} {'drop800':>8} {'agree800':>8} "
              f"{'KL800':>8} {'test acc':>8} {'drop80':>7} {'agree80':>7} {'p50 1t':>7} {'p50 2t':>7} "
              f"{'conv s':>6}  recipe")
        for mode, t, p in rows:
            print(f"  {mode:8} {t['size_bytes'] / 1024:8.0f} {f32 / t['size_bytes']:6.2f} {t['full_integer']!s:>8} "
                  f"{p['accuracy_drop_pt']:8.2f} {p['agreement']:8.4f} {p['kl_mean']:8.5f} "
                  f"{t['test_accuracy']:8.4f} {t.get('test_accuracy_drop_pt', 0):7.2f} {t.get('test_agreement', 0):7.4f} "
                  f"{t['latency_ms']['1']:7.2f} {t['latency_ms']['2']:7.2f} {t['convert_seconds']:6.1f}  "
                  f"{t.get('recipe', '-')}")
        print(f"  ('800' columns: `edgetl parity` over all {rows[0][2]['n']} photos; '80': the test split; "
              "latency: ms per image with the runtime Classifier on this machine)")
        print(f"  Keras model.keras p50 (1 image): {rows[0][2]['keras_latency_ms_p50']:.2f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", default=str(FLOWERS))
    ap.add_argument("--baseline", default="main", help="the commit to compare against (default: main)")
    ap.add_argument("--runs", type=int, default=2, help="builds of each side, alternating (default 2)")
    ap.add_argument("--report", action="store_true", help="one build of this tree, every mode, parity of each")
    ap.add_argument("--image-size", type=int, default=160, help="with --report")
    args = ap.parse_args(argv)
    args.data = str(Path(args.data).resolve())  # the builds run in the code's folder
    need_shared()
    if args.report:
        report(args)
    else:
        side_by_side(args, extra)


if __name__ == "__main__":
    main()
