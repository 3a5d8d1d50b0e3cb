"""The TensorFlow side of a distributed run: the strategy, the collectives, and the photos sharded over the
workers.

- ``Context`` creates the strategy: MultiWorkerMirroredStrategy for a cluster (TF_CONFIG), with every
  collective bounded by ``CommunicationOptions(timeout_seconds=...)``; MirroredStrategy for several devices
  of one machine (``--devices``, or the visible GPUs). Its collectives (all-gather, broadcast from the chief)
  are TensorFlow's own, run eagerly in the same order on every worker; on one worker they are no-ops.
  A collective that fails because a worker is gone becomes one error naming that worker.
- ``ShardedImages`` stands where a Dataset's memory-mapped photo cache stands: each worker holds only the
  photos it decoded (file ``j`` of the scanned list belongs to worker ``j % N``). Asking it for rows
  (``images[rows]``) gathers them from their owners; ``map_rows(fn, rows)`` runs ``fn`` on each worker's own
  rows and gathers the results in the order asked (features, probabilities): the sharded evaluation.
- ``build_dataset``/``load_dataset``: the sharded twins of data.build/data.load.

Every function here that gathers must be called by every worker, in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgetlError

from toolchain.core import data as data_mod
from toolchain.core import modeling
from toolchain.rundir import runfolder
from toolchain import ui

CHUNK_BYTES = 32 << 20  # one collective moves at most this much per worker


class Context:
    """One process's view of a distributed run (a cluster, or several devices of this machine)."""

    def __init__(self, cluster=None, devices: str | None = None, timeout: float = 600.0, settings: dict | None = None):
        self.cluster = cluster
        self.devices_arg = devices
        self.timeout = float(timeout)
        self.settings = settings or {}
        self.n = cluster.n if cluster is not None else 1
        self.rank = cluster.rank if cluster is not None else 0
        self.chief = self.rank == 0
        self.strategy = None
        self.kind = None
        self.devices: list = []
        self.n_local = 1
        self.tf = None
        scratch = self.settings.get("scratch")
        self.scratch = Path(scratch) if scratch else None

    # -------------------------------------------------------------- start

    def start(self):
        """Import TensorFlow, choose the devices, create the strategy and wait for every worker (bounded by
        the supervisor). Must run before any other TensorFlow operation."""
        tf, _ = modeling.import_keras()
        self.tf = tf
        threads = self.settings.get("threads")
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        chosen = select_devices(self.devices_arg)
        opts = tf.distribute.experimental.CommunicationOptions(timeout_seconds=self.timeout)
        if self.cluster is not None:
            self.kind = "MultiWorkerMirroredStrategy"
            with self.guard():
                self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=opts)
                self.devices = [_short(d) for d in self.strategy.extended.worker_devices]
                self.n_local = len(self.devices)
                joined = self._allgather_raw(np.array([[self.rank, self.n_local]], np.int64))
            if sorted(joined[:, 0].tolist()) != list(range(self.n)) or len(set(joined[:, 1].tolist())) != 1:
                raise EdgetlError(f"the workers disagree about the cluster (ranks {joined[:, 0].tolist()}, devices per "
                                  f"worker {joined[:, 1].tolist()})",
                                  hint="give every worker the same cluster list and the same number of devices")
            fd = self.settings.get("status_fd")
            if fd is not None:
                try:
                    os.write(int(fd), b"joined\n")
                    os.close(int(fd))
                except OSError:
                    pass
        else:
            self.kind = "MirroredStrategy"
            self.strategy = tf.distribute.MirroredStrategy(chosen)
            self.devices = [_short(d) for d in self.strategy.extended.worker_devices]
            self.n_local = len(self.devices)
        ui.info(f"distribution: {self.kind}, {self.n} worker(s) x {self.n_local} device(s) "
                f"({', '.join(self.devices)}); this is task {self.rank}{' (chief)' if self.chief else ''}")
        return self

    def describe(self) -> dict:
        return {"strategy": self.kind, "workers": self.n, "task_index": self.rank, "devices": list(self.devices),
                "replicas": self.n * self.n_local}

    def tag(self) -> str:
        """A few words for progress lines."""
        return f"[{self.n} workers]" if self.n > 1 else f"[{self.n_local} devices]"

    # -------------------------------------------------------------- errors

    @contextlib.contextmanager
    def guard(self):
        """TensorFlow's errors about a lost or silent peer become one EdgetlError naming it."""
        tf = self.tf or modeling.import_keras()[0]
        try:
            yield
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError, tf.errors.InternalError, tf.errors.FailedPreconditionError) as e:
            raise self.lost_error(e) from None

    def lost_error(self, e) -> EdgetlError:
        text = str(getattr(e, "message", e))
        names = self.cluster.names if self.cluster is not None else []
        lost = []
        for m in re.finditer(r"/job:(\w+)/replica:\d+/task:(\d+)", text):
            name = f"/job:{m.group(1)}/replica:0/task:{m.group(2)}"
            if name in names and names.index(name) != self.rank and names.index(name) not in lost:
                lost.append(names.index(name))
        unhealthy = "unhealthy" in text or "heartbeat" in text
        if lost and (unhealthy or "Collective ops is aborted" in text or "connect" in text.lower()):
            who = ", ".join(self.cluster.label(r) for r in lost)
            return EdgetlError(f"lost {who}: it stopped answering (crashed, killed or cut off); this task stops too",
                               hint="see that worker's messages; start the same command again on every worker "
                                    "(the previous run is untouched)")
        if isinstance(e, self.tf.errors.DeadlineExceededError) or "timed out" in text.lower() \
                or "deadline" in text.lower():
            return EdgetlError(f"a worker did not reach the same step within {self.timeout:.0f} s "
                               f"({text.splitlines()[0][:200]})",
                               hint="a worker is stuck or much slower; raise --worker-timeout, or check its messages")
        return EdgetlError(f"the cluster failed: {text.splitlines()[0][:300] if text else type(e).__name__}",
                           hint="see every worker's messages; start the same command again on every worker")

    # -------------------------------------------------------------- collectives (every worker, same order)

    def _allgather_raw(self, x: np.ndarray) -> np.ndarray:
        """Concatenate ``x`` (float32/float64/int32/int64, rows on axis 0, any count) over the workers."""
        tf, st = self.tf, self.strategy
        t = tf.constant(x)
        first_local = self.rank * self.n_local

        def value(ctx):
            return t if ctx.replica_id_in_sync_group == first_local else t[:0]

        with self.guard():
            v = st.experimental_distribute_values_from_function(value)
            return st.gather(v, axis=0).numpy()

    def allgather(self, x: np.ndarray) -> list:
        """Every worker's ``x`` (same dtype and trailing shape, any number of rows), in rank order. Large
        arrays go in several collectives; uint8/bool travel packed in int32."""
        x = np.ascontiguousarray(x)
        if self.n == 1:
            return [x]
        sizes = self._allgather_raw(np.array([x.shape[0]], np.int64)).tolist()
        trail, dtype = x.shape[1:], x.dtype
        row_bytes = max(1, int(np.prod(trail, dtype=np.int64)) * dtype.itemsize)
        wire = _to_wire(x)
        chunks = max(1, -(-max(sizes) * row_bytes // CHUNK_BYTES))
        pieces = [[] for _ in range(self.n)]
        for c in range(chunks):
            lo = [s * c // chunks for s in sizes]
            hi = [s * (c + 1) // chunks for s in sizes]
            got = self._allgather_raw(wire[lo[self.rank] : hi[self.rank]])
            at = 0
            for w in range(self.n):
                k = hi[w] - lo[w]
                pieces[w].append(got[at : at + k])
                at += k
        return [_from_wire(np.concatenate(p) if p else wire[:0], dtype, trail) for p in pieces]

    def allgather_bytes(self, b: bytes) -> list:
        if self.n == 1:
            return [b]
        lengths = self._allgather_raw(np.array([len(b)], np.int64)).tolist()
        words = np.frombuffer(b + b"\0" * ((-len(b)) % 4), np.int32)
        parts = self.allgather(words)
        return [p.tobytes()[:k] for p, k in zip(parts, lengths)]

    def allgather_json(self, obj) -> list:
        return [json.loads(p.decode("utf-8")) for p in self.allgather_bytes(json.dumps(obj).encode("utf-8"))]

    def broadcast_bytes(self, b: bytes | None) -> bytes:
        return self.allgather_bytes(b if self.chief else b"")[0]

    def broadcast_json(self, obj):
        return self.allgather_json(obj if self.chief else None)[0]

    def broadcast_arrays(self, arrays: list) -> list:
        """The chief's arrays on every worker (e.g. model weights)."""
        if self.n == 1:
            return arrays
        arrays = [np.asarray(a) for a in arrays]
        out = [None] * len(arrays)
        for dtype in sorted({a.dtype.str for a in arrays}):  # one collective per dtype, not per array
            which = [i for i, a in enumerate(arrays) if a.dtype.str == dtype]
            flat = np.concatenate([arrays[i].ravel() for i in which]) if which else np.zeros(0, dtype)
            got = self.allgather(flat.reshape(1, -1) if self.chief else np.zeros((0, flat.size), flat.dtype))[0].ravel()
            at = 0
            for i in which:
                out[i] = got[at : at + arrays[i].size].reshape(arrays[i].shape)
                at += arrays[i].size
        return out

    def together(self, fn):
        """Run ``fn`` on every worker; if it raises an EdgetlError on any, every worker raises it (so a bad
        input stops the whole cluster with the same message, instead of looking like a lost worker)."""
        err, result = None, None
        try:
            result = fn()
        except EdgetlError as e:
            err = {"message": e.message, "hint": e.hint, "code": e.exit_code}
        errs = self.allgather_json(err) if self.n > 1 else [err]
        for r, e in enumerate(errs):
            if e is not None:
                where = "" if r == self.rank or self.n == 1 else f"{self.cluster.label(r)}: "
                raise _error(where + e["message"], e["hint"], e["code"])
        return result

    def chief_decides(self, fn):
        """``fn()`` on the chief (its result, JSON, or its EdgetlError) for every worker."""
        res = {"ok": None}
        if self.chief:
            try:
                res = {"ok": fn()}
            except EdgetlError as e:
                res = {"error": {"message": e.message, "hint": e.hint, "code": e.exit_code}}
        res = self.broadcast_json(res) if self.n > 1 else res
        if "error" in res:
            e = res["error"]
            raise _error(e["message"], e["hint"], e["code"])
        return res["ok"]

    def build_dataset(self, data_dir, run_dir: Path, cfg, write_run: bool):
        return build_dataset(data_dir, run_dir, cfg, self, write_run)

    def load_dataset(self, split_doc: dict, run_dir: Path):
        return load_dataset(split_doc, run_dir, self)

    def shard_positions(self, fn, n: int, empty_shape, dtype=np.float32) -> np.ndarray:
        """``fn(indices)`` for positions ``rank::N`` of ``range(n)`` on each worker, gathered in order."""
        idx = np.arange(self.rank, n, self.n)
        local = np.asarray(fn(idx), dtype) if len(idx) else np.zeros(empty_shape, dtype)
        parts = self.allgather(local)
        out = np.empty((n,) + tuple(parts[0].shape[1:]), dtype)
        for w, p in enumerate(parts):
            out[w::self.n] = p
        return out


class Solo:
    """A one-process run: a cluster of one. The same steps as several workers, with collectives that are
    the identity (the gather of one shard is the shard, a broadcast changes nothing, the chief is the only
    worker) and no tf.distribute strategy: the photos stay in the run's memory-mapped cache and stage 2 is
    Keras' own fit."""

    n, rank, chief, n_local = 1, 0, True, 1
    cluster = None
    scratch = None

    def describe(self) -> dict:
        return plain_distribution()

    def tag(self) -> str:
        return ""

    def guard(self):
        return contextlib.nullcontext()

    def together(self, fn):
        return fn()

    def chief_decides(self, fn):
        return fn()

    def broadcast_bytes(self, b: bytes | None) -> bytes:
        return b

    def shard_positions(self, fn, n: int, empty_shape, dtype=np.float32) -> np.ndarray:
        return np.asarray(fn(np.arange(n)), dtype) if n else np.zeros(empty_shape, dtype)

    def build_dataset(self, data_dir, run_dir: Path, cfg, write_run: bool = True):
        return data_mod.build(data_dir, run_dir, cfg)

    def load_dataset(self, split_doc: dict, run_dir: Path):
        return data_mod.load(run_dir)


def local_context(devices: str | None):
    """The context of a run in this one process (TensorFlow is imported here): several devices
    (--devices, or several visible GPUs) train together with MirroredStrategy; otherwise a cluster of one."""
    if not wants_strategy(devices):
        select_devices(devices)
        return Solo()
    return Context(None, devices).start()


def _error(message, hint, code):
    from edge_runtime.errors import GateFailed

    cls = GateFailed if code == 1 else EdgetlError
    return cls(message, hint=hint)


def _to_wire(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as a 2-D array of a dtype the collectives carry (uint8 and others: packed in int32)."""
    width = int(np.prod(x.shape[1:], dtype=np.int64))
    if x.dtype in (np.float32, np.float64, np.int32, np.int64):
        return x.reshape(len(x), width)
    raw = np.ascontiguousarray(x.reshape(len(x), width)).view(np.uint8).reshape(len(x), width * x.dtype.itemsize)
    pad = (-raw.shape[1]) % 4
    if pad:
        raw = np.concatenate([raw, np.zeros((len(raw), pad), np.uint8)], axis=1)
    return np.ascontiguousarray(raw).view(np.int32)


def _from_wire(w: np.ndarray, dtype, trail) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64, np.int32, np.int64):
        return w.astype(dtype, copy=False).reshape((len(w),) + tuple(trail))
    nbytes = int(np.prod(trail, dtype=np.int64)) * dtype.itemsize
    raw = np.ascontiguousarray(w).view(np.uint8).reshape(len(w), -1)[:, :nbytes]
    return np.ascontiguousarray(raw).view(dtype).reshape((len(w),) + tuple(trail))


def _short(device: str) -> str:
    m = re.search(r"device:([A-Z]+:\d+)$", device)
    return m.group(1) if m else device


def select_devices(spec: str | None):
    """Apply ``--devices`` before TensorFlow starts: ``all`` (default: every GPU, else the CPU), ``cpu``,
    ``gpu:0,gpu:1`` (or ``0,1``), or ``cpu:0,cpu:1`` (the CPU split into that many logical devices, to try
    several-device training without GPUs). Returns the device names for MirroredStrategy (None: its
    default)."""
    parsed = parse_devices(spec)
    tf = modeling.import_keras()[0]
    if parsed is None:
        return None
    _, idx = parsed
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    gpus = tf.config.list_physical_devices("GPU")
    if items == ["cpu"]:
        tf.config.set_visible_devices([], "GPU")
        return ["/cpu:0"]
    if all(i.startswith("cpu:") for i in items):
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()
                                                             for _ in items])
        return [f"/cpu:{i}" for i in range(len(items))]
    bad = [i for i in idx if not 0 <= i < len(gpus)]
    if bad:
        raise EdgetlError(f"--devices {spec}: this machine has {len(gpus)} GPU(s) visible to TensorFlow",
                          hint='check `nvidia-smi` and that TensorFlow sees them (pip install "edgetl[gpu]")')
    tf.config.set_visible_devices([gpus[i] for i in idx], "GPU")
    return [f"/gpu:{k}" for k in range(len(idx))]


_DEVICE = re.compile(r"cpu(?::([0-9]{1,3}))?|gpu:([0-9]{1,3})|([0-9]{1,3})")


def parse_devices(spec: str | None):
    """``--devices`` read without TensorFlow (so a typo fails at once): None for all, else (kind, indices)
    with kind "cpu" (``cpu``: one device; ``cpu:0,cpu:1``: the CPU split in two) or "gpu"."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    hint = "e.g. --devices gpu:0,gpu:1, --devices cpu, --devices cpu:0,cpu:1, or --devices all"
    matches = [_DEVICE.fullmatch(i) for i in items]
    if not items or not all(matches):
        raise EdgetlError(f"--devices {spec!r} is not a device list", hint=hint)
    kinds = {"cpu" if i.startswith("cpu") else "gpu" for i in items}
    if len(kinds) != 1 or (kinds == {"cpu"} and len(items) > 1 and "cpu" in items):
        raise EdgetlError(f"--devices {spec!r} mixes kinds of devices", hint=hint)
    idx = [int(m.group(1) or m.group(2) or m.group(3) or 0) for m in matches]
    if len(set(idx)) != len(idx):
        raise EdgetlError(f"--devices {spec!r} names a device twice", hint=hint)
    return kinds.pop(), idx


def wants_strategy(devices: str | None) -> bool:
    """True when one process should use MirroredStrategy: --devices chose several devices, or (without
    --devices) several GPUs are visible. A single GPU (or none) keeps the plain path."""
    tf = modeling.import_keras()[0]
    if devices is not None and devices.strip().lower() not in ("", "all"):
        items = [s for s in devices.split(",") if s.strip()]
        return len(items) > 1
    return len(tf.config.list_physical_devices("GPU")) > 1


def plain_distribution() -> dict:
    """report.json's ``distribution`` for a one-process run."""
    tf = modeling.import_keras()[0]
    gpus = tf.config.list_logical_devices("GPU")
    return {"strategy": "default", "workers": 1, "task_index": 0,
            "devices": [_short(gpus[0].name)] if gpus else ["CPU:0"], "replicas": 1}


# ------------------------------------------------------------------ photos sharded over the workers


class ShardedImages:
    """The photo cache of a distributed run: row ``r`` lives on worker ``owner[r]`` at ``local[index[r]]``."""

    distributed = True

    def __init__(self, ctx: Context, local, owner: np.ndarray, index: np.ndarray, shape):
        self.ctx, self.local = ctx, local
        self.owner = np.asarray(owner, np.int64)
        self.index = np.asarray(index, np.int64)
        self.shape = tuple(shape)  # (rows of the whole run, S, S, 3)
        self.dtype = np.dtype(np.uint8)
        self.view = _OwnRows(local, self.index)

    def __len__(self):
        return self.shape[0]

    def mine(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        return rows[self.owner[rows] == self.ctx.rank]

    def map_rows(self, fn, rows, empty_shape, dtype=np.float32, axis: int = 0) -> np.ndarray:
        """``fn(images, my_rows)`` on this worker's rows among ``rows`` (in their order; ``images`` indexed by
        run row, as a Dataset's cache), gathered into one array aligned with ``rows`` (along ``axis``)."""
        rows = np.asarray(rows, np.int64)
        if self.ctx.n == 1:
            return np.asarray(fn(self.view, rows), dtype) if len(rows) else np.zeros(empty_shape, dtype)
        mine = self.mine(rows)
        local = np.asarray(fn(self.view, mine), dtype) if len(mine) else np.zeros(empty_shape, dtype)
        parts = [np.moveaxis(p, axis, 0) for p in self.ctx.allgather(np.ascontiguousarray(np.moveaxis(local, axis, 0)))]
        out = np.empty((len(rows),) + parts[0].shape[1:], dtype)
        who = self.owner[rows]
        for w, p in enumerate(parts):
            out[who == w] = p
        return np.moveaxis(out, 0, axis)

    def __getitem__(self, rows):
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1:
            raise TypeError("sharded photos are read by a list of rows")
        return self.map_rows(lambda im, r: np.asarray(im[r]), rows, (0,) + self.shape[1:], np.uint8)


class _OwnRows:
    """This worker's photos, indexed by run row like a whole cache (only its own rows are valid)."""

    def __init__(self, local, index):
        self.local, self.index = local, index

    def __getitem__(self, rows):
        return self.local[self.index[rows]]


def _decode(paths: list, images, size: int, policy: str, desc: str) -> dict:
    """Decode ``paths`` into ``images[i]``; returns {i: (reason or None, sha256 or None)}."""
    out = {}
    with ui.Progress(len(paths), desc) as bar, ThreadPoolExecutor(data_mod.decode_workers()) as pool:
        for i, (px, digest, reason) in enumerate(pool.map(lambda p: data_mod.read_one(p, size, policy), paths,
                                                         chunksize=8)):
            if reason is None:
                images[i] = px
            out[i] = (reason, digest)
            bar.update()
    return out


def build_dataset(data_dir, run_dir: Path, cfg, ctx: Context, write_run: bool):
    """data.build on N workers: each decodes its files (``j % N``), the outcomes are gathered, the chief
    decides the split, every worker gets the same Dataset (its photos sharded). ``write_run``: this worker
    writes split.json, labels.txt and its shard of the cache into ``run_dir`` (the chief)."""
    data_dir = Path(data_dir).resolve()
    run_dir = Path(run_dir)
    layout, classes, groups = data_mod.scan(data_dir, warn=False)  # the precheck said what is ignored
    classes, groups = data_mod.with_unknown(classes, groups, cfg)
    all_files = [(p, lab, g) for g, items in groups.items() for p, lab in items]
    listing = hashlib.sha1("\n".join(f"{data_mod.relpath(p, data_dir)}|{lab}|{g}" for p, lab, g in all_files)
                           .encode("utf-8")).hexdigest()
    seen = ctx.allgather_json(listing)
    differ = [r for r, h in enumerate(seen) if h != seen[0]]
    if differ:
        raise EdgetlError(f"{', '.join(ctx.cluster.label(r) for r in differ)} see(s) a different data folder than "
                          f"the chief ({len(all_files)} files here)",
                          hint="every worker must read the same data folder (a shared filesystem, or identical copies)")
    n, size = len(all_files), cfg.input_size()
    mine = list(range(ctx.rank, n, ctx.n))
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / "images.u8.tmp"
    local = data_mod.create_cache(tmp, (max(len(mine), 1), size, size, 3))
    got = _decode([all_files[j][0] for j in mine], local, size, cfg.resize,
                  "decoding photos" + (f" (shard {ctx.rank + 1}/{ctx.n})" if ctx.n > 1 else ""))
    local.flush()
    del local
    outcome = {str(j): got[i] for i, j in enumerate(mine)}
    merged = {}
    for part in ctx.allgather_json(outcome):
        merged.update(part)
    ok_rows, hashes, skipped = {}, {}, []
    owner, index = [], []
    local_pos = {j: i for i, j in enumerate(mine)}
    for j, (path, label, group) in enumerate(all_files):
        reason, digest = merged[str(j)]
        rel = data_mod.relpath(path, data_dir)
        if reason is not None:
            skipped.append({"path": rel, "reason": reason})
            continue
        ok_rows[rel] = (label, group, len(owner))
        hashes[rel] = digest
        owner.append(j % ctx.n)
        index.append(local_pos.get(j, -1))
    final = cache_dir / "images.npy"
    runfolder.replace_file(tmp, final)

    def decide():
        return data_mod.organise(data_dir, layout, classes, groups, all_files, ok_rows, skipped, cfg)

    try:
        files, test_is_val = ctx.chief_decides(decide)
    except EdgetlError:
        final.unlink(missing_ok=True)
        raise
    images = ShardedImages(ctx, np.load(final, mmap_mode="r"), owner, index, (len(owner), size, size, 3))
    ds = data_mod.Dataset(data_dir, classes, layout, size, cfg.resize, images, files, skipped, [], test_is_val,
                          hashes={rel: hashes[rel] for items in files.values() for rel, _, _ in items})
    data_mod.warn_quality(ds, hashes)
    if test_is_val:
        ds.notes.append("no test/ folder: the val split is also used as the test split")
        ui.warn(ds.notes[-1])
    if write_run:
        data_mod.write_split(ds, run_dir, cfg)
        _write_shard_index(ds, run_dir, ctx)
    data_mod.print_counts(ds)
    return ds


def _write_shard_index(ds, run_dir: Path, ctx: Context):
    """The run's cache holds this worker's shard only: say so, so a later one-process command decodes the
    photos again instead of trusting it."""
    if ctx.n == 1:
        return
    rows = {rel: int(ds.images.index[r]) for items in ds.files.values() for rel, _, r in items
            if ds.images.owner[r] == ctx.rank}
    runfolder.write_json(run_dir / "cache" / "index.json",
                         {"image_size": ds.image_size, "resize": ds.resize, "rows": rows,
                          "shard": {"task": ctx.rank, "workers": ctx.n}})


def load_dataset(doc: dict, run_dir: Path, ctx: Context):
    """data.load on N workers, from the chief's split.json ``doc`` (checked whole by schema.read_split):
    each worker decodes its rows again; photos whose content changed since the run was made are named."""
    from toolchain.rundir import schema

    schema.check(doc, schema.split_shape(doc), "split.json", schema.rebuild_hint("RUN", doc.get("data_dir")))
    data_dir = Path(doc["data_dir"])
    items = [rel for s in doc["files"].values() for rel, _ in s]
    size, policy = doc["image_size"], doc["resize"]
    mine = list(range(ctx.rank, len(items), ctx.n))
    cache_dir = Path(run_dir) / "cache-shard"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / "images.u8.tmp"
    local = data_mod.create_cache(tmp, (max(len(mine), 1), size, size, 3))
    got = _decode([data_dir / items[j] for j in mine], local, size, policy,
                  "decoding photos" + (f" (shard {ctx.rank + 1}/{ctx.n})" if ctx.n > 1 else ""))
    local.flush()
    del local
    bad = [{"path": items[j], "reason": got[i][0]} for i, j in enumerate(mine) if got[i][0] is not None]
    recorded = doc.get("sha256") or {}
    changed = [items[j] for i, j in enumerate(mine) if got[i][0] is None and items[j] in recorded
               and recorded[items[j]] != got[i][1]]
    bad = [b for part in ctx.allgather_json(bad) for b in part]
    changed = sorted(c for part in ctx.allgather_json(changed) for c in part)
    if bad:
        raise EdgetlError(f"{data_dir / bad[0]['path']}: {bad[0]['reason']} (it was readable when the run was made)",
                          hint="restore the data folder recorded in split.json (on every worker), or start a new run")
    owner = np.arange(len(items)) % ctx.n
    index = np.full(len(items), -1, np.int64)
    index[mine] = np.arange(len(mine))
    images = ShardedImages(ctx, np.load(tmp, mmap_mode="r"), owner, index, (len(items), size, size, 3))
    rows = {rel: r for r, rel in enumerate(items)}
    files = {s: [[rel, lab, rows[rel]] for rel, lab in v] for s, v in doc["files"].items()}
    notes = list(doc.get("notes", []))
    note = data_mod.changed_photos_note(changed, len(items), doc)
    if note:
        notes.append(note)
    return data_mod.Dataset(data_dir, doc["classes"], doc["layout"], size, policy, images, files,
                            doc.get("skipped", []), notes, doc.get("test_is_val", "test" not in doc["files"]),
                            hashes=dict(recorded))
