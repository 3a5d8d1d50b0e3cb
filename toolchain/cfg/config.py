"""The single source of defaults for every toolchain option.

Resolution order: these defaults < a TOML file (``--config FILE``) < command-line flags. TOML keys are
the option names with ``_`` or ``-`` (``image_size`` or ``image-size``), at the top level or under an
``[edgetl]`` table. Unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgetlError
from edge_runtime.preprocess import DEFAULT_RESIZE, RESIZE_POLICIES

from toolchain.ui import shown

IMAGE_SIZES = (96, 128, 160, 192, 224)
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MODES = ("int8", "float16", "dynamic", "float32")
IO_TYPES = ("uint8", "int8", "float32")
TRAIN_VIEWS = ("fit", "both")
# The consumers parity measures each TFLite model under (toolchain.core.parity.consumer_parity):
# edge: edge_runtime's fit on the first interpreter installed (ai-edge-litert); mediapipe: MediaPipe Tasks'
# (and the Task Library's) fit of the whole frame; tflite-runtime: edge_runtime's fit on tflite-runtime.
CONSUMERS = ("edge", "mediapipe", "tflite-runtime")


@dataclass
class Config:
    # model
    alpha: float = 1.0
    image_size: int = 160  # what the network sees (MobileNetV2's resolution)
    # the model's input is image_size / central_fraction on each side, and its first layer keeps the central
    # image_size: every consumer (MediaPipe and the Task Library fit the whole frame) gives the network the
    # photo's centre, zoomed as a centre crop would (BENCHMARKS.md, "The centre, in the model")
    central_fraction: float = 0.8
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
    # fit: train on the photos as the resize policy fits them (what the devices see); both: also on a second
    # fit of every training photo (the centre crop; MediaPipe's fit for the crop policy), so the model knows
    # a photo however a consumer frames it
    train_views: str = "fit"
    # stage 2: fine-tuning the top of the base
    fine_tune_from: str = "100"  # layer index into the base, or a layer name
    fine_tune_lr: float = 1e-5
    fine_tune_epochs: int = 5
    fine_tune_patience: int = 2
    # conversion and parity
    quantize: list = field(default_factory=lambda: ["int8", "float32"])  # the device picks the faster
    calibration_size: int = 50  # int8: agreement as with 100 and 300 on three datasets, half the time of 100 (BENCHMARKS.md)
    io: str = "uint8"
    max_drop: float = 1.0
    min_agreement: float = 0.97
    # consumers the parity gate holds for (empty: all that apply: edge and tflite-runtime where measured, and
    # mediapipe for the mediapipe policy); every consumer is measured either way
    consumers: list = field(default_factory=list)
    # photos of none of the classes, and the score below which the models answer "unknown"
    unknown: str = ""  # a folder of such photos: one more class, "unknown", and a threshold calibrated on them
    min_score: float = 0.0  # 0: calibrated from `unknown` photos when given, else none

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def crop_margin(self) -> int:
        """Pixels the model's first layer drops on each side of its input."""
        return crop_margin(self.image_size, self.central_fraction)

    def input_size(self) -> int:
        """The side of the model's input: what every consumer resizes a photo to."""
        return self.image_size + 2 * self.crop_margin()


def crop_margin(image_size: int, central_fraction: float) -> int:
    return int(round(image_size * (1.0 / central_fraction - 1.0) / 2.0))


def input_text(cfg: dict) -> str:
    """``160 px`` or ``the central 160 px of a 200-px input``, from a run's recorded config."""
    size, frac = cfg.get("image_size"), cfg.get("central_fraction", 1.0)
    if not isinstance(size, int) or not isinstance(frac, (int, float)) or not 0.5 <= frac <= 1:
        return f"{size} px"
    m = crop_margin(size, frac)
    return f"the central {size} px of a {size + 2 * m}-px input" if m else f"{size} px"


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# what the stage-1 model and the run's data were made with: `finetune` keeps them
STAGE1_KEYS = ("alpha", "image_size", "central_fraction", "weights", "head_units", "dropout", "resize", "split")


