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
