"""Stage 2 on several workers or devices: a custom training loop under the run's tf.distribute strategy.

Keras 3 ``fit`` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585), and Keras' private
trainer is not patched here. The loop is TensorFlow's documented one: ``strategy.run`` of a step that
computes the loss with ``tf.GradientTape`` and applies it with the Keras optimizer (which sums the
gradients over the replicas), the loss scaled by ``tf.nn.compute_average_loss(global_batch_size=...)``.

It trains on the same global batches as the one-process ``fit`` (train.fine_tune_fit): the same seeded
permutation of the training rows every epoch, the same shuffled batch order, the same augmentation (seeded
by epoch and row). Each worker feeds, of every global batch, the rows it holds (its shard of the photos),
split over its devices; the gradient of the sum of their losses divided by the global batch size is the
one-process gradient. (Instead of ``AutoShardPolicy.DATA``, which makes every worker read every photo and
keep its part, the input function gives each worker its own rows: a worker never needs photos it does not
hold.) Dropout draws its masks per replica, so with dropout > 0 the random stream differs from one process;
with ``--dropout 0`` the weights match one process to float rounding.

Early stopping (best weights restored) and the keep-best decision use validation figures computed from
the probabilities of every worker's shard, gathered: every worker takes the same decision.
"""

from __future__ import annotations

import random
import time

import numpy as np

from toolchain.core import data as data_mod
from toolchain.core import modeling
from toolchain import ui


def batch_order(n: int, cfg, epochs: int):
    """The global batches of each epoch as Keras 3 ``fit`` takes them from train._batch_source (a PyDataset)
    with ``shuffle=True``: rows permuted by ``default_rng(seed)`` at creation and again at every
    ``on_epoch_end``, which fit also calls once before the first epoch (so epoch ``e`` sees permutation
    ``e + 2`` and augments with epoch counter ``e + 1``); the batch order shuffled by Python's ``random``
    seeded with ``seed`` (keras.utils.set_random_seed). Checked against fit in tests/test_distributed.py.
    Yields (augmentation epoch, [index arrays])."""
    b = cfg.batch_size
    nb = (n + b - 1) // b
    perm = np.random.default_rng(cfg.seed)
    order = perm.permutation(n)
    shuffler = random.Random(cfg.seed)
    for e in range(epochs):
        order = perm.permutation(n)
        idx = list(range(nb))
        shuffler.shuffle(idx)
        yield e + 1, [order[i * b : (i + 1) * b] for i in idx]


