"""Two-stage transfer learning.

Stage 1, feature extraction: the base is frozen, so its pooled features are a fixed function of each
photo. They are computed once (plus augmented views with ``augment``) and the head is trained on them:
the same model as fitting the full graph with the base frozen, at a fraction of the cost.

Stage 2, fine-tuning: the base is unfrozen from ``fine_tune_from`` (BatchNorm layers stay frozen and in
inference mode), recompiled with Adam at ``fine_tune_lr``, and trained on the cached photos. The result
is kept only if validation improves (accuracy, then loss).

Below the first layer stage 2 trains, every layer is frozen and in inference mode, so without augmentation
the output of that prefix is a fixed function of each photo, like stage 1's features. A build computes it
once, in the same pass as stage 1's features, into a file (PrefixCache), and stage 2 trains the rest of
the network on it: the same model (same batches, same steps, weights within float rounding), without
running the prefix again at every step. With ``augment`` (a new view of every photo each epoch) and on
several workers stage 2 trains the whole graph on the photos, as before.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgetlError

from toolchain.core import data as data_mod
from toolchain.core import metrics
from toolchain.core import modeling
from toolchain.rundir import runfolder
from toolchain import ui


def _progress(stage: str, total: int, val_steps: int):
    """Keras callback: a progress bar per epoch over its training and validation batches (elapsed, rate,
    ETA, running loss and accuracy; see ui.Progress), ending in the epoch's summary line."""
    _, keras = modeling.import_keras()

    class StepProgress(keras.callbacks.Callback):
        bar = None

        def on_epoch_begin(self, epoch, logs=None):
            steps = int((self.params or {}).get("steps") or 0)
            self.bar = ui.Progress(steps + val_steps, f"{stage} epoch {epoch + 1}/{total}", unit=" steps")

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                logs = logs or {}
                self.bar.update(1, postfix=f"loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}")

        def on_test_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1, postfix="validating")

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if self.bar is not None:
                self.bar.postfix = (f"loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}  "
                                    f"val_loss {logs.get('val_loss', 0):.4f}  val_acc {logs.get('val_accuracy', 0):.4f}")
                self.bar.close()
                self.bar = None

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StepProgress()


def _early_stopping(keras, patience: int):
    """Early stopping on val loss with the best epoch's weights restored (None when ``patience`` is 0)."""
    if patience <= 0:
        return None
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)


def _outcome(es, history: dict, epochs: int) -> dict:
    """Which epoch's weights the fit ended with (1-based), and whether early stopping ended it."""
    ran = len(history.get("loss", []))
    if es is not None and getattr(es, "best_weights", None) is not None:
        kept = int(es.best_epoch) + 1  # EarlyStopping(restore_best_weights=True) restored it
    else:
        kept = ran
    return {"kept_epoch": kept, "stopped_early": ran < epochs}


def extract_features(extractor, images, rows: np.ndarray, desc: str, batch_size: int = 64) -> np.ndarray:
    """Pooled base features for the cached photos ``rows`` (in that order). Every batch has the same
    shape (the last is padded), so the compiled graph is traced once."""
    if getattr(images, "distributed", False):  # photos sharded over workers: each does its own, gathered
        return images.map_rows(lambda im, r: extract_features(extractor, im, r, desc, batch_size), rows,
                               (0, int(extractor.output.shape[-1])))
    rows = np.asarray(rows, np.int64)
    out = None
    with ui.Progress(len(rows), desc) as bar:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            x = images[chunk].astype(np.float32)
            if len(chunk) < batch_size and s > 0:
                x = np.concatenate([x, np.zeros((batch_size - len(chunk),) + x.shape[1:], np.float32)])
            f = np.asarray(extractor.predict_on_batch(x))[: len(chunk)]
            if out is None:
                out = np.empty((len(rows), f.shape[1]), np.float32)
            out[s : s + len(chunk)] = f
            bar.update(len(chunk))
    return out if out is not None else np.zeros((0, 0), np.float32)


