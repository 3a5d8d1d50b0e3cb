"""Make the small .tflite models the runtime tests need (needs TensorFlow).

    python tests/make_test_models.py OUTDIR

CI runs this in the TensorFlow environment, then points $EDGETL_TEST_MODELS at OUTDIR for the runtime
tests in the tflite-runtime environment (which has no TensorFlow to make them).

- nonimage.tflite       input [1, 10] float: not an image
- logits_float.tflite   32x32 float input in [-1, 1], 3 outputs without softmax (logits), no metadata
- edgetl_uint8.tflite   an edgetl model (alpha 0.35, 96 px) full-integer, uint8 I/O, with metadata
- edgetl_int8io.tflite  the same Keras model, int8 I/O
- edgetl_float32.tflite the same Keras model, float32
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ["blue", "green", "red"]


def _calibration(n=16, size=96):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import colour_image

    from edge_runtime import preprocess

    out = []
    for i in range(n):
        rng = np.random.default_rng([99, i])
        out.append(preprocess.fit(colour_image(LABELS[i % 3], rng), (size, size)))
    return np.stack(out)


def make_all(out: Path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolchain import config, convert, modeling

    keras = modeling.import_keras()[1]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)

    # not an image
    m = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")])
    (out / "nonimage.tflite").write_bytes(convert.convert(m, "float32"))
    m.save(out / "nonimage.keras")

    # float logits model, expects [-1, 1]
    m = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    (out / "logits_float.tflite").write_bytes(convert.convert(m, "float32"))
    m.save(out / "logits_float.keras")

    # an edgetl model, three ways
    cfg = config.resolve(None, alpha=0.35, image_size=96, weights="none", seed=3)
    model, _extractor, base, _head, _ = modeling.build(len(LABELS), cfg)
    calib = _calibration()
    modeling.calibrate_batchnorm(base, calib.astype(np.float32) / 127.5 - 1.0)
    model.save(out / "edgetl.keras")
    from edge_runtime import metadata as meta_mod
    from edge_runtime import model as model_mod

    for name, mode, io in (("edgetl_uint8", "int8", "uint8"), ("edgetl_int8io", "int8", "int8"),
                           ("edgetl_float32", "float32", "float32")):
        flat = convert.convert(model, mode, calib, io)
        tmp = out / f"{name}.flat.tflite"
        tmp.write_bytes(flat)
        loaded = model_mod.load(tmp, num_threads=1)
        meta = convert.make_metadata(loaded, mode, LABELS, (96, 96), "crop", (0.0, 255.0), "0" * 64,
                                     {"classes": LABELS}, None, io)
        (out / f"{name}.tflite").write_bytes(meta_mod.embed(flat, meta))
        tmp.unlink()
    (out / "done").write_text("ok\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make_all(Path(sys.argv[1])))
