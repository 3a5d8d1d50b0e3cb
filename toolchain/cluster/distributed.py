"""Running `edgetl build/train/finetune` on several workers: the cluster, and the processes that run it.

No TensorFlow here (this module runs in the process the user started; TensorFlow runs in its children):

- ``plan()`` reads the cluster from ``--local-workers N``, ``--cluster HOST:PORT,... --task-index I`` or the
  standard ``TF_CONFIG`` (Kubeflow TFJob, Vertex AI, Slurm scripts). A cluster of one is no cluster.
- ``launch()`` supervises the TensorFlow process(es) of this machine: one for ``--cluster``/``TF_CONFIG``,
  N on 127.0.0.1 for ``--local-workers`` (in a private network namespace when the OS allows it, because
  TensorFlow's gRPC server listens on every interface). The supervisor holds the run folder's lock (the
  chief's), bounds the time to join the cluster, forwards Ctrl-C, kills what does not stop, removes a
  staged folder left by a killed chief, and turns a lost worker into one clear error.

A TensorFlow process started this way finds its settings in ``$EDGETL_DIST_CHILD`` (JSON) and its cluster
in ``$TF_CONFIG``; the collectives themselves are in collective.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgetlError

from toolchain import ui
from toolchain.cfg.config import check_number

CHILD_ENV = "EDGETL_DIST_CHILD"
DEFAULT_TIMEOUT = 600.0
KILL_GRACE = 10.0  # seconds between Ctrl-C forwarded to a worker and SIGKILL
LOST_GRACE = 45.0  # seconds a chief gets to report a lost local worker itself before it is stopped
JOB_TYPES = ("chief", "worker")


@dataclass
class Cluster:
    """Every task of a MultiWorkerMirroredStrategy cluster, chief first, and which one this process is."""

    addresses: list  # "host:port", in rank order (the chief, or worker 0, is rank 0)
    rank: int
    tf_config: dict
    source: str  # "TF_CONFIG" | "--cluster" | "--local-workers"
    names: list = field(default_factory=list)  # "/job:worker/replica:0/task:1" per rank

    @property
    def n(self) -> int:
        return len(self.addresses)

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def label(self, rank: int) -> str:
        """How a task is named in messages: 'worker 1 (10.0.0.2:2222)'."""
        kind = "chief" if self.names and "/job:chief/" in self.names[rank] else "worker"
        return f"{kind} {rank} ({self.addresses[rank]})" if kind == "worker" else f"chief ({self.addresses[rank]})"


@dataclass
class LocalPlan:
    n: int


def _address(a: str, where: str) -> str:
    a = a.strip()
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})", a)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise EdgetlError(f"{where}: {a!r} is not HOST:PORT", hint="e.g. --cluster 10.0.0.1:2222,10.0.0.2:2222")
    return a


def from_flags(cluster: str, task_index) -> Cluster:
    addrs = [_address(a, "--cluster") for a in cluster.split(",") if a.strip()]
    if not addrs:
        raise EdgetlError(f"--cluster {cluster!r} lists no worker",
                          hint="give every worker's HOST:PORT, the chief first, e.g. --cluster "
                               "10.0.0.1:2222,10.0.0.2:2222")
    if len(set(addrs)) != len(addrs):
        raise EdgetlError("--cluster lists the same HOST:PORT twice", hint="give every worker its own HOST:PORT")
    if task_index is None:
        raise EdgetlError("--cluster needs --task-index (this worker's position in the list, 0 is the chief)",
                          hint="run the same command on every worker, each with its own --task-index")
    if not 0 <= task_index < len(addrs):
        raise EdgetlError(f"--task-index {task_index} is outside the {len(addrs)} workers of --cluster",
                          hint=f"use 0..{len(addrs) - 1} (0 is the chief)")
    cfg = {"cluster": {"worker": addrs}, "task": {"type": "worker", "index": task_index}}
    return _cluster(cfg, "--cluster")


def parse_tf_config(text: str):
    """The Cluster of a TF_CONFIG value, or None for a cluster of one task (a plain one-process run)."""
    from toolchain.rundir import schema

    hint = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["h1:2222", "h2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}\'')
    try:
        cfg = json.loads(text)
    except (ValueError, RecursionError):
        raise EdgetlError("TF_CONFIG is not valid: it must be JSON with 'cluster' and 'task'", hint=hint) from None
    try:
        _tf_config_shape()(cfg, [])
    except (schema.Bad, RecursionError) as b:
        why = f"{b.field} {b.reason}" if isinstance(b, schema.Bad) else "nested too deep"
        raise EdgetlError(f"TF_CONFIG is not valid: {why}", hint=hint) from None
    cluster, task = cfg["cluster"], cfg.get("task") or {}
    other = sorted(set(cluster) - set(JOB_TYPES) - {"evaluator"})
    if other:
        raise EdgetlError(f"TF_CONFIG has job type(s) {', '.join(other)}: edgetl runs MultiWorkerMirroredStrategy, "
                          "whose tasks are 'chief' and 'worker'", hint="remove the parameter servers from the job")
    if task.get("type") == "evaluator":
        raise EdgetlError("this task is an 'evaluator': edgetl has no side-car evaluator (every worker evaluates "
                          "its shard)", hint="remove the evaluator from the job")
    n = sum(len(cluster.get(j) or []) for j in JOB_TYPES)
    if n <= 1:
        return None
    return _cluster({"cluster": {j: cluster[j] for j in JOB_TYPES if cluster.get(j)}, "task": task}, "TF_CONFIG")


def _tf_config_shape():
    from toolchain.rundir import schema

    addresses = schema.list_of(schema.text(nonempty=True), what="a list of HOST:PORT addresses")
    return schema.obj({"cluster": schema.dict_of(addresses),
                       "task": schema.obj({"type": schema.text(), "index": schema.integer(0, 65535)})},
                      required=("cluster",))


def _cluster(cfg: dict, source: str) -> Cluster:
    addrs, names = [], []
    for job in JOB_TYPES:
        for i, a in enumerate(cfg["cluster"].get(job) or []):
            if not isinstance(a, str):
                raise EdgetlError(f"{source}: {job} {i} address {a!r} is not a string", hint="use HOST:PORT")
            addrs.append(_address(a, source))
            names.append(f"/job:{job}/replica:0/task:{i}")
    task = cfg["task"]
    kind, idx = task.get("type"), task.get("index")
    if kind not in JOB_TYPES or not isinstance(idx, int) or not 0 <= idx < len(cfg["cluster"].get(kind) or []):
        raise EdgetlError(f"{source}: task {task} is not one of the cluster's tasks",
                          hint="task.type must be 'chief' or 'worker' and task.index a position in that list")
    rank = names.index(f"/job:{kind}/replica:0/task:{idx}")
    if "chief" in cfg["cluster"] and len(cfg["cluster"]["chief"]) != 1:
        raise EdgetlError(f"{source}: a cluster has one chief", hint="list one address under 'chief'")
    return Cluster(addrs, rank, cfg, source, names)


def plan(cluster=None, task_index=None, local_workers=None, env=None):
    """What the user asked for: LocalPlan, Cluster, or None (one process, as always)."""
    env = os.environ if env is None else env
    if local_workers is not None:
        if cluster is not None or task_index is not None:
            raise EdgetlError("--local-workers cannot be combined with --cluster/--task-index",
                              hint="--local-workers N starts the whole cluster here; --cluster joins one")
        check_number("local_workers", local_workers, "--local-workers")
        return LocalPlan(local_workers) if local_workers > 1 else None
    check_number("task_index", task_index, "--task-index")
    if task_index is not None and cluster is None:
        raise EdgetlError("--task-index needs --cluster", hint="e.g. --cluster h1:2222,h2:2222 --task-index 0")
    if cluster is not None:
        return from_flags(cluster, task_index)
    if env.get("TF_CONFIG", "").strip():
        return parse_tf_config(env["TF_CONFIG"])
    return None


def child_settings() -> dict | None:
    """Settings of a TensorFlow process started by ``launch`` (None in any other process)."""
    raw = os.environ.get(CHILD_ENV)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


# ------------------------------------------------------------------ supervising the TensorFlow processes


def _free_ports(n: int) -> list:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _private_network() -> bool:
    """Move this process (and so its future children) into a new network namespace with only loopback, up.
    TensorFlow's gRPC server listens on 0.0.0.0; in such a namespace that is 127.0.0.1 alone. Linux only;
    False (nothing changed) when not permitted."""
    if not sys.platform.startswith("linux") or os.environ.get("EDGETL_NO_NETNS"):
        return False
    import ctypes
    import ctypes.util
    import fcntl
    import struct

    clone_newnet, clone_newuser = 0x40000000, 0x10000000
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(clone_newnet) != 0:
        # unprivileged: a user namespace first (maps this user to itself), where the new network is allowed
        if libc.unshare(clone_newuser | clone_newnet) != 0:
            return False
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        except OSError:
            pass
    try:  # bring lo up: SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = struct.pack("16sH14s", b"lo", 0, b"\0" * 14)
            flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, ifr))[1]
            fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b"\0" * 14))
    except OSError:
        return False
    return True


def _probe(address: str, timeout: float = 2.0) -> str | None:
    """None if something accepts connections at HOST:PORT, else why not (for the join-timeout message)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