def augmented_features(extractor, images, rows, labels, cfg, batch_size: int = 64):
    """Features of ``augment_views`` random views of every training photo (seeded)."""
    if getattr(images, "distributed", False):  # photos sharded over workers: views of each worker's rows
        dim, views = int(extractor.output.shape[-1]), cfg.augment_views
        f = images.map_rows(lambda im, r: augmented_features(extractor, im, r, np.zeros(len(r)), cfg, batch_size)[0]
                            .reshape(views, len(r), dim), rows, (views, 0, dim), axis=1)
        return f.reshape(-1, dim), np.tile(np.asarray(labels, np.int64), views)
    feats, labs = [], []
    total = len(rows) * cfg.augment_views
    with ui.Progress(total, "augmented views") as bar:
        buf, buf_lab = [], []
        for v in range(cfg.augment_views):
            for r, lab in zip(rows, labels):
                rng = np.random.default_rng([cfg.seed, int(r), v])
                buf.append(data_mod.augment(np.asarray(images[r]), rng))
                buf_lab.append(lab)
                if len(buf) == batch_size:
                    feats.append(np.asarray(extractor.predict_on_batch(np.stack(buf).astype(np.float32))))
                    labs += buf_lab
                    bar.update(len(buf))
                    buf, buf_lab = [], []
        if buf:
            feats.append(np.asarray(extractor.predict_on_batch(np.stack(buf).astype(np.float32))))
            labs += buf_lab
            bar.update(len(buf))
    return np.concatenate(feats), np.asarray(labs, np.int64)


def second_policy(policy: str) -> str:
    """The second fit ``--train-views both`` trains on: the centre crop, or MediaPipe's fit for the crop
    policy (the two ways consumers frame a photo: edge_runtime's crop, MediaPipe's and the Task Library's
    whole frame)."""
    return "mediapipe" if policy == "crop" else "crop"


class SecondViews:
    """``--train-views both``: every training photo decoded again and fitted by ``second_policy``, as rows
    after the photo cache's: indexed like the cache, rows 0..N-1 are the cache's, rows N.. the second
    views. ``alt[i]`` is the row of the second view of the i-th training photo of ``rows``, -1 when that
    file changed since it was decoded or cannot be read now (it keeps one view). The pixels are in an
    unnamed file (nothing is left behind)."""

    def __init__(self, ds, cfg, folder=None):
        import hashlib
        import tempfile
        from concurrent.futures import ThreadPoolExecutor

        from edge_runtime import preprocess

        self.images, self.n = ds.images, len(ds.images)
        self.rows = ds.rows("train")
        self.policy = second_policy(ds.resize)
        size = ds.image_size
        entries = ds.files["train"]
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - open as long as the views are used
        self.extra = np.memmap(self._file, np.uint8, "w+", shape=(max(len(entries), 1), size, size, 3))
        self.alt = np.full(len(entries), -1, np.int64)

        def one(entry):
            rel = entry[0]
            try:
                data = preprocess.read_file(ds.data_dir / rel)
                if ds.hashes.get(rel) not in (None, hashlib.sha256(data).hexdigest()):
                    return None  # the file changed since it was decoded: its first view only
                return preprocess.fit(preprocess.decode_image(data), size, self.policy)
            except (OSError, ValueError, EdgetlError):
                return None

        k = 0
        with ui.Progress(len(entries), f"second views ({self.policy})") as bar, \
                ThreadPoolExecutor(data_mod.decode_workers()) as pool:
            for i, px in enumerate(pool.map(one, entries, chunksize=8)):
                if px is not None:
                    self.extra[k] = px
                    self.alt[i] = self.n + k
                    k += 1
                bar.update()
        self.count = k
        self.shape = (self.n + len(entries),) + tuple(ds.images.shape[1:])

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.asarray(rows, np.int64)
        if rows.ndim == 0:
            return self.images[rows] if rows < self.n else self.extra[rows - self.n]
        out = np.empty((len(rows),) + self.shape[1:], np.uint8)
        low = rows < self.n
        if low.any():
            out[low] = self.images[rows[low]]
        if not low.all():
            out[~low] = self.extra[rows[~low] - self.n]
        return out

    def matches(self, ds) -> bool:
        """True while the training split is the one these views were made for."""
        return ds.images is self.images and np.array_equal(self.rows, ds.rows("train"))


def second_views(ds, cfg, folder=None):
    """The training photos' second views (``SecondViews``), made once per split; None unless
    ``--train-views both``."""
    if cfg.train_views != "both" or not len(ds.rows("train")):
        return None
    if getattr(ds.images, "distributed", False):
        raise EdgetlError("--train-views both does not run on several workers yet",
                          hint="leave out --train-views both, or build in one process")
    if ds.views is None or not ds.views.matches(ds):
        ds.views = SecondViews(ds, cfg, folder)
    return ds.views


PREFIX_SWITCH = "EDGETL_PREFIX_CACHE"  # "0": stage 2 always trains the whole graph on the photos (as before)


