"""Make the small .tflite models the runtime tests need (needs TensorFlow).

    python tests/make_test_models.py OUTDIR

CI runs this in the TensorFlow environment, then points $EDGETL_TEST_MODELS at OUTDIR for the runtime
tests in the tflite-runtime environment (which has no TensorFlow to make them).

- nonimage.tflite         input [1, 10] float: not an image
- logits_float.tflite     32x32 float input in [-1, 1], 3 outputs without softmax (logits), no metadata
- edgetl_<name>.tflite    one edgetl Keras model (alpha 0.35, 96 px) in every mode and I/O edgetl writes,
                          each with both metadata forms (standard TFLITE_METADATA + edgetl/metadata.json):
                          uint8 (int8, uint8 I/O), int8io (int8, int8 I/O), float32io (int8, float32 I/O),
                          float16, dynamic, float32
- bare_uint8.tflite       the int8/uint8 conversion with no metadata at all
- std_gray.tflite         a 32x32 one-channel float model (softmax over 3) with ONLY standard metadata:
                          GRAYSCALE, NormalizationOptions mean 127.5 / std 127.5, labels.txt
- identity32.tflite       a float model whose 3072 "scores" are its 32x32x3 input (standard metadata, mean 0
                          std 1): shows the pixels an application such as MediaPipe fed it
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ["blue", "green", "red"]
# name -> (mode, io): every mode and I/O type edgetl writes
EDGETL_MODELS = {
    "edgetl_uint8": ("int8", "uint8"),
    "edgetl_int8io": ("int8", "int8"),
    "edgetl_float32io": ("int8", "float32"),
    "edgetl_float16": ("float16", "float32"),
    "edgetl_dynamic": ("dynamic", "float32"),
    "edgetl_float32": ("float32", "float32"),
}
GRAY_LABELS = ["dark", "mid", "light"]


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
    from toolchain.cfg import config
    from toolchain.core import convert
    from toolchain.core import modeling

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

    for name, (mode, io) in EDGETL_MODELS.items():
        flat = convert.convert(model, mode, calib if mode == "int8" else None, io)
        tmp = out / f"{name}.flat.tflite"
        tmp.write_bytes(flat)
        loaded = model_mod.load(tmp, num_threads=1)
        meta = convert.make_metadata(loaded, mode, LABELS, (96, 96), "crop", (0.0, 255.0), "0" * 64,
                                     {"classes": LABELS, "total": 16}, None, io)
        (out / f"{name}.tflite").write_bytes(meta_mod.embed(flat, meta))
        if name == "edgetl_uint8":
            tmp.rename(out / "bare_uint8.tflite")
        else:
            tmp.unlink()

    # a foreign-style model described only by standard metadata: one gray channel, mean/std normalization
    m = keras.Sequential([
        keras.Input((32, 32, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    std = {
        "name": "gray test model", "description": "a tiny gray classifier", "version": "1", "author": "tests",
        "subgraphs": [{
            "inputs": [{"name": "image", "content": "ImageProperties", "color_space": "GRAYSCALE",
                        "process_units": [{"type": "NormalizationOptions", "mean": [127.5], "std": [127.5]}],
                        "stats": {"min": [-1.0], "max": [1.0]}}],
            "outputs": [{"name": "probability", "content": "FeatureProperties", "stats": {"min": [0.0], "max": [1.0]},
                         "associated_files": [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                               "description": "Labels"}]}],
        }],
    }
    labels_txt = ("\n".join(GRAY_LABELS) + "\n").encode()
    (out / "std_gray.tflite").write_bytes(meta_mod.write(convert.convert(m, "float32"), standard=std,
                                                         files=[("labels.txt", labels_txt)]))
    m.save(out / "std_gray.keras")

    m = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Reshape((32 * 32 * 3,))])
    ident = {"name": "identity", "subgraphs": [{
        "inputs": [{"name": "image", "content": "ImageProperties", "color_space": "RGB",
                    "process_units": [{"type": "NormalizationOptions", "mean": [0.0], "std": [1.0]}]}],
        "outputs": [{"name": "pixels", "content": "FeatureProperties"}]}]}
    (out / "identity32.tflite").write_bytes(meta_mod.write(convert.convert(m, "float32"), standard=ident))
    (out / "done").write_text("ok\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make_all(Path(sys.argv[1])))
