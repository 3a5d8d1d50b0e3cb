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
- default_uint8.tflite, default_float32.tflite  edgetl_uint8 and edgetl_float32 with the metadata of a
                          default build (the default resize policy, "mediapipe", instead of "crop")
- flowers_default/        with ../shared (flowers10 and the ImageNet weights): `edgetl build` with the
                          defaults (the "mediapipe" policy) on the first 12 photos of each flowers10 class
                          (MobileNetV2 1.0 at 96 px, stage 1 only, int8 and float32): a real default build,
                          for tests/mediapipe's agreement test on the other flowers10 photos
- four_mode/              `edgetl build` of a tiny random-weight model (alpha 0.35, 96 px, 3 colour classes) in all
                          four modes (int8, float16, dynamic, float32): a real run folder, for the test that
                          every model of a run loads and classifies under the interpreter of each environment
- bare_uint8.tflite       the int8/uint8 conversion with no metadata at all
- std_gray.tflite         a 32x32 one-channel float model (softmax over 3) with ONLY standard metadata:
                          GRAYSCALE, NormalizationOptions mean 127.5 / std 127.5, labels.txt
- identity32.tflite       a float model whose 3072 "scores" are its 32x32x3 input (standard metadata, mean 0
                          std 1): shows the pixels an application such as MediaPipe fed it
- heads3.tflite           a 32x32 float model with three outputs (standard metadata, mean 127.5 / std 127.5):
                          0 "features" (8 sigmoids, no labels), 1 "colour" (softmax over LABELS, labels.txt),
                          2 "shade" (softmax over SHADE_LABELS, shade.txt)
- calib_<transform>.tflite  a 32x32 float 4-class model (labels CALIB_LABELS) whose output carries standard
                          ScoreCalibrationOptions (IDENTITY on logits; LOG and INVERSE_LOGISTIC on softmax
                          probabilities) and a TENSOR_AXIS_SCORE_CALIBRATION file calibration.txt with a sigmoid,
                          an empty line (default score), a sigmoid with min_score and a sigmoid (CALIBRATION)
- calib_uint8.tflite      bare_uint8 (uint8 output) with standard metadata only and a LOG calibration
- calib_newline.tflite    calib_LOG with a calibration file that ends in a newline (one line too many)
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
SHADE_LABELS = ["dark", "light"]
CALIB_LABELS = ["north", "east", "south", "west"]
# per class: scale,slope,offset[,min_score]; an empty line = no sigmoid (the default score)
CALIBRATION = {
    "IDENTITY": ["0.9,1.5,-0.2", "", "1.0,0.8,0.1,-0.5", "0.7,2.0,0.5"],
    "LOG": ["0.9,1.5,2.0", "", "1.0,0.8,1.0,0.1", "0.7,2.0,3.0"],
    "INVERSE_LOGISTIC": ["0.9,1.5,0.5", "", "1.0,0.8,0.2,0.1", "0.7,2.0,1.0"],
}
CALIB_DEFAULT_SCORE = 0.125


def _calibration(n=16, size=96):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import colour_image

    from edge_runtime import preprocess

    out = []
    for i in range(n):
        rng = np.random.default_rng([99, i])
        out.append(preprocess.fit(colour_image(LABELS[i % 3], rng), (size, size)))
    return np.stack(out)


FLOWERS_TRAIN_PER_CLASS = 12


def _build(data: Path, run: Path, *flags):
    """`edgetl build DATA --out RUN --force FLAGS`, gates open (these runs are fixtures, not gated), in a
    process of this interpreter with this checkout first on the path."""
    import subprocess

    code = "import sys; from toolchain.cli import main; main(sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, "build", str(data), "--out", str(run), "--force", *flags,
                    "--min-agreement", "0", "--max-drop", "100"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})