class PrefixCache:
    """The outputs of the frozen prefix of the base (every layer below the first one stage 2 trains: the
    boundary tensors the layers above it read, e.g. ``block_11_expand_relu`` and the residual
    ``block_10_project_BN`` for ``--fine-tune-from 100``) for every photo of a run, float32, in one file
    in ``folder`` (the run's cache folder). The file has no name (O_TMPFILE; elsewhere it is unlinked at
    once), so nothing of it ever appears in the run folder and a killed process leaves nothing behind.
    Rows are read back by file reads, so the file lives in the page cache and not in the process's memory,
    and memory does not grow with the dataset. ``close`` frees it. Made for one model (its layers are shared by the models over the boundary tensors)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / "(the frozen prefix's outputs)"
        self.ready = False
        self.model = None
        self._file = None
        self._lock = None
        self._needed = []
        self._shapes = []
        self._record = 0
        self._at = 0  # the next free record of the file
        self._slot = None
        self._fill_model = None
        self._models = {}

    def usable(self, ds, cfg) -> bool:
        """Stage 2 trains on the prefix's outputs only when they never change: no augmentation, and the
        photos in this process (several workers train the graph, ctl.py). EDGETL_PREFIX_CACHE=0 turns it off."""
        if os.environ.get(PREFIX_SWITCH, "1").strip() == "0":
            return False
        return cfg.fine_tune_epochs > 0 and not cfg.augment and not getattr(ds.images, "distributed", False)

    def start(self, model, ds, cfg) -> bool:
        """Find the prefix of ``model`` for ``cfg.fine_tune_from`` and make room for every photo of ``ds``.
        False (nothing cached: stage 2 trains on the photos) when there is nothing to gain or no room."""
        _, keras = modeling.import_keras()
        self.close()
        base = model.get_layer(modeling.BASE_NAME)
        layers = base.layers
        first = modeling.fine_tune_index(base, cfg.fine_tune_from)
        cut = next((i for i in range(first, len(layers)) if layers[i].weights
                    and not isinstance(layers[i], keras.layers.BatchNormalization)), len(layers))
        if cut <= 1:  # the prefix would be the photo itself
            return False
        produced = {id(t): t for layer in layers[:cut] for t in _tensors(layer.output)}
        needed = []
        for t in [t for layer in layers[cut:] for t in _tensors(layer.input)] + _tensors(base.output):
            if id(t) in produced and all(t is not n for n in needed):
                needed.append(t)
        shapes = [tuple(int(d) for d in t.shape[1:]) for t in needed]
        record = sum(int(np.prod(s)) for s in shapes) * 4
        rows = _all_rows(ds)
        nbytes = record * len(rows)
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            free = None
        if free is not None and free < nbytes + (256 << 20):
            ui.info(f"  (stage 2 trains on the photos: {self.folder} has {free / 2**20:.0f} MB free, the outputs of "
                    f"the frozen layers would take {nbytes / 2**20:.0f} MB)")
            return False
        import tempfile
        import threading

        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=self.folder, buffering=0)  # noqa: SIM115 - open until close()
        self._lock = threading.Lock()
        self.model, self._needed, self._shapes, self._record, self._at = model, needed, shapes, record, 0
        self._slot = np.full(max(len(ds.images), int(rows.max(initial=-1)) + 1), -1, np.int64)
        inner = keras.Model(base.inputs, needed + [base.output])
        outs = inner(model.get_layer("to_unit_range").output, training=False)
        self._fill_model = keras.Model(model.inputs, list(outs[:-1]) + [model.get_layer("pool")(outs[-1])])
        return True

    def fill(self, ds, rows_first, desc: str, batch_size: int = 64) -> np.ndarray:
        """Run the prefix once on every photo of the run, ``rows_first`` first, in batches of one shape (the
        last is padded), writing its outputs; returns the pooled base features of ``rows_first`` (stage
        1's features, from the same pass)."""
        rows_first = np.asarray(rows_first, np.int64)
        rest = np.setdiff1d(_all_rows(ds), rows_first)  # sorted: test photos, then any other
        feats = self._write(ds.images, np.concatenate([rows_first, rest]), len(rows_first), desc, batch_size)
        self.ready = True
        return feats

    def append(self, source, rows, desc: str, batch_size: int = 64) -> np.ndarray:
        """Add the prefix's outputs for ``rows`` of ``source`` (rows after the photo cache's: the second
        views of ``--train-views both``) to a filled cache; returns their pooled base features."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and rows.max() >= len(self._slot):
            self._slot = np.concatenate([self._slot, np.full(int(rows.max()) + 1 - len(self._slot), -1, np.int64)])
        return self._write(source, rows, len(rows), desc, batch_size)

    def _write(self, images, rows, n_first: int, desc: str, batch_size: int) -> np.ndarray:
        feats = None
        try:
            with ui.Progress(len(rows), desc) as bar:
                for s in range(0, len(rows), batch_size):
                    chunk = rows[s : s + batch_size]
                    x = images[chunk].astype(np.float32)
                    if len(chunk) < batch_size and s > 0:
                        x = np.concatenate([x, np.zeros((batch_size - len(chunk),) + x.shape[1:], np.float32)])
                    outs = [np.asarray(o) for o in self._fill_model.predict_on_batch(x)]
                    block = np.concatenate([o[: len(chunk)].reshape(len(chunk), -1) for o in outs[:-1]], axis=1)
                    self._file.seek(self._at * self._record)
                    self._file.write(np.ascontiguousarray(block, np.float32).tobytes())
                    self._slot[chunk] = np.arange(self._at, self._at + len(chunk))
                    self._at += len(chunk)
                    pooled = outs[-1][: len(chunk)]
                    if s < n_first:
                        if feats is None:
                            feats = np.empty((n_first, pooled.shape[1]), np.float32)
                        k = min(len(chunk), n_first - s)
                        feats[s : s + k] = pooled[:k]
                    bar.update(len(chunk))
        except OSError as e:
            self.close()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EdgetlError(f"no space left in {self.folder} for the outputs of the frozen layers "
                                  f"({self._record * len(rows) / 2**20:.0f} MB)",
                                  hint="free some space, or choose --out on another disk") from None
            raise
        return feats if feats is not None else np.zeros((0, 0), np.float32)

    def has(self, rows, model=None) -> bool:
        """True when every photo of ``rows`` is cached (for ``model``, if given: the one it was made for)."""
        if not self.ready or (model is not None and model is not self.model):
            return False
        rows = np.asarray(rows, np.int64)
        return bool(np.all((rows >= 0) & (rows < len(self._slot)))) and bool(np.all(self._slot[rows] >= 0))

    def read(self, rows) -> list:
        """The prefix's outputs for ``rows``: one float32 array (N, H, W, C) per boundary tensor."""
        rows = np.asarray(rows, np.int64)
        buf = np.empty((len(rows), self._record // 4), np.float32)
        with self._lock:
            for i, r in enumerate(rows):
                self._file.seek(int(self._slot[r]) * self._record)
                if self._file.readinto(memoryview(buf[i]).cast("B")) != self._record:
                    raise EdgetlError(f"{self.path} is shorter than written", hint="run the command again")
        out, at = [], 0
        for shape in self._shapes:
            k = int(np.prod(shape))
            out.append(np.ascontiguousarray(buf[:, at : at + k]).reshape((len(rows),) + shape))
            at += k
        return out

    def top_model(self, model, purpose: str = "predict"):
        """A Keras model from the boundary tensors to ``model``'s probabilities: the layers above the prefix,
        the pooling and the head (the same layer objects, so the same weights). One per ``purpose``
        (compiling one for ``fit`` leaves the one that predicts as it is)."""
        if model is not self.model:
            raise ValueError("the prefix cache was made for another model")
        if purpose not in self._models:
            _, keras = modeling.import_keras()
            base = model.get_layer(modeling.BASE_NAME)
            inputs = [keras.Input(shape=s, name=f"prefix_{j}") for j, s in enumerate(self._shapes)]
            if len(self._needed) == 1 and self._needed[0] is _tensors(base.output)[0]:
                x = inputs[0]  # the whole base is the prefix: only the head trains
            else:
                x = keras.Model(self._needed, base.output)(inputs, training=False)
            out = model.get_layer("head")(model.get_layer("pool")(x))
            self._models[purpose] = keras.Model(inputs, out, name=f"above_prefix_{purpose}")
        return self._models[purpose]

    def predict(self, model, rows, batch_size: int = 64) -> np.ndarray:
        """``model``'s probabilities for the cached photos ``rows`` (batches of one shape)."""
        top = self.top_model(model, "predict")
        rows = np.asarray(rows, np.int64)
        out = []
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            xs = self.read(chunk)
            if len(chunk) < batch_size and s > 0:
                xs = [np.concatenate([x, np.zeros((batch_size - len(chunk),) + x.shape[1:], np.float32)]) for x in xs]
            out.append(np.asarray(top.predict_on_batch(xs), np.float32)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def close(self):
        """Free the file (the cache is empty again)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.ready, self.model, self._models, self._fill_model, self._needed = False, None, {}, None, []


def _tensors(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _all_rows(ds) -> np.ndarray:
    """Every cached row of the run's splits, sorted."""
    parts = [ds.rows(s) for s in ds.files]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _build_state(model, x, y):
    """Create the optimizer's and the metrics' variables before ``fit``. Without a distribution strategy
    Keras (TF backend) creates them while tracing the first train step, and a tf.function that creates
    variables on its first call is traced a second time: the same weights, one trace instead of two
    (measured on stage 2's step: 3 s of a 9 s first epoch). ``x``, ``y``: one batch."""
    build = getattr(model, "_symbolic_build", None)  # Keras 3's own pre-build (as under a strategy)
    try:
        if build is not None:
            build(data_batch=(x, y))
        elif model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    except (TypeError, ValueError, RuntimeError):  # another Keras: it builds them while tracing, as before
        pass


def fit_head(head, x_train, y_train, x_val, y_val, cfg, stage="stage 1", outcome: dict | None = None):
    """Train the head on features; early stopping on val loss with the best weights restored.
    ``outcome`` (a dict), if given, receives ``kept_epoch`` and ``stopped_early``."""
    _, keras = modeling.import_keras()
    head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    keras.utils.set_random_seed(cfg.seed)
    _build_state(head, x_train[: cfg.batch_size], y_train[: cfg.batch_size])
    es = _early_stopping(keras, cfg.patience)
    cbs = [c for c in (es, _progress(stage, cfg.epochs, -(-len(x_val) // cfg.batch_size))) if c is not None]
    hist = head.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=cfg.epochs, batch_size=cfg.batch_size,
                    shuffle=True, callbacks=cbs, verbose=0)
    if outcome is not None:
        outcome.update(_outcome(es, hist.history, cfg.epochs))
    return hist.history


def _best(history: dict) -> dict:
    vl = history.get("val_loss") or [float("inf")]
    i = int(np.argmin(vl))
    return {"best_epoch": i + 1, "val_loss": float(vl[i]), "val_accuracy": float(history["val_accuracy"][i])}


def stage1(ds, cfg, run: Path, base=None, weights_info=None, info: dict | None = None, features_hook=None,
           prefix=None):
    """Build the model (on ``base`` if given) and train its head on cached features. ``info``: what the
    saved stage-1 model carries about itself (labels, size, resize policy). ``features_hook(rows,
    features, seconds)``, if given, sees the features of every photo (test split included; ``seconds``: the
    time spent on the test split's, which only it needs) before the head is trained, and may move photos
    between splits (``ds.files``). ``prefix`` (a PrefixCache), if given and stage 2 can use it, is filled
    in the same pass as the features (every photo of the run).
    Returns (model, report_section, history, weights_info)."""
    modeling.import_keras()
    t0 = time.perf_counter()
    model, extractor, base, head, weights_info = modeling.build(len(ds.classes), cfg, base, weights_info)
    rows_tr, y_tr = ds.rows("train"), ds.labels("train")
    weights_info = dict(weights_info or {})
    if weights_info.get("source") == "none":
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(rows_tr, size=min(128, len(rows_tr)), replace=False))
        m = cfg.crop_margin()
        batch = ds.images[pick][:, m : ds.image_size - m, m : ds.image_size - m].astype(np.float32) / 127.5 - 1.0
        modeling.calibrate_batchnorm(base, batch)
        weights_info["note"] = (f"random initialisation; BatchNorm statistics set from {len(pick)} training photos "
                                "(otherwise a random base gives constant features)")
    rows_va, y_va = ds.rows("val"), ds.labels("val")
    rows_te = ds.rows("test") if features_hook is not None and not ds.test_is_val else np.zeros(0, np.int64)
    rows = np.concatenate([rows_tr, rows_va, rows_te])
    n_fit = len(rows_tr) + len(rows_va)
    on_prefix = prefix is not None and prefix.usable(ds, cfg) and prefix.start(model, ds, cfg)
    if on_prefix:  # stage 1's features (the test split's too) and stage 2's prefix (every photo), one pass
        feats = prefix.fill(ds, rows, "base features")
    else:
        feats = extract_features(extractor, ds.images, rows[:n_fit], "base features")
    if features_hook is not None:  # the diagnostics (diagnose.py): they may regroup photos between splits
        t_te = time.perf_counter()  # the test split's features serve the diagnostics alone: timed as theirs
        if len(rows_te) and not on_prefix:
            feats = np.concatenate([feats, extract_features(extractor, ds.images, rows_te, "test features")])
        features_hook(rows, feats, time.perf_counter() - t_te)
        rows_tr, y_tr, rows_va, y_va = ds.rows("train"), ds.labels("train"), ds.rows("val"), ds.labels("val")
    pos = {int(r): i for i, r in enumerate(rows)}
    f_tr, f_va = feats[[pos[int(r)] for r in rows_tr]], feats[[pos[int(r)] for r in rows_va]]
    y_photos = y_tr
    if cfg.augment:
        f_aug, y_aug = augmented_features(extractor, ds.images, rows_tr, y_tr, cfg)
        f_tr, y_tr = np.concatenate([f_tr, f_aug]), np.concatenate([y_tr, y_aug])
    views = second_views(ds, cfg, run / "cache")
    if views is not None:  # the head also learns every training photo as the other fit frames it
        ok = views.alt >= 0
        desc = f"base features, {views.policy} views"
        f2 = (prefix.append(views, views.alt[ok], desc) if on_prefix
              else extract_features(extractor, views, views.alt[ok], desc))
        f_tr, y_tr = np.concatenate([f_tr, f2]), np.concatenate([y_tr, y_photos[ok]])
    t_feat = time.perf_counter() - t0
    outcome = {}
    history = fit_head(head, f_tr, y_tr, f_va, y_va, cfg, outcome=outcome)
    seconds = time.perf_counter() - t0
    best = _best(history)
    section = {
        "epochs": len(history["loss"]),
        "seconds": round(seconds, 2),
        "feature_seconds": round(t_feat, 2),
        "train_samples": len(y_tr),
        **({"second_views": {"policy": views.policy, "photos": views.count}} if views is not None else {}),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.items()},
        **outcome,
    }
    runfolder.save_with(run / "stage1.keras", lambda tmp: modeling.save(model, tmp, info))
    return model, section, history, weights_info


def probabilities(model, ds, rows, cfg, prefix=None):
    """The model's probabilities for the cached photos ``rows``: from the prefix cache when it holds them
    (only the layers above the prefix run), else from the photos."""
    if prefix is not None and prefix.has(rows, model):
        return prefix.predict(model, rows)
    return modeling.predict(model, ds.images, rows, cfg.batch_size)


def _val_eval(model, ds, cfg, prefix=None):
    probs = probabilities(model, ds, ds.rows("val"), cfg, prefix)
    y = ds.labels("val")
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean())
    return float((probs.argmax(1) == y).mean()), loss


def _batch_source(images, rows, labels, cfg, shuffle: bool, augment: bool, alt=None):
    """Batches of ``rows`` (photos, or the prefix's outputs). ``alt`` (``SecondViews.alt``): every epoch,
    each photo that has a second view is shown in one of its two views, drawn (seeded) per epoch: the
    model learns both fits at the cost of one."""
    _, keras = modeling.import_keras()

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(cfg.seed)
            self.epoch = 0
            self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
            self.cur = self._views()

        def _views(self):
            if alt is None:
                return rows
            other = (np.random.default_rng([cfg.seed, 2, self.epoch]).random(len(rows)) < 0.5) & (alt >= 0)
            return np.where(other, alt, rows)

        def __len__(self):
            return (len(rows) + cfg.batch_size - 1) // cfg.batch_size

        def __getitem__(self, i):
            idx = self.order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if isinstance(images, PrefixCache):  # the prefix's outputs (one array per boundary tensor)
                return tuple(images.read(self.cur[idx])), labels[idx]
            x = images[self.cur[idx]]
            if augment:
                x = np.stack([data_mod.augment(np.asarray(im), np.random.default_rng([cfg.seed, self.epoch, int(r)]))
                              for im, r in zip(x, rows[idx])])
            return x.astype(np.float32), labels[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.cur = self._views()
            if shuffle:
                self.order = self.rng.permutation(len(rows))

    return Batches()


def _dataset(src, shuffle: bool):
    """``src`` (a ``_batch_source``) as a tf.data pipeline: one thread, no autotuning, one batch ahead. Given
    the PyDataset itself, with validation data beside it, Keras' pipeline (autotuned prefetch) made random
    stage-2 epochs take twice as long (measured on 2 cores: 2.5 s or 5.0 s for the same 24 steps); this one
    keeps every epoch at 2.5 s. It feeds what Keras 3 fed, in the same order (the same weights): each epoch
    (each new iterator) starts with ``src.on_epoch_end()``, as Keras calls it before the first epoch too,
    and with ``shuffle`` the batches come in the order Keras' ``fit(shuffle=True)`` draws for a PyDataset
    (``random.shuffle`` of the batch indices, seeded by ``keras.utils.set_random_seed``)."""
    import random

    tf = modeling.import_keras()[0]

    def spec(a):
        return tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype))

    x0, y0 = src[0]
    sig = (tuple(spec(a) for a in x0) if isinstance(x0, tuple) else spec(x0), spec(y0))

    def gen():
        src.on_epoch_end()
        order = list(range(len(src)))
        if shuffle:
            random.shuffle(order)
        for i in order:
            yield src[i]

    d = tf.data.Dataset.from_generator(gen, output_signature=sig)
    d = d.apply(tf.data.experimental.assert_cardinality(len(src)))
    opt = tf.data.Options()
    opt.autotune.enabled = False
    opt.threading.private_threadpool_size = 1
    return d.with_options(opt).prefetch(1)


def fine_tune_fit(model, ds, cfg, outcome: dict | None = None, prefix=None):
    """Unfreeze from ``fine_tune_from`` (BatchNorm stays frozen), recompile at ``fine_tune_lr``, fit on the
    cached photos with early stopping. Returns (first trainable layer index, history); ``outcome`` (a
    dict), if given, receives ``kept_epoch`` and ``stopped_early``. ``prefix`` (a filled PrefixCache): fit
    the layers above the frozen prefix on its cached outputs, in the same batches and order."""
    if getattr(ds.images, "distributed", False):  # several workers or devices: a custom loop (ctl.py)
        from toolchain.core import ctl

        return ctl.fine_tune_fit(model, ds, cfg)  # (kept_epoch: not recorded)
    _, keras = modeling.import_keras()
    base, _, _ = modeling.parts(model)
    first = modeling.set_fine_tune(base, cfg.fine_tune_from)
    model.compile(optimizer=keras.optimizers.Adam(cfg.fine_tune_lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rows_tr, y_tr = ds.rows("train"), ds.labels("train")
    rows_va, y_va = ds.rows("val"), ds.labels("val")
    views = second_views(ds, cfg)  # made by stage 1 or stage2()
    alt = views.alt if views is not None else None
    need = np.concatenate([rows_tr, rows_va] + ([alt[alt >= 0]] if alt is not None else []))
    cached = prefix is not None and not cfg.augment and prefix.has(need, model)
    fitted, source = ((prefix.top_model(model, "fit"), prefix) if cached
                      else (model, views if views is not None else ds.images))
    if cached:  # the same optimizer and loss, on the layers above the prefix (the same variables)
        ui.info(f"  stage 2 trains layers {first}+ on the cached outputs of the frozen layers below them")
        fitted.compile(optimizer=keras.optimizers.Adam(cfg.fine_tune_lr), loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    keras.utils.set_random_seed(cfg.seed)
    train_src = _batch_source(source, rows_tr, y_tr, cfg, shuffle=True, augment=cfg.augment, alt=alt)
    val_src = _batch_source(source, rows_va, y_va, cfg, shuffle=False, augment=False)
    _build_state(fitted, *(val_src if len(val_src) else train_src)[0])
    es = _early_stopping(keras, cfg.fine_tune_patience)
    cbs = [c for c in (es, _progress("stage 2", cfg.fine_tune_epochs, len(val_src))) if c is not None]
    train_data = _dataset(train_src, True)  # it orders the batches itself (fit's shuffle is for a PyDataset)
    hist = fitted.fit(train_data, validation_data=_dataset(val_src, False) if len(val_src) else None,
                      epochs=cfg.fine_tune_epochs, callbacks=cbs, verbose=0, shuffle=train_data is train_src)
    if outcome is not None:
        outcome.update(_outcome(es, hist.history, cfg.fine_tune_epochs))
        outcome["on_cached_prefix"] = bool(cached)
    return first, hist.history


def fit_full_graph_frozen(model, ds, cfg):
    """The classic recipe stage 1 replaces: fit the whole model, base frozen, on the photos themselves
    (every epoch runs the base on every photo). Kept as the reference for tests and benchmarks."""
    _, keras = modeling.import_keras()
    base, _head, _ = modeling.parts(model)
    base.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x_tr = np.asarray(ds.images[ds.rows("train")], np.float32)
    x_va = np.asarray(ds.images[ds.rows("val")], np.float32)
    keras.utils.set_random_seed(cfg.seed)
    es = _early_stopping(keras, cfg.patience)
    cbs = [c for c in (es, _progress("classic", cfg.epochs, -(-len(x_va) // cfg.batch_size))) if c is not None]
    hist = model.fit(x_tr, ds.labels("train"), validation_data=(x_va, ds.labels("val")), epochs=cfg.epochs,
                     batch_size=cfg.batch_size, shuffle=True, callbacks=cbs, verbose=0)
    return hist.history


def stage2_verdict(acc1: float, loss1: float, acc2: float, loss2: float) -> tuple:
    """(kept, sentence): stage 2 is kept when validation accuracy rose, or stayed and the loss fell; the
    sentence says which of the two decided it."""
    same_acc = abs(acc2 - acc1) <= 1e-9
    if acc2 > acc1 + 1e-9:
        return True, (f"stage 2 improved validation accuracy ({acc1:.4f} -> {acc2:.4f}; loss {loss1:.4f} -> "
                      f"{loss2:.4f}): keeping the fine-tuned model")
    if same_acc and loss2 < loss1:
        return True, (f"stage 2 improved validation loss ({loss1:.4f} -> {loss2:.4f}) at the same accuracy "
                      f"({acc2:.4f}): keeping the fine-tuned model")
    why = (f"accuracy unchanged ({acc2:.4f}) and loss not lower ({loss1:.4f} -> {loss2:.4f})" if same_acc
           else f"accuracy fell ({acc1:.4f} -> {acc2:.4f}; loss {loss1:.4f} -> {loss2:.4f})")
    return False, f"stage 2 did not improve validation: {why}: keeping the stage-1 model"


def stage2(model, ds, cfg, prefix=None):
    """Fine-tune the top of the base. Returns (final_model, report_section, history). ``prefix`` (a
    PrefixCache): filled by stage 1, or here (one pass over the photos) when it is empty and usable."""
    modeling.import_keras()
    t0 = time.perf_counter()
    if cfg.fine_tune_epochs == 0:
        return model, {"epochs": 0, "seconds": 0.0, "kept": "feature_extraction", "reason": "fine-tune-epochs is 0"}, {}
    base, _head, _ = modeling.parts(model)
    views = second_views(ds, cfg, prefix.folder if prefix is not None else None)
    if prefix is not None and not prefix.ready and prefix.usable(ds, cfg) and prefix.start(model, ds, cfg):
        prefix.fill(ds, np.zeros(0, np.int64), "prefix of the base")
    if views is not None and prefix is not None and prefix.ready and not prefix.has(views.alt[views.alt >= 0], model):
        prefix.append(views, views.alt[views.alt >= 0], f"prefix of the base, {views.policy} views")
    acc1, loss1 = _val_eval(model, ds, cfg, prefix)
    stage1_weights = model.get_weights()
    outcome = {}
    first, history = fine_tune_fit(model, ds, cfg, outcome=outcome, prefix=prefix)
    acc2, loss2 = _val_eval(model, ds, cfg, prefix)
    improved, verdict = stage2_verdict(acc1, loss1, acc2, loss2)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    section = {
        "epochs": len(history.get("loss", [])),
        "seconds": round(time.perf_counter() - t0, 2),
        "from_layer": first,
        "from_layer_name": base.layers[first].name,
        "trainable_params": trainable,
        "val_accuracy": round(acc2, 4),
        "val_loss": round(loss2, 4),
        "stage1_val_accuracy": round(acc1, 4),
        "stage1_val_loss": round(loss1, 4),
        "kept": "fine_tune" if improved else "feature_extraction",
        **outcome,  # kept_epoch: the stage-2 epoch the fine-tuned weights come from (if they are kept)
    }
    if not improved:
        model.set_weights(stage1_weights)
    ui.info(verdict)
    # freeze again so the saved model is a plain inference model
    base.trainable = False
    return model, section, history


def evaluate(model, ds, cfg, prefix=None) -> dict:
    probs = probabilities(model, ds, ds.rows("test"), cfg, prefix)
    out = metrics.classification(ds.labels("test"), probs, ds.classes)
    acc, loss = _val_eval(model, ds, cfg, prefix)
    out["val_accuracy"] = round(acc, 4)
    out["val_loss"] = round(loss, 4)
    out["test_accuracy"] = out.pop("accuracy")
    out["test_split"] = "val" if ds.test_is_val else "test"
    return out


def check_run_for_finetune(run: Path):
    if not (run / "stage1.keras").is_file():
        raise EdgetlError(f"{run} has no stage-1 model (stage1.keras)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
