"""Two-stage training on a tiny model (alpha 0.35, 96 px, random weights with calibrated BatchNorm)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import requires_tf, write_dataset

from edge_runtime.errors import EdgetlError

pytestmark = requires_tf


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from toolchain.cfg import config
    from toolchain.core import data

    root = tmp_path_factory.mktemp("train")
    photos = write_dataset(root / "photos", per_class=12)
    cfg = config.resolve(None, alpha=0.35, image_size=96, weights="none", epochs=3, patience=0, seed=11,
                         batch_size=8, fine_tune_epochs=2, fine_tune_patience=0)
    ds = data.build(photos, root / "run", cfg)
    return root / "run", ds, cfg


def test_cached_feature_head_equals_full_graph_head(small):
    """Stage 1 trains the head on cached features; fitting the full graph with the base frozen on the
    photos must give the same head (same init, same batches, same dropout draws)."""
    from toolchain.core import modeling
    from toolchain.core import train

    run, ds, cfg = small
    model_a, section, hist_a, _ = train.stage1(ds, cfg, run)
    _, head_a, _ = modeling.parts(model_a)

    model_b, _, base_b, head_b, _ = modeling.build(len(ds.classes), cfg)
    base_a, _, _ = modeling.parts(model_a)
    base_b.set_weights(base_a.get_weights())  # the same (calibrated, frozen) base
    fresh = modeling.build(len(ds.classes), cfg)[3]
    for w_fresh, w_b in zip(fresh.get_weights(), head_b.get_weights()):
        np.testing.assert_array_equal(w_fresh, w_b)  # the head's initialisation is seeded
    hist_b = train.fit_full_graph_frozen(model_b, ds, cfg)

    assert section["epochs"] == len(hist_b["loss"]) == cfg.epochs
    for wa, wb in zip(head_a.get_weights(), head_b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(hist_a["loss"], hist_b["loss"], rtol=1e-3)
    # and the head did learn something (the comparison is not between two untrained heads)
    assert not np.allclose(head_a.get_weights()[0], fresh.get_weights()[0], atol=1e-3)
    x = np.asarray(ds.images[ds.rows("test")], np.float32)
    np.testing.assert_allclose(model_a.predict_on_batch(x), model_b.predict_on_batch(x), atol=1e-3)


def test_fine_tune_keeps_batchnorm_statistics(small):
    from toolchain.cfg import config
    from toolchain.core import modeling
    from toolchain.core import train

    run, ds, cfg = small
    model, *_ = train.stage1(ds, cfg, run)
    base, _, _ = modeling.parts(model)
    cfg2 = config.resolve(None, base=cfg.as_dict(), fine_tune_lr=1e-3, fine_tune_from="100")
    bn = [layer for layer in base.layers if layer.__class__.__name__ == "BatchNormalization"]
    before_bn = [[np.array(w) for w in layer.weights] for layer in bn]
    top_conv = next(layer for layer in base.layers[100:] if layer.__class__.__name__ == "Conv2D")
    low_conv = next(layer for layer in base.layers[:100] if layer.__class__.__name__ == "Conv2D")
    top_before, low_before = np.array(top_conv.kernel), np.array(low_conv.kernel)

    first, history = train.fine_tune_fit(model, ds, cfg2)

    assert first == 100 and len(history["loss"]) == cfg2.fine_tune_epochs
    for layer, ws in zip(bn, before_bn):
        for w, before in zip(layer.weights, ws):  # gamma, beta, moving mean, moving variance
            np.testing.assert_array_equal(np.array(w), before, err_msg=f"{layer.name}/{w.name} changed")
    assert not np.array_equal(np.array(top_conv.kernel), top_before)  # the top of the base did train
    np.testing.assert_array_equal(np.array(low_conv.kernel), low_before)  # the bottom stayed frozen


def test_stage2_kept_only_if_validation_improves(small):
    from toolchain.cfg import config
    from toolchain.core import modeling
    from toolchain.core import train

    run, ds, cfg = small
    model, *_ = train.stage1(ds, cfg, run)
    before = [np.array(w) for w in model.get_weights()]
    cfg2 = config.resolve(None, base=cfg.as_dict(), fine_tune_lr=1e-12, fine_tune_epochs=1)
    model, section, _ = train.stage2(model, ds, cfg2)
    assert section["kept"] == "feature_extraction"
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)  # the stage-1 weights are back
    base, _, _ = modeling.parts(model)
    assert section["from_layer_name"] == base.layers[100].name


def test_same_seed_same_model(small):
    """--seed makes runs repeatable: the same data and seed give the same weights, another seed does not."""
    from toolchain.cfg import config
    from toolchain.core import train

    run, ds, cfg = small
    a = train.stage1(ds, cfg, run)[0].get_weights()
    b = train.stage1(ds, cfg, run)[0].get_weights()
    c = train.stage1(ds, config.resolve(None, base=cfg.as_dict(), seed=12), run)[0].get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_augment_caches_views(small):
    from toolchain.cfg import config
    from toolchain.core import train

    run, ds, cfg = small
    cfg2 = config.resolve(None, base=cfg.as_dict(), augment=True, augment_views=2, epochs=1)
    _, section, _, _ = train.stage1(ds, cfg2, run)
    assert section["train_samples"] == 3 * len(ds.rows("train"))  # originals + 2 views each


def test_fine_tune_from_name_and_bad_values(small):
    from toolchain.core import modeling
    from toolchain.core import train

    run, ds, cfg = small
    model, *_ = train.stage1(ds, cfg, run)
    base, _, _ = modeling.parts(model)
    name = base.layers[120].name
    assert modeling.set_fine_tune(base, name) == 120
    assert all(not layer.trainable for layer in base.layers[:120])
    with pytest.raises(EdgetlError, match="outside the base"):
        modeling.set_fine_tune(base, "5000")
    with pytest.raises(EdgetlError, match="no layer named") as e:
        modeling.set_fine_tune(base, name[:-1] + "x")
    assert name in e.value.hint


def test_weights_path_and_bad_weights(tmp_path):
    from toolchain.cfg import config
    from toolchain.core import modeling

    cfg = config.resolve(None, alpha=0.35, image_size=96, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(EdgetlError, match="weights file not found"):
        modeling.make_base(cfg)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    cfg = config.resolve(None, alpha=0.35, image_size=96, weights=str(tmp_path / "bad.h5"))
    with pytest.raises(EdgetlError, match="could not load weights"):
        modeling.make_base(cfg)


def test_imagenet_download_failure_is_explained(tmp_path, monkeypatch):
    """Offline (or with an empty cache and no network), the ImageNet path must say what to do."""
    import socket

    from toolchain.cfg import config
    from toolchain.core import modeling

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    cfg = config.resolve(None, alpha=0.35, image_size=96, weights="imagenet")
    with pytest.raises(EdgetlError, match="could not download the ImageNet weights") as e:
        modeling.make_base(cfg)
    assert "--weights PATH" in e.value.hint and "--weights none" in e.value.hint


def test_imagenet_weights_from_local_file(imagenet_weights):
    from toolchain.cfg import config
    from toolchain.core import modeling

    cfg = config.resolve(None, alpha=1.0, image_size=96, weights=str(imagenet_weights))
    base, info = modeling.make_base(cfg)
    assert info["source"] == "file" and len(info["sha256"]) == 64
    conv = base.get_layer("Conv1")
    assert float(np.abs(np.array(conv.kernel)).mean()) > 0.01  # real weights, not an initialiser


def test_second_views_are_the_other_fit_of_each_training_photo(tmp_path):
    """--train-views both: every training photo again, as the other fit frames it (here the centre crop of
    the default MediaPipe fit), read from the file; a file that changed since it was decoded keeps only its
    first view (its second would be of another photo)."""
    from PIL import Image

    from edge_runtime import preprocess
    from toolchain.cfg import config
    from toolchain.core import data, train

    photos = write_dataset(tmp_path / "photos", per_class=8)  # 96x72 photos: the two fits differ
    cfg = config.resolve(None, image_size=96, seed=3, train_views="both")
    ds = data.build(photos, tmp_path / "run", cfg)
    assert ds.resize == "mediapipe" and train.second_policy(ds.resize) == "crop"
    train_files = ds.files["train"]
    changed = photos / train_files[0][0]
    Image.new("RGB", (96, 72), (255, 255, 0)).save(changed, "JPEG")  # another photo under the same name

    views = train.second_views(ds, cfg, tmp_path / "views")
    assert views.alt[0] == -1 and views.count == len(train_files) - 1
    for i, (rel, _, row) in enumerate(train_files[1:4], start=1):
        want = preprocess.fit(preprocess.decode_image(preprocess.read_file(photos / rel)), cfg.input_size(), "crop")
        np.testing.assert_array_equal(views[[views.alt[i]]][0], want)
        np.testing.assert_array_equal(views[[row]][0], ds.images[row])  # the first view: the cache's
        assert not np.array_equal(want, ds.images[row])
    assert train.second_views(ds, cfg) is views  # made once per split
    assert train.second_views(ds, config.resolve(None, base=cfg.as_dict(), train_views="fit")) is None
    assert list(tmp_path.joinpath("views").iterdir()) == []  # the pixels are in an unnamed file


def test_train_views_both_in_stage_1_and_stage_2(small, tmp_path):
    """The head trains on both views of every training photo; stage 2 shows each photo in one of its two
    views per epoch (seeded), on the cached prefix exactly as through the whole graph on the photos."""
    from toolchain.cfg import config
    from toolchain.core import modeling, train

    run, ds, cfg = small
    cfg2 = config.resolve(None, base=cfg.as_dict(), train_views="both", fine_tune_epochs=2)
    n = len(ds.rows("train"))
    prefix = train.PrefixCache(tmp_path / "prefix")
    try:
        model, section, _, _ = train.stage1(ds, cfg2, run, prefix=prefix)
        assert section["train_samples"] == 2 * n
        assert section["second_views"] == {"policy": "crop", "photos": n}
        views = ds.views
        assert prefix.has(views.alt, model)  # stage 1 cached the second views' prefix outputs too
    finally:
        prefix.close()

    src = train._batch_source(views, ds.rows("train"), ds.labels("train"), cfg2, shuffle=True, augment=False,
                              alt=views.alt)
    seen = [np.sort(src.cur)]
    src.on_epoch_end()
    seen.append(np.sort(src.cur))
    for cur in seen:  # each photo once per epoch, in one of its views; both views in use
        assert len(cur) == n and 0 < int((cur >= views.n).sum()) < n
        assert set(cur[cur >= views.n]) <= set(views.alt)
    assert not np.array_equal(seen[0], seen[1])  # drawn again every epoch

    # stage 2 from the same stage-1 model, on the cached prefix (filled as `finetune` fills it) and on the photos
    a, b = modeling.load(run / "stage1.keras"), modeling.load(run / "stage1.keras")
    start = [np.asarray(w) for w in a.get_weights()]
    prefix = train.PrefixCache(tmp_path / "prefix2")
    try:
        assert prefix.start(a, ds, cfg2)
        prefix.fill(ds, np.zeros(0, np.int64), "prefix")
        prefix.append(views, views.alt, "second views")
        outcome = {}
        train.fine_tune_fit(a, ds, cfg2, outcome=outcome, prefix=prefix)
        assert outcome["on_cached_prefix"] is True
    finally:
        prefix.close()
    outcome = {}
    train.fine_tune_fit(b, ds, cfg2, outcome=outcome)
    assert outcome["on_cached_prefix"] is False
    on_prefix, on_photos = [np.asarray(w) for w in a.get_weights()], [np.asarray(w) for w in b.get_weights()]
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(start, on_prefix) if x.size) > 1e-5  # it trained
    # the same model both ways. Not bit for bit: the convolutions' float rounding differs between the two graphs
    # by CPU, and Adam turns a rounding difference on a weight whose gradient is all but zero into up to a
    # whole step (about the learning rate, 1e-5) there; the answers show it is the same training
    x = np.asarray(ds.images[ds.rows("train")], np.float32)
    p0 = modeling.load(run / "stage1.keras").predict(x, verbose=0)
    pa, pb = a.predict(x, verbose=0), b.predict(x, verbose=0)
    assert np.abs(pa - p0).max() > 0.01  # stage 2 moved the probabilities (0.13 measured) ...
    assert np.abs(pa - pb).max() <= 1e-3  # ... and both ways alike (3.5e-5 measured)


def test_fit_traces_the_train_step_once_with_the_same_weights(monkeypatch):
    """train._build_state creates the optimizer's and metrics' variables before fit: Keras would create them
    while tracing the first step, and TensorFlow traces a function that created variables a second time.
    The same seed gives the same weights both ways; the step is traced once instead of twice."""
    from toolchain.cfg import config
    from toolchain.core import modeling
    from toolchain.core import train

    _, keras = modeling.import_keras()

    class Counting(keras.Model):
        traces = 0

        def train_step(self, data):  # Python runs only while the step is traced
            Counting.traces += 1
            return super().train_step(data)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 16)).astype(np.float32), rng.integers(0, 3, 40)
    cfg = config.resolve(None, epochs=3, patience=0, batch_size=8, seed=4)

    def fit():
        keras.utils.set_random_seed(1)
        inp = keras.Input((16,))
        head = Counting(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(inp)))
        Counting.traces = 0
        train.fit_head(head, x[:32], y[:32], x[32:], y[32:], cfg)
        return Counting.traces, head.get_weights()

    traces, weights = fit()
    monkeypatch.setattr(train, "_build_state", lambda *a: None)
    traces_before, weights_before = fit()
    assert (traces, traces_before) == (1, 2)
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights_before))


@pytest.mark.parametrize("on_prefix", [True, False])
def test_stage2_pipeline_feeds_what_keras_fed(small, tmp_path, monkeypatch, on_prefix):
    """train._dataset (one-thread tf.data, no autotuning) replaces Keras' own wrapping of the batch source,
    whose autotuned prefetch made random epochs twice as long: stage 2 gives the very weights and history
    of fit() on the batch source itself (the same batches in the same order, epoch after epoch), on the
    cached prefix and on the photos."""
    from toolchain.core import modeling
    from toolchain.core import train

    run, ds, cfg = small
    if not (run / "stage1.keras").is_file():
        train.stage1(ds, cfg, run)
    from toolchain.cfg import config

    cfg2 = config.resolve(None, base=cfg.as_dict(), fine_tune_epochs=3)

    def stage2(to_dataset):
        monkeypatch.setattr(train, "_dataset", to_dataset)
        model = modeling.load(run / "stage1.keras")
        prefix = train.PrefixCache(tmp_path / f"prefix-{len(os.listdir(tmp_path))}")
        try:
            if on_prefix:
                assert prefix.start(model, ds, cfg2)
                prefix.fill(ds, np.zeros(0, np.int64), "prefix")
            _, hist = train.fine_tune_fit(model, ds, cfg2, prefix=prefix if on_prefix else None)
        finally:
            prefix.close()
        return [np.asarray(w) for w in model.get_weights()], hist

    ours = stage2(train._dataset)
    keras_own = stage2(lambda src, shuffle: src)  # the PyDataset as fit() took it before
    assert ours[1] == keras_own[1] and len(ours[1]["loss"]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(ours[0], keras_own[0]))
