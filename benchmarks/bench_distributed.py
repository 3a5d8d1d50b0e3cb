"""Wall time of `edgetl build` in one process and on N local workers (--local-workers) on the same data,
and the peak memory (VmHWM) of every TensorFlow process.

    python benchmarks/bench_distributed.py                 # generated photos, alpha 0.35, 96 px, 1 vs 2 workers
    python benchmarks/bench_distributed.py --flowers       # ../shared/datasets/flowers10 (800 photos)
    python benchmarks/bench_distributed.py --workers 1,2,3 --json

On a machine with fewer cores than workers no speed-up is expected: the figure is the overhead of the
cluster (start-up of one TensorFlow per worker, the collectives, every worker tracing the same graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLOWERS, need_shared  # noqa: E402

CLI = "import sys; from toolchain.cli import main; main(sys.argv[1:])"


def _vmhwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_build(data: Path, out: Path, flags: list, workers: int, timeout: float) -> dict:
    """One build; samples the peak memory of the process (or of each worker) until it ends."""
    args = [sys.executable, "-c", CLI, "build", str(data), "--out", str(out), "--force", *flags]
    if workers > 1:
        args += ["--local-workers", str(workers), "--worker-timeout", "900"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks: dict = {}
    err: list = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None:
        pids = _children(proc.pid) if workers > 1 else [proc.pid]
        for i, pid in enumerate(pids):
            peaks[i] = max(peaks.get(i, 0), _vmhwm(pid))
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"build with {workers} worker(s) took more than {timeout:.0f}s")
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    reader.join(5)
    text = "".join(err)
    if proc.returncode not in (0, 1):
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"build with {workers} worker(s) failed (exit {proc.returncode})")
    rep = json.loads((out / "report.json").read_text())
    return {"workers": workers, "wall_seconds": round(wall, 1),
            "timing": rep.get("timing"), "distribution": rep.get("distribution"),
            "test_accuracy": rep["keras"]["test_accuracy"],
            "peak_mb_per_process": [round(v / 2**20) for _, v in sorted(peaks.items())],
            "stage_seconds": {"feature_extraction": rep["stages"]["feature_extraction"]["seconds"],
                              "fine_tune": rep["stages"].get("fine_tune", {}).get("seconds")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--flowers", action="store_true", help="use ../shared/datasets/flowers10")
    ap.add_argument("--per-class", type=int, default=40, help="generated photos per class (default 40)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-bench-dist-"))
    if a.flowers:
        need_shared()
        data = FLOWERS
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import write_dataset

        data = write_dataset(tmp / "photos", per_class=a.per_class)
    flags = ["--alpha", "0.35", "--image-size", "96", "--weights", "none", "--epochs", "5", "--fine-tune-epochs", "2",
             "--batch-size", "16", "--seed", "3", "--min-agreement", "0", "--max-drop", "100"]
    rows = []
    try:
        for w in [int(x) for x in a.workers.split(",")]:
            rows.append(run_build(data, tmp / f"run{w}", flags, w, a.timeout))
            r = rows[-1]
            if not a.json:
                print(f"{w} worker(s): {r['wall_seconds']:7.1f} s wall  (stage 1 "
                      f"{r['stage_seconds']['feature_extraction']} s, stage 2 {r['stage_seconds']['fine_tune']} s); "
                      f"peak memory per process (MB): {r['peak_mb_per_process']}; test accuracy {r['test_accuracy']}",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps({"data": str(data), "cores": os.cpu_count(), "runs": rows}, indent=1))
    else:
        base = rows[0]["wall_seconds"]
        for r in rows[1:]:
            print(f"{r['workers']} workers vs {rows[0]['workers']}: x{base / r['wall_seconds']:.2f} speed "
                  f"({os.cpu_count()} cores on this machine)")


if __name__ == "__main__":
    main()