def fine_tune_fit(model, ds, cfg):
    """As train.fine_tune_fit, on ``ds.images.ctx``'s strategy. ``model`` (a plain Keras model) ends with the
    kept weights. Returns (first trainable layer index, history)."""
    tf, keras = modeling.import_keras()
    images = ds.images
    ctx = images.ctx
    st = ctx.strategy
    base, _, _ = modeling.parts(model)
    first = modeling.set_fine_tune(base, cfg.fine_tune_from)
    start = ctx.broadcast_arrays(model.get_weights())  # the chief's stage-1 model, exactly, on every worker
    drift = max((float(np.max(np.abs(a - b))) for a, b in zip(start, model.get_weights()) if a.size), default=0.0)
    if drift > 0:
        ui.info(f"  (stage-1 weights on this worker differ from the chief's by {drift:.2e}; using the chief's)")
    with st.scope():
        dm = keras.models.clone_model(model)
        modeling.set_fine_tune(dm.get_layer(modeling.BASE_NAME), cfg.fine_tune_from)
        opt = keras.optimizers.Adam(cfg.fine_tune_lr)
        opt.build(dm.trainable_variables)
    dm.set_weights(start)
    model.set_weights(start)
    keras.utils.set_random_seed(cfg.seed)

    rows_tr, y_tr = ds.rows("train"), ds.labels("train")
    epochs = cfg.fine_tune_epochs
    size = cfg.input_size()
    rank, n_local = ctx.rank, ctx.n_local
    owner = images.owner

    def elements():
        for epoch, batches in batch_order(len(rows_tr), cfg, epochs):
            for bidx in batches:
                rows, labels = rows_tr[bidx], y_tr[bidx]
                keep = owner[rows] == rank
                rows, labels = rows[keep], labels[keep]
                x = images.view[rows] if len(rows) else np.zeros((0, size, size, 3), np.uint8)
                if cfg.augment and len(rows):
                    x = np.stack([data_mod.augment(np.asarray(im), np.random.default_rng([cfg.seed, epoch, int(r)]))
                                  for im, r in zip(x, rows)])
                for part in np.array_split(np.arange(len(rows)), n_local):
                    if len(part):
                        yield (x[part].astype(np.float32), labels[part], np.ones(len(part), np.float32),
                               np.int64(len(bidx)))
                    else:  # nothing of this batch here: one blank photo that weighs nothing
                        yield (np.zeros((1, size, size, 3), np.float32), np.zeros(1, np.int64),
                               np.zeros(1, np.float32), np.int64(len(bidx)))

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int64))
    local_ds = tf.data.Dataset.from_generator(elements, output_signature=spec).prefetch(2)
    dist_ds = st.distribute_datasets_from_function(lambda _ctx: local_ds)

    @tf.function
    def train_step(iterator):
        def step(x, y, w, gb):
            with tf.GradientTape() as tape:
                p = dm(x, training=True)
                ce = keras.losses.sparse_categorical_crossentropy(y, p)
                loss = tf.nn.compute_average_loss(ce, sample_weight=w, global_batch_size=gb)
            grads = tape.gradient(loss, dm.trainable_variables)
            opt.apply_gradients(zip(grads, dm.trainable_variables))
            hit = tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type=tf.int64), y), tf.float32)
            return tf.reduce_sum(ce * w), tf.reduce_sum(hit * w)

        s, c = st.run(step, args=next(iterator))
        return st.reduce(tf.distribute.ReduceOp.SUM, s, axis=None), st.reduce(tf.distribute.ReduceOp.SUM, c, axis=None)

    steps = (len(rows_tr) + cfg.batch_size - 1) // cfg.batch_size
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_weights, wait = float("inf"), None, 0
    iterator = iter(dist_ds)
    with ctx.guard():
        for epoch in range(epochs):
            t0 = time.perf_counter()
            loss_sum, hits = 0.0, 0.0
            for _ in range(steps):
                s, c = train_step(iterator)
                loss_sum += float(s)
                hits += float(c)
            weights = dm.get_weights()  # every worker, together
            model.set_weights(weights)
            val_acc, val_loss = _validation(model, ds, cfg, keras)
            logs = {"loss": loss_sum / len(rows_tr), "accuracy": hits / len(rows_tr), "val_loss": val_loss,
                    "val_accuracy": val_acc}
            for k, v in logs.items():
                history[k].append(v)
            bar = "#" * (epoch + 1) + "." * max(0, epochs - epoch - 1)
            ui.info(f"stage 2 [{bar}] epoch {epoch + 1}/{epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
                    f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  ({time.perf_counter() - t0:.1f}s) {ctx.tag()}")
            if cfg.fine_tune_patience <= 0:
                continue
            # keras.callbacks.EarlyStopping(monitor="val_loss", patience, restore_best_weights=True)
            if best_weights is None:
                best_weights = weights
            wait += 1
            if val_loss < best:
                best, best_weights, wait = val_loss, weights, 0
                continue
            if wait >= cfg.fine_tune_patience and epoch > 0:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return first, history


def _validation(model, ds, cfg, keras):
    """(accuracy, loss) on the validation split, from every worker's probabilities (gathered), the loss as
    Keras computes it."""

    probs = modeling.predict(model, ds.images, ds.rows("val"), cfg.batch_size)
    y = ds.labels("val")
    loss = float(np.mean(np.asarray(keras.losses.sparse_categorical_crossentropy(y, probs))))
    return float((probs.argmax(1) == y).mean()), loss
