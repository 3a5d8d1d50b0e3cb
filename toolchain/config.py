"""The single source of defaults for every toolchain option.

Resolution order: these defaults < a TOML file (``--config FILE``) < command-line flags. TOML keys are
the option names with ``_`` or ``-`` (``image_size`` or ``image-size``), at the top level or under an
``[edgetl]`` table. Unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgetlError
from edge_runtime.preprocess import DEFAULT_RESIZE, RESIZE_POLICIES

IMAGE_SIZES = (96, 128, 160, 192, 224)
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MODES = ("int8", "float16", "dynamic", "float32")
IO_TYPES = ("uint8", "int8", "float32")


@dataclass
class Config:
    # model
    alpha: float = 1.0
    image_size: int = 160
    weights: str = "imagenet"  # imagenet | none | PATH to a Keras .h5 for the base (no top)
    head_units: int = 128
    dropout: float = 0.2
    # data
    split: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 42
    resize: str = DEFAULT_RESIZE
    strict: bool = False
    # stage 1: feature extraction (frozen base, head trained on cached features)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    augment: bool = False
    augment_views: int = 3
    # stage 2: fine-tuning the top of the base
    fine_tune_from: str = "100"  # layer index into the base, or a layer name
    fine_tune_lr: float = 1e-5
    fine_tune_epochs: int = 5
    fine_tune_patience: int = 2
    # conversion and parity
    quantize: list = field(default_factory=lambda: ["int8", "float32"])  # the device picks the faster
    calibration_size: int = 300
    io: str = "uint8"
    max_drop: float = 1.0
    min_agreement: float = 0.97

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def toml_name(name: str) -> str:
    """The spelling users write: image-size (TOML key), --image-size (flag)."""
    return name.replace("_", "-")


# Upper bounds that keep a typo from allocating the machine away (head-units 1e20) or overflowing.
LIMITS = {"head_units": 65536, "epochs": 100000, "fine_tune_epochs": 100000, "batch_size": 65536,
          "calibration_size": 1000000, "patience": 100000, "fine_tune_patience": 100000, "augment_views": 100,
          "seed": 2**32 - 1}
LIST_ITEM = {"split": "number", "quantize": "str"}


def _coerce(name: str, value):
    f = FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = toml_name(name)
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or isinstance(value, str) and not value.strip().lstrip("-").isdigit():
                raise TypeError
            if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
                raise TypeError
            v = int(value)
            if v < 0 or v > LIMITS.get(name, 2**31 - 1):
                raise EdgetlError(f"{shown} {v} is out of range",
                                  hint=f"use an integer from 0 to {LIMITS.get(name, 2**31 - 1)}")
            return v
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            v = float(value)
            if not math.isfinite(v):
                raise EdgetlError(f"{shown} must be a finite number, not {value!r}", hint=f"e.g. {default!r}")
            return v
        if isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                value = [value]
            items = list(value)
            if LIST_ITEM.get(name) == "number":
                if any(isinstance(x, bool) for x in items):
                    raise TypeError
                items = [float(x) for x in items]
                if not all(math.isfinite(x) for x in items):
                    raise TypeError
            elif LIST_ITEM.get(name) == "str" and not all(isinstance(x, str) for x in items):
                raise TypeError
            return items
        if name == "fine_tune_from":
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TypeError
            return str(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError, OverflowError):
        kind = {"number": "list of numbers", "str": "list of names"}.get(LIST_ITEM.get(name), type(default).__name__)
        raise EdgetlError(f"option {shown}: {value!r} is not a valid {kind}",
                          hint=f"e.g. {shown} = {_toml_value(default)} (the default)") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def validate(cfg: Config) -> Config:
    def bad(msg, hint):
        raise EdgetlError(msg, hint=hint)

    if cfg.image_size not in IMAGE_SIZES:
        bad(f"image size {cfg.image_size} is not supported", f"use one of {', '.join(map(str, IMAGE_SIZES))}")
    if cfg.alpha not in ALPHAS:
        bad(f"alpha {cfg.alpha} is not a MobileNetV2 width", f"use one of {', '.join(map(str, ALPHAS))}")
    if cfg.resize not in RESIZE_POLICIES:
        bad(f"resize policy {cfg.resize!r} is unknown", f"use one of {', '.join(RESIZE_POLICIES)}")
    if len(cfg.split) not in (2, 3) or any(not 0 <= float(x) < 1 for x in cfg.split[1:]) \
            or abs(sum(float(x) for x in cfg.split) - 1.0) > 1e-6 or not 0 < float(cfg.split[0]) <= 1:
        bad(f"split {cfg.split} is not a train/val[/test] partition", "e.g. --split 0.8,0.1,0.1 (sums to 1)")
    cfg.split = [float(x) for x in cfg.split]
    for name in ("epochs", "batch_size", "head_units", "calibration_size", "augment_views"):
        if getattr(cfg, name) < 1:
            bad(f"{toml_name(name)} must be at least 1", f"e.g. --{toml_name(name)} {getattr(Config, name)}")
    if not 0 <= cfg.dropout < 1:
        bad(f"dropout {cfg.dropout} must be in [0, 1)", "e.g. --dropout 0.2")
    if not cfg.quantize:
        bad("no quantization mode given (quantize is empty)", f"give at least one of {', '.join(MODES)}, e.g. "
            "--quantize int8")
    for m in cfg.quantize:
        if m not in MODES:
            bad(f"quantization mode {m!r} is unknown", f"use one of {', '.join(MODES)}")
    cfg.quantize = list(dict.fromkeys(cfg.quantize))
    if cfg.io not in IO_TYPES:
        bad(f"io type {cfg.io!r} is unknown", f"use one of {', '.join(IO_TYPES)}")
    if not 0 <= cfg.min_agreement <= 1 or not 0 <= cfg.max_drop <= 100:
        bad("gates: --min-agreement must be within [0, 1] and --max-drop within [0, 100] points",
            "e.g. --max-drop 1 --min-agreement 0.97")
    for name in ("learning_rate", "fine_tune_lr"):
        if not 0 < getattr(cfg, name) <= 10:
            bad(f"{toml_name(name)} {getattr(cfg, name)} must be in (0, 10]",
                f"e.g. --{toml_name(name)} {getattr(Config, name)}")
    return cfg


def read_toml(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"config file not found: {p}", hint="pass a TOML file, e.g. --config edgetl.toml")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgetlError(f"{p}: not valid TOML ({e})", hint="check the syntax: key = value") from None
    if "edgetl" in data and isinstance(data["edgetl"], dict):
        extra = set(data) - {"edgetl"}
        data = {**data["edgetl"], **{k: data[k] for k in extra}}
    out = {}
    for k, v in data.items():
        name = k.replace("-", "_")
        if name not in FIELDS:
            import difflib

            close = difflib.get_close_matches(name, FIELDS, n=1)
            raise EdgetlError(f"{p}: unknown option {k!r}",
                              hint=(f"did you mean {toml_name(close[0])!r}? " if close else "")
                              + "valid: " + ", ".join(toml_name(f) for f in FIELDS))
        out[name] = v
    return out


def resolve(config_file=None, base: dict | None = None, **flags) -> Config:
    """Defaults < ``base`` (e.g. a run's recorded config) < TOML file < flags that are not None."""
    values = {}
    for source in (base or {}, read_toml(config_file) if config_file else {}):
        for k, v in source.items():
            if k in FIELDS:
                values[k] = v
    for k, v in flags.items():
        if k not in FIELDS:
            raise KeyError(k)
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0):
            values[k] = v
    cfg = Config(**{k: _coerce(k, v) for k, v in values.items()})
    return validate(cfg)
