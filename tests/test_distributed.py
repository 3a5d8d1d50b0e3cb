"""Distributed builds: `--local-workers`, the cluster options, a lost worker, and the custom training loop's
batches against Keras `fit`. Real processes, real TensorFlow collectives on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import TINY_FLAGS, TINY_GATES, requires_tf, run_cli, run_python

# --dropout 0: dropout draws its masks per replica, so only without it is the random stream the same as in
# one process (see toolchain/core/ctl.py); the gates are relaxed as for every tiny random-base model (conftest).
DIST_BASE = TINY_FLAGS + ["--dropout", "0", *TINY_GATES]
DIST_FLAGS = DIST_BASE + ["--quantize", "int8"]  # the cluster's conversion and parity: int8, the hard case
ONE_FLAGS = DIST_BASE + ["--quantize", "float32"]  # references for the weights: the quick conversion
CLI = "import sys; from toolchain.cli import main; main(sys.argv[1:])"


@pytest.fixture(scope="session")
def dist_pair(tmp_path_factory, tiny_data):
    """The same tiny build in one process and on two local workers."""
    root = tmp_path_factory.mktemp("dist")
    one, two = root / "one" / "run", root / "two" / "run"
    p1 = run_cli("build", tiny_data, "--out", one, *ONE_FLAGS, timeout=900)
    p2 = run_cli("build", tiny_data, "--out", two, *DIST_FLAGS, "--local-workers", "2", "--worker-timeout", "300",
                 "--keep-cache",
                 timeout=900)
    return one, p1, two, p2


def _max_diff(a, b) -> float:
    code = f"""
import numpy as np, keras
a = keras.models.load_model({str(a)!r}, compile=False).get_weights()
b = keras.models.load_model({str(b)!r}, compile=False).get_weights()
assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
print(max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)))
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])


@requires_tf
def test_two_local_workers_build_the_model_of_one_process(dist_pair):
    one, p1, two, p2 = dist_pair
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "Traceback" not in p2.stderr
    assert p2.stdout.strip() == str(two)  # the chief alone prints the run
    assert sorted(os.listdir(two.parent)) == ["run"]  # one run folder: no staged copy, no lock left
    rep = json.loads((two / "report.json").read_text())
    assert rep["status"] == "built"
    d = rep["distribution"]
    assert d["workers"] == 2 and d["strategy"] == "MultiWorkerMirroredStrategy" and d["task_index"] == 0
    assert d["devices"] == ["CPU:0"]
    assert json.loads((one / "report.json").read_text())["distribution"]["workers"] == 1
    assert "distribution: MultiWorkerMirroredStrategy, 2 worker(s)" in p2.stderr
    assert re.search(r"stage 2 \[#+\] epoch 1/1 .*\[2 workers\]", p2.stderr)
    # stage 1: sharded features, gathered, the head trained on all of them on every worker: the same model
    # to float rounding (1.0e-6 apart on an AVX2-only CPU, less with AVX-512: the kernels sum differently)
    assert _max_diff(one / "stage1.keras", two / "stage1.keras") <= 1e-5
    # stage 2: the custom loop on the same global batches as fit: the same weights to float rounding
    assert _max_diff(one / "model.keras", two / "model.keras") <= 1e-5
    r1, r2 = json.loads((one / "report.json").read_text()), rep
    assert abs(r1["keras"]["test_accuracy"] - r2["keras"]["test_accuracy"]) <= 0.02
    assert r2["tflite"]["int8"]["passed"] and r2["tflite"]["int8"]["full_integer"]
    # a build drops its cache unless --keep-cache, on one worker or several (one pipeline); kept, the
    # chief's run cache holds its shard only, and says so
    assert not (one / "cache").exists()
    idx = json.loads((two / "cache" / "index.json").read_text())
    assert idx["shard"] == {"task": 0, "workers": 2}
    assert 0 < len(idx["rows"]) < sum(len(v) for v in json.loads((two / "split.json").read_text())["files"].values())


