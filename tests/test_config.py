"""Options: defaults < TOML file < flags; unknown keys and bad values are errors."""

from __future__ import annotations

import pytest

from edge_runtime.errors import EdgetlError
from toolchain.cfg import config


def test_defaults():
    c = config.resolve(None)
    assert (c.alpha, c.image_size, c.weights, c.epochs, c.fine_tune_epochs) == (1.0, 160, "imagenet", 10, 5)
    assert c.fine_tune_from == "100" and c.fine_tune_lr == 1e-5 and c.split == [0.8, 0.1, 0.1]
    assert c.quantize == ["int8", "float32"] and c.io == "uint8" and c.calibration_size == 50


def test_toml_then_flags(tmp_path):
    f = tmp_path / "edgetl.toml"
    f.write_text('image-size = 96\nalpha = 0.35\nepochs = 3\nquantize = ["int8", "float16"]\n[edgetl]\nseed = 9\n')
    c = config.resolve(f, epochs=7)
    assert (c.image_size, c.alpha, c.epochs, c.seed) == (96, 0.35, 7, 9)
    assert c.quantize == ["int8", "float16"]


def test_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("image_sise = 96\n")
    with pytest.raises(EdgetlError, match="unknown option 'image_sise'") as e:
        config.resolve(f)
    assert "did you mean 'image-size'" in e.value.hint  # the TOML spelling


@pytest.mark.parametrize("kw,match", [
    ({"image_size": 100}, "image size 100"),
    ({"alpha": 0.6}, "alpha 0.6"),
    ({"split": [0.5, 0.1]}, "split"),
    ({"quantize": ["int4"]}, "int4"),
    ({"resize": "stretch"}, "resize policy"),
    ({"train_views": "three"}, "train views"),
    ({"io": "uint16"}, "io type"),
    ({"epochs": 0}, "epochs"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_values(kw, match):
    with pytest.raises(EdgetlError, match=match):
        config.resolve(None, **kw)


def test_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("epochs = = 3")
    with pytest.raises(EdgetlError, match="not valid TOML"):
        config.resolve(f)
    f.write_text('epochs = "many"')
    with pytest.raises(EdgetlError, match="epochs"):
        config.resolve(f)
    with pytest.raises(EdgetlError, match="not found"):
        config.resolve(tmp_path / "none.toml")


def test_the_model_input_holds_the_central_fraction_the_network_sees():
    c = config.resolve(None)
    assert c.central_fraction == 0.8 and (c.crop_margin(), c.input_size()) == (20, 200)
    sizes = {s: config.resolve(None, image_size=s).input_size() for s in config.IMAGE_SIZES}
    assert sizes == {96: 120, 128: 160, 160: 200, 192: 240, 224: 280}
    assert config.resolve(None, central_fraction=1).input_size() == 160  # no crop layer: the whole input
    assert config.resolve(None, image_size=224, central_fraction=0.875).input_size() == 256  # ImageNet's eval crop
    for bad in (0.3, 1.5, 0):
        with pytest.raises(EdgetlError, match="central-fraction"):
            config.resolve(None, central_fraction=bad)
    # a run recorded before the option: its model sees its whole input, and a later command keeps that
    old = {k: v for k, v in config.resolve(None).as_dict().items() if k != "central_fraction"}
    assert config.resolve(None, base=old).input_size() == 160
    assert config.resolve(None, base=config.resolve(None).as_dict()).input_size() == 200
    assert config.input_text({"image_size": 160, "central_fraction": 0.8}) == "the central 160 px of a 200-px input"
    assert config.input_text({"image_size": 96}) == "96 px"