def _flowers_default(out: Path):
    """A real default build on a flowers10 subset (see the module docstring); nothing without ../shared."""
    import tempfile

    shared = Path(os.environ.get("EDGETL_SHARED", ROOT.parent / "shared"))
    flowers = shared / "datasets" / "flowers10"
    weights = shared / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    if not (flowers.is_dir() and weights.is_file()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "flowers"
        for d in sorted(x for x in flowers.iterdir() if x.is_dir()):
            (data / d.name).mkdir(parents=True)
            for f in sorted(d.iterdir())[:FLOWERS_TRAIN_PER_CLASS]:
                (data / d.name / f.name).symlink_to(f)
        _build(data, out / "flowers_default", "--image-size", "96", "--weights", str(weights),
               "--fine-tune-epochs", "0")


def _four_mode_run(out: Path):
    """A real `edgetl build` in every mode, on photos of conftest's tiny dataset (see the module docstring)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import TINY_TRAIN, write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "photos", per_class=10)
        modes = [a for m in ("int8", "float16", "dynamic", "float32") for a in ("--quantize", m)]
        _build(data, out / "four_mode", *TINY_TRAIN, "--fine-tune-epochs", "0", *modes)


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
    cfg = config.resolve(None, alpha=0.35, image_size=96, central_fraction=1.0, weights="none", seed=3)  # a 96-px input
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
        if name in ("edgetl_uint8", "edgetl_float32"):
            from edge_runtime.preprocess import DEFAULT_RESIZE

            meta = convert.make_metadata(loaded, mode, LABELS, (96, 96), DEFAULT_RESIZE, (0.0, 255.0), "0" * 64,
                                         {"classes": LABELS, "total": 16}, None, io)
            (out / f"{name.replace('edgetl_', 'default_')}.tflite").write_bytes(meta_mod.embed(flat, meta))
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

    make_heads(keras, convert, meta_mod, out)
    make_calibrated(keras, convert, meta_mod, out)
    _four_mode_run(out)
    _flowers_default(out)
    (out / "done").write_text("ok\n")
    return out


def _image_input(color="RGB"):
    return {"name": "image", "content": "ImageProperties", "color_space": color,
            "process_units": [{"type": "NormalizationOptions", "mean": [127.5], "std": [127.5]}],
            "stats": {"min": [-1.0], "max": [1.0]}}


def _output_order(flat: bytes) -> list:
    """The converted model's output shapes, in its own output order (the converter may reorder Keras outputs)."""
    from edge_runtime import tflite_format

    g = tflite_format.parse_model(flat)["subgraphs"][0]
    return [tuple(g["tensors"][i]["shape"]) for i in g["outputs"]]


def _outputs_by_size(flat: bytes, sizes) -> bytes:
    """``flat`` with its subgraph's outputs put in the order of their last dimension ``sizes`` (the converter
    orders Keras outputs its own way; the test wants an unlabelled head first)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(bytearray(flat), 0)
    g = model.subgraphs[0]
    g.outputs = sorted(g.outputs, key=lambda t: list(sizes).index(int(g.tensors[t].shape[-1])))
    b = flatbuffers.Builder(len(flat) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def make_heads(keras, convert, meta_mod, out: Path):
    """heads3.tflite: three outputs told apart by their sizes (8, 3, 2)."""
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    feats = keras.layers.Dense(8, activation="sigmoid", name="a_features")(x)
    colour = keras.layers.Dense(3, activation="softmax", name="b_colour")(x)
    shade = keras.layers.Dense(2, activation="softmax", name="c_shade")(x)
    m = keras.Model(inp, [feats, colour, shade])
    flat = _outputs_by_size(convert.convert(m, "float32"), (8, 3, 2))
    heads = {8: {"name": "features", "content": "FeatureProperties"},
             3: {"name": "colour", "content": "FeatureProperties",
                 "associated_files": [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS", "description": "colours"}]},
             2: {"name": "shade", "content": "FeatureProperties",
                 "associated_files": [{"name": "shade.txt", "type": "TENSOR_AXIS_LABELS", "description": "shades"}]}}
    order = _output_order(flat)
    std = {"name": "three heads", "author": "tests",
           "subgraphs": [{"inputs": [_image_input()], "outputs": [heads[shape[-1]] for shape in order]}]}
    files = [("labels.txt", ("\n".join(LABELS) + "\n").encode()),
             ("shade.txt", ("\n".join(SHADE_LABELS) + "\n").encode())]
    (out / "heads3.tflite").write_bytes(meta_mod.write(flat, standard=std, files=files))
    (out / "heads3.order.txt").write_text(" ".join(str(s[-1]) for s in order) + "\n")


def _calibrated_std(transform: str, files_name: str = "calibration.txt", color="RGB", inp=None) -> dict:
    return {"name": f"calibrated ({transform})", "author": "tests", "subgraphs": [{
        "inputs": [inp or _image_input(color)],
        "outputs": [{"name": "score", "content": "FeatureProperties",
                     "process_units": [{"type": "ScoreCalibrationOptions", "score_transformation": transform,
                                        "default_score": CALIB_DEFAULT_SCORE}],
                     "associated_files": [
                         {"name": "labels.txt", "type": "TENSOR_AXIS_LABELS", "description": "labels"},
                         {"name": files_name, "type": "TENSOR_AXIS_SCORE_CALIBRATION", "description": "sigmoids"}]}],
    }]}


def make_calibrated(keras, convert, meta_mod, out: Path):
    labels = ("\n".join(CALIB_LABELS) + "\n").encode()
    for transform, lines in CALIBRATION.items():
        keras.utils.set_random_seed(11)
        m = keras.Sequential([
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation=None if transform == "IDENTITY" else "softmax",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=2.0)),
        ])
        flat = convert.convert(m, "float32")
        calib = "\n".join(lines).encode()  # no newline at the end: one line per class, as MediaPipe counts them
        (out / f"calib_{transform}.tflite").write_bytes(meta_mod.write(
            flat, standard=_calibrated_std(transform), files=[("labels.txt", labels), ("calibration.txt", calib)]))
        if transform == "LOG":
            (out / "calib_newline.tflite").write_bytes(meta_mod.write(
                flat, standard=_calibrated_std(transform), files=[("labels.txt", labels),
                                                                  ("calibration.txt", calib + b"\n")]))
    # a quantized model: MediaPipe dequantizes the uint8 output, then calibrates it
    bare = (out / "bare_uint8.tflite").read_bytes()
    uint8_in = {"name": "image", "content": "ImageProperties", "color_space": "RGB",
                "process_units": [{"type": "NormalizationOptions", "mean": [0.0], "std": [1.0]}],
                "stats": {"min": [0.0], "max": [255.0]}}
    labels3 = ("\n".join(LABELS) + "\n").encode()
    calib3 = "\n".join(CALIBRATION["LOG"][i] for i in (0, 3, 1)).encode()  # the usual winner (red): default
    (out / "calib_uint8.tflite").write_bytes(meta_mod.write(bare, standard=_calibrated_std("LOG", inp=uint8_in),
                                                            files=[("labels.txt", labels3), ("calibration.txt", calib3)]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make_all(Path(sys.argv[1])))
