"""Two-stage transfer learning.

Stage 1, feature extraction: the base is frozen, so its pooled features are a fixed function of each
photo. They are computed once (plus augmented views with ``augment``) and the head is trained on them:
the same model as fitting the full graph with the base frozen, at a fraction of the cost.

Stage 2, fine-tuning: the base is unfrozen from ``fine_tune_from`` (BatchNorm layers stay frozen and in
inference mode), recompiled with Adam at ``fine_tune_lr``, and trained on the cached photos. The result
is kept only if validation improves (accuracy, then loss).
"""

from __future__ import annotations

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


def fit_head(head, x_train, y_train, x_val, y_val, cfg, stage="stage 1", outcome: dict | None = None):
    """Train the head on features; early stopping on val loss with the best weights restored.
    ``outcome`` (a dict), if given, receives ``kept_epoch`` and ``stopped_early``."""
    _, keras = modeling.import_keras()
    head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    keras.utils.set_random_seed(cfg.seed)
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


def stage1(ds, cfg, run: Path, base=None, weights_info=None, info: dict | None = None, features_hook=None):
    """Build the model (on ``base`` if given) and train its head on cached features. ``info``: what the
    saved stage-1 model carries about itself (labels, size, resize policy). ``features_hook(rows,
    features, seconds)``, if given, sees the features of every photo (test split included; ``seconds``: the
    time spent on the test split's, which only it needs) before the head is trained, and may move photos
    between splits (``ds.files``).
    Returns (model, report_section, history, weights_info)."""
    modeling.import_keras()
    t0 = time.perf_counter()
    model, extractor, base, head, weights_info = modeling.build(len(ds.classes), cfg, base, weights_info)
    rows_tr, y_tr = ds.rows("train"), ds.labels("train")
    weights_info = dict(weights_info or {})
    if weights_info.get("source") == "none":
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(rows_tr, size=min(128, len(rows_tr)), replace=False))
        batch = ds.images[pick].astype(np.float32) / 127.5 - 1.0
        modeling.calibrate_batchnorm(base, batch)
        weights_info["note"] = (f"random initialisation; BatchNorm statistics set from {len(pick)} training photos "
                                "(otherwise a random base gives constant features)")
    rows_va, y_va = ds.rows("val"), ds.labels("val")
    rows_te = ds.rows("test") if features_hook is not None and not ds.test_is_val else np.zeros(0, np.int64)
    rows = np.concatenate([rows_tr, rows_va, rows_te])
    n_fit = len(rows_tr) + len(rows_va)
    feats = extract_features(extractor, ds.images, rows[:n_fit], "base features")
    if features_hook is not None:  # the diagnostics (diagnose.py): they may regroup photos between splits
        t_te = time.perf_counter()  # the test split's features serve the diagnostics alone: timed as theirs
        if len(rows_te):
            feats = np.concatenate([feats, extract_features(extractor, ds.images, rows_te, "test features")])
        features_hook(rows, feats, time.perf_counter() - t_te)
        rows_tr, y_tr, rows_va, y_va = ds.rows("train"), ds.labels("train"), ds.rows("val"), ds.labels("val")
    pos = {int(r): i for i, r in enumerate(rows)}
    f_tr, f_va = feats[[pos[int(r)] for r in rows_tr]], feats[[pos[int(r)] for r in rows_va]]
    if cfg.augment:
        f_aug, y_aug = augmented_features(extractor, ds.images, rows_tr, y_tr, cfg)
        f_tr, y_tr = np.concatenate([f_tr, f_aug]), np.concatenate([y_tr, y_aug])
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
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.items()},
        **outcome,
    }
    runfolder.save_with(run / "stage1.keras", lambda tmp: modeling.save(model, tmp, info))
    return model, section, history, weights_info


def _val_eval(model, ds, cfg):
    probs = modeling.predict(model, ds.images, ds.rows("val"), cfg.batch_size)
    y = ds.labels("val")
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean())
    return float((probs.argmax(1) == y).mean()), loss


