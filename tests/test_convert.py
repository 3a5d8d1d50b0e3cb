"""One export for every mode (issue 15): the traced graph converts like the Keras model does, and the int8
recipes share one calibration (mirrored views add their statistics to it, as calibrating on both would)."""

from __future__ import annotations

import numpy as np
from conftest import requires_tf

pytestmark = requires_tf


def _tiny_model():
    from toolchain.core import modeling

    _, keras = modeling.import_keras()
    keras.utils.set_random_seed(3)
    i = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(i)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(3, activation="softmax")(x))


def _run(flat: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flat)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x.astype(inp["dtype"]))
    it.invoke()
    return it.get_tensor(out["index"]), it.get_signature_list()


def test_one_export_converts_every_mode_and_shares_the_calibration(tmp_path):
    from toolchain.core import convert

    model = _tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3)).astype(np.uint8)
    src = convert.Exported(model)
    keras_p = np.asarray(model.predict_on_batch(x.astype(np.float32)))
    p32, sigs = _run(src.tflite("float32"), x.astype(np.float32))
    assert np.max(np.abs(p32 - keras_p)) < 1e-5
    assert list(sigs) == ["serving_default"]  # the signature a SavedModel conversion gives, written by _with_signature
    for mode in ("float16", "dynamic"):
        p, sigs = _run(src.tflite(mode), x.astype(np.float32))
        assert np.abs(p - keras_p).max() < 0.05 and list(sigs) == ["serving_default"]

    calib = x[:30]
    q = src.tflite("int8", calib)
    p8, sigs = _run(q, x)
    assert sigs == {"serving_default": {"inputs": ["image"], "outputs": ["output_0"]}}  # kept by the quantizer
    assert p8.dtype == np.uint8 and (p8.astype(np.float32).argmax(1) == keras_p.argmax(1)).mean() >= 0.9
    (tmp_path / "q.tflite").write_bytes(q)
    convert.check_full_integer(tmp_path / "q.tflite")  # no operator left in float
    assert src.tflite("int8", calib, per_channel=False) != q  # per-tensor: the same statistics, other weights
    # mirrored views calibrated after the photos give the model calibrated on both at once
    both = np.concatenate([calib, calib[:, :, ::-1]])
    assert src.tflite("int8", calib, flips=True) == convert.Exported(model).tflite("int8", both)


def test_the_traced_function_converts_to_the_bytes_of_the_frozen_graph():
    """Exported converts the traced function and lets the converter freeze it (it freezes a graph frozen
    beforehand again): the flatbuffer is byte for byte the one of the graph frozen first."""
    from tensorflow.python.framework import convert_to_constants

    from toolchain.core import convert
    from toolchain.core import modeling

    tf = modeling.import_keras()[0]
    model = _tiny_model()
    src = convert.Exported(model)
    frozen = convert_to_constants.convert_variables_to_constants_v2(src.graph)
    flat = bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    assert src.tflite("float32") == convert._with_signature(flat, model.inputs[0].name)