def _sha(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@requires_tf
@pytest.mark.parametrize("victim,frozen", [(1, False), (0, False), (0, True)],
                         ids=["worker", "chief", "chief-with-worker-frozen"])
def test_a_killed_worker_stops_the_chief_naming_it_and_the_old_run_stays(tmp_path, tiny_data, dist_pair, victim,
                                                                         frozen):
    """A killed worker: the chief stops, naming it. A killed chief: the command ends naming it, also when
    the other worker cannot notice (frozen by SIGSTOP: it would wait for ever), which is then stopped.
    Either way the previous run stays and no worker is left running."""
    _, _, two, _ = dist_pair
    prev = tmp_path / "runs" / "run"
    shutil.copytree(two, prev)
    before = _sha(prev)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "build", str(tiny_data), "--out", str(prev), "--force",
                             *DIST_FLAGS, "--local-workers", "2", "--worker-timeout", "300"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("class "):  # the workers have decoded and split: stage 1 is starting
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(300), "".join(lines)[-3000:]
        launch = next(line for line in lines if line.startswith("local workers"))
        pids = [int(p) for p in re.findall(r"pid (\d+)", launch)]
        assert len(pids) == 2
        if "private network namespace" in launch:
            _check_sockets(pids)
        t_kill = time.monotonic()
        if frozen:
            os.kill(pids[1], signal.SIGSTOP)
        os.kill(pids[victim], 9)
        proc.wait(timeout=240)
        elapsed = time.monotonic() - t_kill
        left = [p for p in pids if _running(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in pids if "pids" in locals() else []:
            if _running(p):  # never leave a frozen worker behind, whatever the test says
                os.kill(p, signal.SIGKILL)
    reader.join(5)
    err = "".join(lines)
    assert proc.returncode not in (0, None), err[-3000:]
    assert elapsed < 120, f"the chief took {elapsed:.0f}s to stop"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("worker 1" if victim else "chief") in errors[0], err[-3000:]
    assert "Traceback" not in err
    assert not left, f"still running after the command ended: {left}"
    assert _sha(prev) == before  # the previous run, untouched
    assert sorted(os.listdir(prev.parent)) == ["run"]  # no staged copy, no lock left


def _running(pid: int) -> bool:
    from toolchain.cluster.distributed import proc_stat

    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _check_sockets(pids):
    """TensorFlow's gRPC servers listen on 0.0.0.0: the workers must be in a namespace that has loopback
    only, and nothing of theirs may listen in this machine's own network namespace."""
    host = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30)
    if host.returncode != 0:
        pytest.skip("ss is not available")
    for pid in pids:
        assert f"pid={pid}," not in host.stdout, host.stdout
    if os.geteuid() != 0 or not shutil.which("nsenter"):
        return
    inside = subprocess.run(["nsenter", "-t", str(pids[0]), "-n", "ss", "-ltnH"], capture_output=True, text=True,
                            timeout=30)
    addrs = subprocess.run(["nsenter", "-t", str(pids[0]), "-n", "ip", "-o", "addr"], capture_output=True, text=True,
                           timeout=30)
    assert inside.returncode == 0 and addrs.returncode == 0, inside.stderr + addrs.stderr
    assert "LISTEN" in inside.stdout  # the workers' servers are there...
    interfaces = {line.split()[1] for line in addrs.stdout.splitlines()}
    assert interfaces == {"lo"}, addrs.stdout  # ...where the only way in is 127.0.0.1


@requires_tf
def test_the_custom_loop_takes_the_batches_fit_takes():
    """ctl.batch_order reproduces, epoch after epoch, the batches Keras fit draws from train._batch_source."""
    code = """
import numpy as np, keras
from types import SimpleNamespace
from toolchain.core import train, ctl
cfg = SimpleNamespace(seed=11, batch_size=8, augment=False)
n, rows = 37, np.arange(100, 137)
imgs = np.zeros((200, 2, 2, 3), np.uint8)
src = train._batch_source(imgs, rows, np.zeros(n, np.int64), cfg, shuffle=True, augment=False)
seen = []
get = type(src).__getitem__
def logged(self, i):
    seen.append((self.epoch, tuple(int(v) for v in self.order[i * 8:(i + 1) * 8])))
    return get(self, i)
type(src).__getitem__ = logged
m = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
m.compile("adam", "sparse_categorical_crossentropy")
keras.utils.set_random_seed(cfg.seed)
m.fit(src, epochs=4, verbose=0)
nb = 5
mine = [(e, tuple(int(v) for v in b)) for e, ep in ctl.batch_order(n, cfg, 4) for b in ep]
print(json.dumps({"fit": seen[-4 * nb:], "ctl": mine}))
""".replace("import numpy", "import json, numpy")
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(e, tuple(b)) for e, b in doc["fit"]] == [(e, tuple(b)) for e, b in doc["ctl"]]
    assert len({tuple(b) for _, b in doc["ctl"]}) == 20  # shuffled every epoch


@pytest.mark.parametrize("args,env,expect", [
    (["--cluster", "nohost"], {}, "is not HOST:PORT"),
    (["--cluster", "127.0.0.1:2222,127.0.0.1:2223"], {}, "needs --task-index"),
    (["--cluster", "127.0.0.1:2222,127.0.0.1:2223", "--task-index", "2"], {}, "outside the 2 workers"),
    (["--task-index", "0"], {}, "needs --cluster"),
    (["--local-workers", "2", "--cluster", "127.0.0.1:2222,127.0.0.1:2223", "--task-index", "0"], {},
     "cannot be combined"),
    ([], {"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
    ([], {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"], "ps": ["c:3"]},
                                   "task": {"type": "worker", "index": 0}})}, "job type(s) ps"),
    ([], {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}})},
     "is not one of the cluster's tasks"),
    (["--local-workers", "2", "--worker-timeout", "0"], {}, "--worker-timeout 0 is out of range"),
])
def test_cluster_usage_errors_exit_2_without_tensorflow(tmp_path, dataset, args, env, expect):
    r = run_cli("build", dataset, "--out", tmp_path / "run", *args, env=env, block_tf=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and expect in lines[0], r.stderr
    assert lines[1].startswith("hint:") and len(lines) == 2
    assert not (tmp_path / "run").exists()


def test_tf_config_parsing():
    from toolchain.cluster import distributed

    one = json.dumps({"cluster": {"chief": ["127.0.0.1:2222"]}, "task": {"type": "chief", "index": 0}})
    assert distributed.parse_tf_config(one) is None  # a one-replica job: the one-process path
    cfg = {"cluster": {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 1}}
    c = distributed.parse_tf_config(json.dumps(cfg))
    assert (c.addresses, c.rank, c.n, c.chief) == (["c:2222", "w0:2222", "w1:2222"], 2, 3, False)
    assert c.label(0) == "chief (c:2222)" and c.label(2) == "worker 2 (w1:2222)"
    f = distributed.plan("h1:1,h2:2", 0, None, env={})
    assert f.chief and f.tf_config == {"cluster": {"worker": ["h1:1", "h2:2"]}, "task": {"type": "worker", "index": 0}}
    assert distributed.plan(None, None, 1, env={}) is None and distributed.plan(None, None, None, env={}) is None


@requires_tf
def test_several_devices_of_one_machine_build_the_same_model(tmp_path, tiny_data, dist_pair):
    """MirroredStrategy over two logical CPUs (as over two GPUs): the same custom loop, the same model."""
    one = dist_pair[0]
    run = tmp_path / "run"
    r = run_cli("build", tiny_data, "--out", run, *ONE_FLAGS, "--devices", "cpu:0,cpu:1", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((run / "report.json").read_text())["distribution"]
    assert d["strategy"] == "MirroredStrategy" and d["workers"] == 1 and d["devices"] == ["CPU:0", "CPU:1"]
    assert "[2 devices]" in r.stderr
    assert _max_diff(one / "model.keras", run / "model.keras") <= 1e-5


def test_what_a_worker_leaves_running_is_ended_with_the_command():
    """A process a worker started and left behind (here a shell's background `sleep`, orphaned when the shell
    ends; in a build, a fork of a killed worker) comes back to the supervisor (a child subreaper) and is
    killed when the workers are done: it no longer holds the user's terminal (here: the pipe) open."""
    code = r"""
import os, subprocess, sys, time
from toolchain.cluster import distributed
assert distributed.become_subreaper()
sh = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, text=True)
orphan = int(sh.stdout.readline())
sh.wait()
time.sleep(0.2)
assert orphan in distributed.descendants(os.getpid()), "the orphan did not come back"
assert distributed.end_descendants() == [orphan]
print("pipe closed" if sh.stdout.read() == "" else "pipe open")
assert not os.path.exists(f"/proc/{orphan}")
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only (PR_SET_CHILD_SUBREAPER)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "pipe closed"