def toml_name(name: str) -> str:
    """The spelling users write: image-size (TOML key), --image-size (flag)."""
    return name.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``lo``..``hi``, open at either end; ``integer``: whole numbers only."""

    lo: float
    hi: float
    integer: bool = True
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def text(self) -> str:
        if self.integer:
            return f"a whole number from {self.lo} to {self.hi}"
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


# Every number edgetl takes, from a flag or a TOML key, is checked against this one table (check_number):
# finite, of the right kind, within range. The upper bounds keep a typo from allocating the machine away
# (head-units 1e20), overflowing a C int (--threads 2147483648) or running for ever.
RANGES = {
    # training options (Config fields: flags and TOML keys)
    "head_units": Range(1, 65536), "epochs": Range(1, 100000), "fine_tune_epochs": Range(0, 100000),
    "batch_size": Range(1, 65536), "calibration_size": Range(1, 1000000), "patience": Range(0, 100000),
    "fine_tune_patience": Range(0, 100000), "augment_views": Range(1, 100), "seed": Range(0, 2**32 - 1),
    "dropout": Range(0, 1, integer=False, hi_open=True),
    "learning_rate": Range(0, 10, integer=False, lo_open=True),
    "fine_tune_lr": Range(0, 10, integer=False, lo_open=True),
    "max_drop": Range(0, 100, integer=False), "min_agreement": Range(0, 1, integer=False),
    "min_score": Range(0, 1, integer=False, hi_open=True),
    "central_fraction": Range(0.5, 1, integer=False),
    # options of the command line only
    "threads": Range(1, 1024), "top_k": Range(1, 100000), "smooth": Range(1, 100000),
    "max_frames": Range(1, 2**31 - 1), "runs": Range(1, 1000000), "warmup": Range(0, 1000000),
    "local_workers": Range(1, 64), "task_index": Range(0, 65535),
    "worker_timeout": Range(1, 86400, integer=False),
}


def check_number(name: str, value, shown_as: str | None = None):
    """``value`` if it is a finite number of the kind and range RANGES gives ``name``; else the one error
    every numeric option gets: exit 2 naming the option, the value and the valid range. ``None`` (the
    option not given) passes."""
    if value is None:
        return None
    r = RANGES[name]
    label = shown_as or toml_name(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgetlError(f"{label} {shown(value)} is not a number", hint=f"use {r.text()}")
    if isinstance(value, float) and not math.isfinite(value):
        raise EdgetlError(f"{label} must be a finite number, not {value!r}", hint=f"use {r.text()}")
    if r.integer and value != int(value):
        raise EdgetlError(f"{label} {value!r} is not a whole number", hint=f"use {r.text()}")
    if value not in r:
        raise EdgetlError(f"{label} {value:g} is out of range" if isinstance(value, float) else
                          f"{label} {value} is out of range", hint=f"use {r.text()}")
    return int(value) if r.integer else value


LIST_ITEM = {"split": "number", "quantize": "str", "consumers": "str"}


def _coerce(name: str, value):
    f = FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown_name = toml_name(name)
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
            return check_number(name, int(value), shown_name) if name in RANGES else int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            v = float(value)
            return check_number(name, v, shown_name) if name in RANGES else v
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
        raise EdgetlError(f"option {shown_name}: {shown(value)} is not a valid {kind}",
                          hint=f"e.g. {shown_name} = {_toml_value(default)} (the default)") from None


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
        bad(f"resize policy {shown(cfg.resize)} is unknown", f"use one of {', '.join(RESIZE_POLICIES)}")
    if cfg.train_views not in TRAIN_VIEWS:
        bad(f"train views {shown(cfg.train_views)} is unknown", f"use one of {', '.join(TRAIN_VIEWS)}")
    try:
        sp = [float(x) for x in cfg.split]
    except (TypeError, ValueError):
        sp = []
    if len(sp) not in (2, 3) or any(not 0 <= x <= 1 for x in sp) or abs(sum(sp) - 1.0) > 1e-6:
        bad(f"split {shown(cfg.split)} is not a train/val[/test] partition (2 or 3 fractions from 0 to 1 that sum "
            "to 1)", "e.g. --split 0.8,0.1,0.1, or --split 0.9,0.1 (no test split: val is also the test split)")
    if not sp[0] > 0 or not sp[1] > 0:
        which = "training" if not sp[0] > 0 else "validation"
        bad(f"split {shown(cfg.split)} leaves no {which} photos: every run needs a training and a validation "
            "split (early stopping and the choice of the stage-2 model use it)",
            "e.g. --split 0.8,0.1,0.1, or --split 0.9,0.1 (no test split: val is also the test split)")
    cfg.split = sp
    for name in RANGES:
        if name in FIELDS:
            setattr(cfg, name, check_number(name, getattr(cfg, name)))
    cfg.fine_tune_from = check_layer_spec(cfg.fine_tune_from)
    if not cfg.quantize:
        bad("no quantization mode given (quantize is empty)", f"give at least one of {', '.join(MODES)}, e.g. "
            "--quantize int8")
    for m in cfg.quantize:
        if m not in MODES:
            bad(f"quantize: mode {shown(m)} is unknown", f"use one of {', '.join(MODES)}")
    cfg.quantize = list(dict.fromkeys(cfg.quantize))
    if cfg.io not in IO_TYPES:
        bad(f"io type {shown(cfg.io)} is unknown", f"use one of {', '.join(IO_TYPES)}")
    for c in cfg.consumers:
        if c not in CONSUMERS:
            bad(f"consumers: {shown(c)} is not a consumer edgetl measures", f"use one or more of "
                f"{', '.join(CONSUMERS)}, e.g. --consumers edge,mediapipe")
    cfg.consumers = list(dict.fromkeys(cfg.consumers))
    return cfg


LAYER_INDEX = re.compile(r"[+-]?[0-9]{1,6}")
LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,199}")


def check_layer_spec(spec) -> str:
    """--fine-tune-from: a layer index (ASCII digits, negative from the end) or a layer name (Keras's
    characters). Anything else (``--5``, ``²``, an empty string) is an error before TensorFlow loads."""
    s = str(spec).strip()
    if LAYER_INDEX.fullmatch(s):
        return str(int(s))
    if LAYER_NAME.fullmatch(s):
        return s
    raise EdgetlError(f"--fine-tune-from {shown(str(spec))} is neither a layer index nor a layer name",
                      hint="e.g. --fine-tune-from 100 (an index into the base; negative counts from the end) or "
                           "a layer name such as block_13_expand")



def read_toml(path) -> dict:
    """The options of a TOML file (read through edge_runtime.files: a regular file, size-capped, never a
    folder or a named pipe; UTF-8 with or without a byte-order mark)."""
    from edge_runtime import files

    p = Path(path)
    hint = "pass a TOML file, e.g. --config edgetl.toml"
    try:
        text = files.read_text(p, limit=1 << 20, what="config file")
    except files.FileProblem as e:
        if e.missing:
            raise EdgetlError(f"config file not found: {p}", hint=hint) from None
        raise EdgetlError(e.message, hint=hint) from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgetlError(f"{p}: not valid TOML ({e})", hint="check the syntax: key = value") from None
    except RecursionError:
        raise EdgetlError(f"{p}: not valid TOML for edgetl (values nested too deep)",
                          hint="options are numbers, strings, booleans or flat lists, e.g. split = [0.8, 0.1, 0.1]") \
            from None
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
    if isinstance(base, dict) and "central_fraction" not in base:
        base = {**base, "central_fraction": 1.0}  # a run recorded before the option: its model sees the whole input
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
