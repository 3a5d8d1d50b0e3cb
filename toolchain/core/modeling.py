"""The Keras model: raw 0-255 RGB in, class probabilities out.

    image (I, I, 3) float, 0..255  ->  Cropping2D to the central (S, S) (I = S / central_fraction; no layer
    when the fraction is 1)  ->  Rescaling to [-1, 1]  ->  MobileNetV2 base (S x S, include_top=False,
    called with training=False)  ->  GlobalAveragePooling2D  ->  head: Dropout -> Dense(head_units, relu)
    -> Dense(classes, softmax)

Pixel scaling and the central crop live inside the model, so every consumer feeds the raw pixels of the whole
frame, fitted to the input as it likes (MediaPipe and the Task Library squash it), and the network still sees
the photo's centre. Two classes get a two-way
softmax (not one sigmoid unit): every model has one probability per label, top-k works the same for
any number of classes, and the labels file always has one line per output.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_runtime.errors import EdgetlError

from toolchain.cfg.config import LAYER_INDEX, check_layer_spec
from toolchain.rundir.runfolder import sha256_file

TRAIN_HINT = 'pip install "edgetl[train]"   (from a clone: pip install ".[train]")'
BASE_NAME = "mobilenetv2_base"
CROP_NAME = "central_crop"


def import_keras():
    """Import TensorFlow/Keras quietly, or say how to install them (exit 2)."""
    import sys

    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"], sys.modules["keras"]
    from toolchain.core.quiet import silenced

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with silenced(replay_on_error=False):
            import keras
            import tensorflow as tf
    except ImportError as e:
        raise EdgetlError(f"training needs TensorFlow, which is not installed ({e.name or e})", hint=TRAIN_HINT) from None
    tf.get_logger().setLevel("ERROR")
    return tf, keras


def imagenet_filename(alpha: float, size: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"


def make_base(cfg):
    """The MobileNetV2 base and a record of which weights it holds."""
    keras = import_keras()[1]
    keras.utils.set_random_seed(cfg.seed)  # a random (--weights none) base is the same for a given seed
    S = cfg.image_size
    w = str(cfg.weights)
    kwargs = dict(input_shape=(S, S, 3), include_top=False, alpha=cfg.alpha, name=BASE_NAME)
    if w.lower() == "none":
        base = keras.applications.MobileNetV2(weights=None, **kwargs)
        return base, {"source": "none", "note": "random initialisation (no pre-training)"}
    if w.lower() == "imagenet":
        try:
            base = keras.applications.MobileNetV2(weights="imagenet", **kwargs)
        except Exception as e:  # keras raises a plain Exception("URL fetch failure ...") when offline
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "fetch failure" in text or "urlopen" in text.lower() or isinstance(e, OSError):
                raise offline_error(cfg.alpha, S, keras_fetch_reason(text)) from None
            raise
        home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
        cached = Path(home) / "models" / imagenet_filename(cfg.alpha, S)
        info = {"source": "imagenet", "file": str(cached)}
        if cached.exists():
            info["sha256"] = sha256_file(cached)
        return base, info
    p = Path(w).expanduser()
    if not p.is_file():
        raise EdgetlError(f"weights file not found: {p}",
                          hint="--weights takes imagenet, none, or the path of a MobileNetV2 no-top .h5 file")
    try:
        base = keras.applications.MobileNetV2(weights=str(p), **kwargs)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgetlError(
            f"could not load weights from {p}: {msg[:300]}",
            hint=f"pass MobileNetV2 no-top weights for alpha {cfg.alpha} ({imagenet_filename(cfg.alpha, S)})",
        ) from None
    return base, {"source": "file", "file": str(p.resolve()), "sha256": sha256_file(p)}


def calibrate_batchnorm(base, images) -> int:
    """For a randomly initialised base: set every BatchNorm's moving statistics to the statistics of
    ``images`` (float, already scaled to [-1, 1]) as they flow through the network, layer after layer.

    Without this, a random MobileNetV2 in inference mode shrinks every signal to ~1e-10 and its
    features are constant. One forward pass in training mode with momentum 0 does it exactly."""
    _, keras = import_keras()
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
            bn.trainable = True
        base(images, training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    return len(bns)


def make_head(dim: int, num_classes: int, cfg):
    _, keras = import_keras()
    L = keras.layers
    inp = keras.Input((dim,), name="features")
    x = L.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(inp)
    x = L.Dense(cfg.head_units, activation="relu", name="hidden")(x)
    out = L.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="head")


def central_size(model) -> list | None:
    """[height, width] the network sees when the model crops its input's centre (its ``central_crop`` layer),
    else None. Read from the model itself, so a bare ``model.keras`` tells it too."""
    try:
        layer = model.get_layer(CROP_NAME)
    except ValueError:
        return None
    shape = layer.output.shape
    return [int(shape[1]), int(shape[2])]


def build(num_classes: int, cfg, base=None, weights_info=None):
    """(model, extractor, base, head, weights_info). ``extractor`` maps images to pooled features and
    shares its layers with ``model``. ``base``: one made beforehand by ``make_base``."""
    keras = import_keras()[1]
    size, margin = cfg.input_size(), cfg.crop_margin()
    if base is None:
        base, weights_info = make_base(cfg)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Cropping2D(margin, name=CROP_NAME)(inputs) if margin else inputs
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(x)
    x = base(x, training=False)  # BatchNorm always in inference mode
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    extractor = keras.Model(inputs, pooled, name="extractor")
    keras.utils.set_random_seed(cfg.seed)  # the head's initialisation depends on the seed alone
    head = make_head(int(pooled.shape[-1]), num_classes, cfg)
    model = keras.Model(inputs, head(pooled), name="edgetl_mobilenetv2")
    return model, extractor, base, head, weights_info


def parts(model):
    """(base, head, extractor) of a model made by ``build`` (e.g. after loading model.keras)."""
    _, keras = import_keras()
    base = model.get_layer(BASE_NAME)
    head = model.get_layer("head")
    extractor = keras.Model(model.inputs, model.get_layer("pool").output)
    return base, head, extractor


KERAS_INFO = "edgetl.json"


def save(model, path, info: dict | None = None):
    """Save for inference: no optimizer state (it would triple the file after fine-tuning). ``info``
    (labels, image size, resize policy, value range) is stored inside the .keras archive as
    ``edgetl.json`` (Keras ignores it), so a copied model still says what it is."""
    if getattr(model, "optimizer", None) is not None:
        model.optimizer = None
    model.save(path)
    if info:
        import json
        import zipfile

        with zipfile.ZipFile(path, "a") as z:
            z.writestr(KERAS_INFO, json.dumps({"format": "edgetl.keras", **info}, indent=1))


def read_info(path) -> dict | None:
    """The edgetl info stored in a .keras file by ``save`` (no TensorFlow needed), or None."""
    import json
    import stat
    import zipfile

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe would block the open for ever
            return None
        with zipfile.ZipFile(path) as z:
            zi = z.getinfo(KERAS_INFO)
            if zi.file_size > 1 << 20:
                return None
            doc = json.loads(z.read(zi).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != "edgetl.keras":
        return None
    labels = doc.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        return None
    return doc


def load(path):
    """A Keras model from a .keras file, with messages that say what is wrong: not a regular file, not a
    Keras archive, no room to unpack it (Keras extracts the archive into the temporary folder, here a
    private one removed afterwards, so a failed load leaves nothing behind)."""
    import errno
    import shutil
    import stat
    import tempfile
    import zipfile

    from edge_runtime import files

    _, keras = import_keras()
    p = Path(path)
    hint = "pass a model saved by Keras (.keras), e.g. RUN/model.keras"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise EdgetlError(f"Keras model not found: {p}", hint=hint) from None
    except OSError as e:
        raise EdgetlError(f"cannot read Keras model {p} ({e.strerror or e})", hint=hint) from None
    if not stat.S_ISREG(st.st_mode):
        raise EdgetlError(f"{p}: the Keras model is not a regular file ({files.kind(st.st_mode)})", hint=hint)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            head = os.read(fd, 8)
        finally:
            os.close(fd)
    except OSError as e:
        raise EdgetlError(f"cannot read Keras model {p} ({e.strerror or e})", hint=hint) from None
    if not (zipfile.is_zipfile(p) or head.startswith(b"\x89HDF")):
        raise EdgetlError(f"{p} is not a Keras model: a .keras file is a ZIP archive, and this one starts with "
                          f"{head[:4]!r}", hint=hint)
    scratch = None
    old_tmp = tempfile.tempdir
    try:
        scratch = tempfile.mkdtemp(prefix="edgetl-keras-")
        tempfile.tempdir = scratch  # where Keras unpacks the archive
        return keras.models.load_model(p, compile=False)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = scratch or tempfile.gettempdir()
            raise EdgetlError(f"no space left in the temporary folder {Path(where).parent} to unpack {p} "
                              f"({p.stat().st_size / 1e6:.1f} MB)",
                              hint="free some space there, or set TMPDIR to a folder on a disk with room") from None
        raise EdgetlError(f"cannot load Keras model {p}: {e.strerror or e}", hint=hint) from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgetlError(f"cannot load Keras model {p}: {msg[:300]}", hint=hint) from None
    finally:
        tempfile.tempdir = old_tmp
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def is_edgetl_model(model) -> bool:
    try:
        model.get_layer(BASE_NAME)
        model.get_layer("head")
        model.get_layer("to_unit_range")
        return True
    except ValueError:
        return False


# Where Keras downloads the ImageNet weights of MobileNetV2 from (keras.applications.mobilenet_v2).
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
REACH_SECONDS = 10.0  # how long the check before TensorFlow waits for that server to answer


def offline_error(alpha, size, reason: str) -> EdgetlError:
    return EdgetlError(
        f"could not download the ImageNet weights for MobileNetV2 (alpha {alpha}, {size} px): {reason}",
        hint=f"connect to the internet once (Keras caches the file), or pass --weights PATH to a local "
             f"{imagenet_filename(alpha, 224)} (the 224 no-top file works at every image size), "
             "or --weights none to train from scratch")


def keras_fetch_reason(text: str) -> str:
    """Keras' "URL fetch failure on URL: None -- [Errno -3] Temporary failure in name resolution" ->
    "Temporary failure in name resolution (URL)"."""
    import re

    m = re.match(r"URL fetch failure on (\S+): \S+ -- (.*)", text)
    if not m:
        return text
    reason = re.sub(r"^(<urlopen error )?(\[Errno -?\d+\] )?", "", m.group(2)).rstrip(">").strip()
    return f"{reason or 'no answer'} ({m.group(1)})"


def cached_imagenet_file(alpha, size) -> Path | None:
    """The ImageNet weights file Keras would load without downloading (its cache: $KERAS_HOME/models, else
    ~/.keras/models; /tmp/.keras/models when that folder is not writable), or None."""
    name = imagenet_filename(alpha, size)
    home = Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")).expanduser()
    places = [home / "models" / name]
    if not os.access(home, os.W_OK):
        places.append(Path("/tmp/.keras/models") / name)
    return next((p for p in places if p.is_file()), None)


def unreachable(url: str, timeout: float = REACH_SECONDS) -> str | None:
    """Why ``url`` cannot be reached (no network, no name resolution, refused, no answer within
    ``timeout``), or None when its server answers (any HTTP status: the download itself is Keras')."""
    import threading
    import urllib.error
    import urllib.request

    result: list = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server answered
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            result.append(str(getattr(reason, "strerror", None) or reason or type(e).__name__))

    t = threading.Thread(target=probe, daemon=True)  # name resolution has no timeout of its own
    t.start()
    t.join(timeout + 1.0)
    if not result:
        return f"no answer within {timeout:.0f} s"
    return result[0]


def check_weights_arg(weights, alpha=None, size=None) -> None:
    """Before anything heavy: a --weights PATH must exist; --weights imagenet (given ``alpha`` and
    ``size``) must be in Keras' cache or its server reachable, so that going offline fails at once with
    one clean line instead of after TensorFlow has loaded."""
    w = str(weights)
    if w.lower() == "imagenet" and alpha is not None and size is not None:
        if cached_imagenet_file(alpha, size) is None:
            url = IMAGENET_URL + imagenet_filename(alpha, size)
            why = unreachable(url)
            if why is not None:
                from urllib.parse import urlsplit

                raise offline_error(alpha, size, f"{urlsplit(url).hostname} cannot be reached ({why})")
        return
    if w.lower() in ("imagenet", "none"):
        return
    p = Path(w).expanduser()
    if not p.is_file():
        raise EdgetlError(f"weights file not found: {p}",
                          hint="--weights takes imagenet, none, or the path of a MobileNetV2 no-top .h5 file")


def fine_tune_index(base, fine_tune_from: str) -> int:
    """The base layer index ``fine_tune_from`` (an index, negative from the end, or a name) names; an
    error naming the valid range or close names otherwise. Checked before any training."""
    layers = base.layers
    spec = check_layer_spec(fine_tune_from)
    if LAYER_INDEX.fullmatch(spec):
        idx = int(spec)
        if idx < 0:
            idx += len(layers)
        if not 0 <= idx < len(layers):
            raise EdgetlError(f"--fine-tune-from {spec} is outside the base's {len(layers)} layers",
                              hint=f"use an index in 0..{len(layers) - 1} or a layer name such as "
                                   f"{layers[min(100, len(layers) - 1)].name}")
        return idx
    names = [layer.name for layer in layers]
    if spec not in names:
        import difflib

        close = difflib.get_close_matches(spec, names, n=3)
        raise EdgetlError(f"--fine-tune-from: the base has no layer named {spec!r}",
                          hint=f"did you mean {', '.join(close)}?" if close else "pass a layer index, e.g. 100")
    return names.index(spec)


def set_fine_tune(base, fine_tune_from: str) -> int:
    """Unfreeze the base from a layer index or name; BatchNorm layers stay frozen (inference mode).
    Returns the index of the first trainable layer."""
    _, keras = import_keras()
    layers = base.layers
    idx = fine_tune_index(base, fine_tune_from)
    base.trainable = True
    for i, layer in enumerate(layers):
        layer.trainable = i >= idx and not isinstance(layer, keras.layers.BatchNormalization)
    return idx


def predict(model, images, rows, batch_size: int = 32):
    """The model's probabilities for the cached photos ``rows`` (in that order), in batches."""
    import numpy as np

    if getattr(images, "distributed", False):  # photos sharded over workers: each predicts its own, gathered
        return images.map_rows(lambda im, r: predict(model, im, r, batch_size), rows,
                               (0, int(model.output.shape[-1])))
    rows = np.asarray(rows, np.int64)
    out = []
    for s in range(0, len(rows), batch_size):
        out.append(np.asarray(model.predict_on_batch(images[rows[s : s + batch_size]].astype(np.float32))))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