class _Child:
    def __init__(self, rank: int, proc: subprocess.Popen, status_fd: int, label: str, relay: bool):
        self.rank, self.proc, self.status_fd, self.label = rank, proc, status_fd, label
        self.joined = False
        self.tail: list = []
        self.reader = None
        if relay and proc.stderr is not None:
            self.reader = threading.Thread(target=self._relay, daemon=True)
            self.reader.start()

    def _relay(self):
        """A non-chief worker's stderr: its errors are shown (prefixed), the rest kept for a crash report."""
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail = (self.tail + [line])[-40:]
            if line.startswith(("error:", "hint:")):
                ui.info(f"[{self.label}] {line}")

    def describe_exit(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "is still running"
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return f"was killed ({name})"
        return f"exited with code {rc}"


def launch(the_plan, argv: list, lock_target: Path | None, timeout: float = DEFAULT_TIMEOUT, devices=None) -> int:
    """Run ``edgetl ARGV`` as this machine's TensorFlow process(es) and supervise them. Returns the exit code
    (the chief's, or 2 with an error line when the cluster failed)."""
    from toolchain.rundir import runfolder

    local = isinstance(the_plan, LocalPlan)
    isolated = False
    if local:
        isolated = _private_network()
        ports = _free_ports(the_plan.n)
        addrs = [f"127.0.0.1:{p}" for p in ports]
        clusters = [_cluster({"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}}, "--local-workers")
                    for i in range(the_plan.n)]
    else:
        clusters = [the_plan]
    me = clusters[0] if local else the_plan
    lock = runfolder.RunLock(lock_target) if (lock_target is not None and me.chief) else None
    sweep_stale_scratch()
    scratch_root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    (scratch_root / OWNER_FILE).write_text(json.dumps(_owner()))
    children: list = []
    interrupted = {"sig": None}

    def on_signal(signum, _frame):
        interrupted["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    become_subreaper()
    try:
        if lock is not None:
            lock.acquire()
            runfolder.recover(Path(lock_target))
        threads = max(1, (os.cpu_count() or 1) // len(clusters)) if local else None
        code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
        for c in clusters:
            r, w = os.pipe()
            os.set_blocking(r, False)
            scratch = scratch_root / f"task-{c.rank}"
            scratch.mkdir()
            settings = {"status_fd": w, "timeout": timeout, "lock_held": lock is not None and c.chief,
                        "scratch": str(scratch), "threads": threads, "isolated": isolated,
                        "supervisor": os.getpid()}
            env = dict(os.environ, TF_CONFIG=json.dumps(c.tf_config), **{CHILD_ENV: json.dumps(settings)})
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            relay = local and not c.chief
            proc = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, pass_fds=(w,),
                                    stdout=subprocess.DEVNULL if relay else None,
                                    stderr=subprocess.PIPE if relay else None)
            os.close(w)
            children.append(_Child(c.rank, proc, r, me.label(c.rank), relay))
        if local:
            where = "in a private network namespace (loopback only)" if isolated else \
                "on 127.0.0.1 (note: TensorFlow's servers listen on every interface while the build runs)"
            ui.info(f"local workers {where}: " + ", ".join(
                f"{ch.label} pid {ch.proc.pid}" for ch in children))
        return _supervise(children, me, local, timeout, interrupted)
    finally:
        for ch in children:
            if ch.proc.poll() is None:
                ch.proc.kill()
                ch.proc.wait()
            try:
                os.close(ch.status_fd)
            except OSError:
                pass
        stray = end_descendants()
        if stray:
            ui.info(f"stopped {len(stray)} process(es) the workers had left running (pid {', '.join(map(str, stray))})")
        if lock is not None and lock.fd is not None:
            runfolder.recover(Path(lock_target))  # a staged folder of a killed chief goes
            lock.release()
        shutil.rmtree(scratch_root, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)


def become_subreaper() -> bool:
    """Linux: the processes this one starts that lose their parent (a fork of a worker that never ran a
    program, left behind when the worker was killed) become this process's children, so that
    ``end_descendants`` finds them; elsewhere nothing (False)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list:
    """The pids of every living descendant of process ``root`` (Linux /proc; [] elsewhere)."""
    kids: dict = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for d in names:
        stat = proc_stat(d) if d.isdigit() else None
        if stat and stat[0] not in ("Z", "X"):
            kids.setdefault(int(stat[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def end_descendants(grace: float = 5.0) -> list:
    """Kill (SIGKILL) every process still descending from this one and reap the ones that are its children;
    returns their pids. Called when the workers are done: nothing of theirs may run on (or hold the
    user's terminal and files) after the command ended."""
    left = descendants(os.getpid())
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    end = time.monotonic() + grace
    for pid in left:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not this process's child (its parent reaps it) or already reaped
                break
            if done or time.monotonic() > end:
                break
            time.sleep(0.02)
    return left


SCRATCH_PREFIX = "edgetl-workers-"
OWNER_FILE = ".owner.json"


def proc_stat(pid) -> list | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ...; Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields or None


def _start_time(pid: int):
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None if unknown: with the pid,
    it names a process even after the pid is reused."""
    try:
        return int((proc_stat(pid) or [])[19])
    except (ValueError, IndexError):
        return None


def _owner() -> dict:
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def sweep_stale_scratch(root=None) -> list:
    """Remove the workers' temporary folders (``$TMPDIR/edgetl-workers-*``) whose supervisor is gone (a
    ``kill -9`` of it runs no clean-up). Only folders of this user that hold edgetl's owner file, naming a
    process that no longer exists, are removed. Returns what was removed."""
    from edge_runtime import files

    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = sorted(root.glob(SCRATCH_PREFIX + "*"))
    except OSError:
        return removed
    for d in candidates:
        try:
            st = os.lstat(d)
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            owner = files.read_json(d / OWNER_FILE, limit=4096)
        except (OSError, ValueError, EdgetlError):
            continue
        if isinstance(owner, dict) and not _alive(owner):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def die_with_supervisor(settings: dict):
    """In a worker started by ``launch``: be killed when the supervisor dies (Linux PR_SET_PDEATHSIG), so
    a ``kill -9`` of the supervisor leaves no TensorFlow process running on (and writing) without it."""
    parent = settings.get("supervisor")
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if isinstance(parent, int) and os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def _read_status(ch: _Child):
    try:
        data = os.read(ch.status_fd, 4096)
    except (BlockingIOError, OSError):
        return
    if b"joined" in data:
        ch.joined = True


def _stop(children, sig=signal.SIGINT, grace: float = KILL_GRACE):
    """Ask every running child to stop (SIGINT), then kill what is still running after ``grace``."""
    for ch in children:
        if ch.proc.poll() is None:
            try:
                ch.proc.send_signal(sig)
            except OSError:
                pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(ch.proc.poll() is None for ch in children):
        time.sleep(0.1)
    for ch in children:
        if ch.proc.poll() is None:
            ch.proc.kill()
            ch.proc.wait()


def _fail(msg: str, hint: str) -> int:
    ui.info(f"error: {msg}")
    ui.info(f"hint: {hint}")
    return 2


def _supervise(children, me: Cluster, local: bool, timeout: float, interrupted) -> int:
    start = time.monotonic()
    chief = children[0] if local else None
    lost_at, lost, chief_done_at = None, None, None
    while True:
        for ch in children:
            if not ch.joined:
                _read_status(ch)
        if interrupted["sig"] is not None:
            ui.info("interrupted: stopping the workers")
            _stop(children)
            return 130
        running = [ch for ch in children if ch.proc.poll() is None]
        if not running:
            break
        if not all(ch.joined for ch in children) and time.monotonic() - start > timeout:
            missing = [ch for ch in children if not ch.joined]
            if local:
                names = ", ".join(ch.label for ch in missing)
            else:
                probes = [(me.label(r), _probe(a)) for r, a in enumerate(me.addresses) if r != me.rank]
                names = ", ".join(f"{lab} ({why})" for lab, why in probes if why) or "one of the others"
            _stop(children)
            return _fail(f"the cluster did not come together within {timeout:.0f} s: {names} did not join",
                         "start the same command on every worker (each with its own --task-index or TF_CONFIG); "
                         "check the addresses and that the ports are open between the machines (--worker-timeout)")
        if local and lost is None and chief.proc.poll() is None:
            for ch in children[1:]:
                if ch.proc.poll() not in (None, 0):
                    lost, lost_at = ch, time.monotonic()
                    ui.info(f"{ch.label} {ch.describe_exit()}; waiting for the chief to stop")
                    break
        if lost is not None and chief.proc.poll() is None and time.monotonic() - lost_at > LOST_GRACE:
            _stop(children)
            return _fail(f"lost {lost.label}: it {lost.describe_exit()}, and the chief did not stop by itself",
                         "nothing was written; see the worker's messages above and run the command again")
        if local and chief.proc.poll() is not None:
            # the others hand their part to the chief and end before it: one still running after the chief
            # ended waits for it in vain (a collective that never completes): stopped, the chief's code stands
            chief_done_at = chief_done_at or time.monotonic()
            if time.monotonic() - chief_done_at > LOST_GRACE:
                left = [ch for ch in running if ch is not chief]
                ui.info(f"the chief {chief.describe_exit()}; stopping {', '.join(ch.label for ch in left)}, "
                        "which cannot go on without it")
                _stop(children)
                break
        time.sleep(0.2)
    for ch in children:
        if ch.reader is not None:
            ch.reader.join(timeout=2)
    if not local:
        if children[0].proc.returncode < 0:
            return _fail(f"this worker's TensorFlow process {children[0].describe_exit()}",
                         "nothing of the previous run was changed; start the same command again on every worker")
        return children[0].proc.returncode
    rc = chief.proc.returncode
    if rc < 0:
        return _fail(f"the chief {chief.describe_exit()}", "nothing of the previous run was changed; run again")
    failed = [ch for ch in children[1:] if ch.proc.returncode != 0]
    if rc == 0 and failed:
        ui.warn(", ".join(f"{ch.label} {ch.describe_exit()}" for ch in failed) + " after the chief had its data")
    if rc != 0 and failed and not any(line.startswith("error:") for ch in failed for line in ch.tail):
        for ch in failed:
            ui.info(f"[{ch.label}] its last lines:\n" + "\n".join("  | " + line for line in ch.tail[-15:]))
    return rc