def _batch_source(images, rows, labels, cfg, shuffle: bool, augment: bool):
    _, keras = modeling.import_keras()

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(cfg.seed)
            self.epoch = 0
            self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))

        def __len__(self):
            return (len(rows) + cfg.batch_size - 1) // cfg.batch_size

        def __getitem__(self, i):
            idx = self.order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = images[rows[idx]]
            if augment:
                x = np.stack([data_mod.augment(np.asarray(im), np.random.default_rng([cfg.seed, self.epoch, int(r)]))
                              for im, r in zip(x, rows[idx])])
            return x.astype(np.float32), labels[idx]

        def on_epoch_end(self):
            self.epoch += 1
            if shuffle:
                self.order = self.rng.permutation(len(rows))

    return Batches()


def fine_tune_fit(model, ds, cfg, outcome: dict | None = None):
    """Unfreeze from ``fine_tune_from`` (BatchNorm stays frozen), recompile at ``fine_tune_lr``, fit on the
    cached photos with early stopping. Returns (first trainable layer index, history); ``outcome`` (a
    dict), if given, receives ``kept_epoch`` and ``stopped_early``."""
    if getattr(ds.images, "distributed", False):  # several workers or devices: a custom loop (ctl.py)
        from toolchain.core import ctl

        return ctl.fine_tune_fit(model, ds, cfg)  # (kept_epoch: not recorded)
    _, keras = modeling.import_keras()
    base, _, _ = modeling.parts(model)
    first = modeling.set_fine_tune(base, cfg.fine_tune_from)
    model.compile(optimizer=keras.optimizers.Adam(cfg.fine_tune_lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    keras.utils.set_random_seed(cfg.seed)
    rows_tr, y_tr = ds.rows("train"), ds.labels("train")
    rows_va, y_va = ds.rows("val"), ds.labels("val")
    train_src = _batch_source(ds.images, rows_tr, y_tr, cfg, shuffle=True, augment=cfg.augment)
    val_src = _batch_source(ds.images, rows_va, y_va, cfg, shuffle=False, augment=False)
    es = _early_stopping(keras, cfg.fine_tune_patience)
    cbs = [c for c in (es, _progress("stage 2", cfg.fine_tune_epochs, len(val_src))) if c is not None]
    hist = model.fit(train_src, validation_data=val_src, epochs=cfg.fine_tune_epochs, callbacks=cbs, verbose=0)
    if outcome is not None:
        outcome.update(_outcome(es, hist.history, cfg.fine_tune_epochs))
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


def stage2(model, ds, cfg):
    """Fine-tune the top of the base. Returns (final_model, report_section, history)."""
    modeling.import_keras()
    t0 = time.perf_counter()
    if cfg.fine_tune_epochs == 0:
        return model, {"epochs": 0, "seconds": 0.0, "kept": "feature_extraction", "reason": "fine-tune-epochs is 0"}, {}
    base, _head, _ = modeling.parts(model)
    acc1, loss1 = _val_eval(model, ds, cfg)
    stage1_weights = model.get_weights()
    outcome = {}
    first, history = fine_tune_fit(model, ds, cfg, outcome=outcome)
    acc2, loss2 = _val_eval(model, ds, cfg)
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


def evaluate(model, ds, cfg) -> dict:
    probs = modeling.predict(model, ds.images, ds.rows("test"), cfg.batch_size)
    out = metrics.classification(ds.labels("test"), probs, ds.classes)
    acc, loss = _val_eval(model, ds, cfg)
    out["val_accuracy"] = round(acc, 4)
    out["val_loss"] = round(loss, 4)
    out["test_accuracy"] = out.pop("accuracy")
    out["test_split"] = "val" if ds.test_is_val else "test"
    return out


def check_run_for_finetune(run: Path):
    if not (run / "stage1.keras").is_file():
        raise EdgetlError(f"{run} has no stage-1 model (stage1.keras)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
