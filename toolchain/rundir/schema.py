"""One shape check for every JSON file of a run (split.json, report.json, cache/index.json).

A run's JSON files are input like any other: a user may edit them, a full disk or a killed copy may cut
them, a colleague may hand over a run made by another version. Before any field is used, the whole
document is checked against a declared shape (types, ranges, allowed values, lengths); the first
mismatch is one error naming the file and the field (``files.train[3][1]``) and saying what was expected,
so a damaged file never becomes a traceback or, worse, a silently wrong model (``"classes": "hotdog"``
would be six labels ``h, o, t, d, o, g``).

A shape is built from the small checkers below (``text``, ``integer``, ``number``, ``list_of``, ``obj``,
...); each is a callable ``check(value, path)`` that raises ``Bad`` with the path of the field.
"""

from __future__ import annotations

import math
import re
import shlex
import unicodedata
from pathlib import Path

from edge_runtime.errors import EdgetlError

from toolchain.ui import shown


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


class Bad(Exception):
    """A field that does not have the declared shape: where (``path``) and why."""

    def __init__(self, path: list, reason: str):
        super().__init__(reason)
        self.path = list(path)
        self.reason = reason

    @property
    def field(self) -> str:
        out = ""
        for p in self.path:
            if isinstance(p, int):
                out += f"[{p}]"
            elif isinstance(p, str) and p.isidentifier():
                out += f".{p}" if out else p
            else:
                out += f"[{shown(p)}]"
        return out or "the document"


def _bad(path, expected: str, value):
    raise Bad(path, f"must be {expected}, not {_kind(value)} ({shown(value)})")


# ------------------------------------------------------------------ checkers


def printable_problem(s: str) -> str | None:
    """Why ``s`` cannot be written as one line of text (a label, a name), or None: a control character
    or line break, a surrogate (a name that was not valid UTF-8)."""
    for ch in s:
        cat = unicodedata.category(ch)
        if ch in "\n\r":
            return "a line break"
        if cat == "Cs":
            return "bytes that are not UTF-8"
        if cat in ("Cc", "Zl", "Zp"):
            return f"a control character (U+{ord(ch):04X})"
    return None


def text(nonempty: bool = False, line: bool = False, pattern: str | None = None, what: str | None = None):
    """A string; ``nonempty``; ``line``: writable as one line (no control characters); ``pattern``: a
    full match of that regular expression."""
    rx = re.compile(pattern) if pattern else None

    def check(v, path):
        if not isinstance(v, str):
            _bad(path, what or "a string", v)
        if nonempty and not v.strip():
            raise Bad(path, "must not be empty")
        if line:
            why = printable_problem(v)
            if why:
                raise Bad(path, f"holds {why} ({shown(v)})")
        if rx is not None and not rx.fullmatch(v):
            _bad(path, what or f"a string like {pattern}", v)
    return check


def integer(lo=None, hi=None):
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, int):
            _bad(path, "a whole number", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad(path, f"must be a whole number from {lo if lo is not None else '-inf'} to "
                            f"{hi if hi is not None else 'inf'}, not {shown(v)}")
    return check


def number(lo=None, hi=None):
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _bad(path, "a finite number", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise Bad(path, f"must be a number from {lo} to {hi}, not {shown(v)}")
    return check


def boolean():
    def check(v, path):
        if not isinstance(v, bool):
            _bad(path, "true or false", v)
    return check


def choice(*values):
    def check(v, path):
        if not any(type(v) is type(x) and v == x for x in values):
            _bad(path, "one of " + ", ".join(map(str, values)), v)
    return check


def nullable(spec):
    def check(v, path):
        if v is not None:
            spec(v, path)
    return check


def anything():
    def check(v, path):
        return None
    return check


def list_of(item, min_len: int = 0, max_len: int | None = None, unique: bool = False, what: str = "a list"):
    def check(v, path):
        if not isinstance(v, list):
            _bad(path, what, v)
        if len(v) < min_len:
            raise Bad(path, f"must hold at least {min_len} item(s), not {len(v)}")
        if max_len is not None and len(v) > max_len:
            raise Bad(path, f"must hold at most {max_len} item(s), not {len(v)}")
        for i, x in enumerate(v):
            item(x, path + [i])
        if unique:
            seen = set()
            for i, x in enumerate(v):
                if x in seen:
                    raise Bad(path + [i], f"repeats {shown(x)}")
                seen.add(x)
    return check


def pair(*items):
    """A list of exactly these items, in order (e.g. ``[path, label]``)."""
    def check(v, path):
        if not isinstance(v, list) or len(v) != len(items):
            _bad(path, f"a list of {len(items)} items", v)
        for i, (x, spec) in enumerate(zip(v, items)):
            spec(x, path + [i])
    return check


def dict_of(value, keys=None, min_len: int = 0):
    """An object whose values all have the shape ``value``; ``keys``: the only keys allowed."""
    def check(v, path):
        if not isinstance(v, dict):
            _bad(path, "an object", v)
        if len(v) < min_len:
            raise Bad(path, f"must hold at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
        for k, x in v.items():
            if keys is not None and k not in keys:
                raise Bad(path, f"has the key {shown(k)}; its keys must be among {', '.join(keys)}")
            value(x, path + [k])
    return check


def obj(fields: dict, required=()):
    """An object whose known ``fields`` (name -> checker) have their shape, in this order; ``required``
    must be present. Unknown fields are allowed (a newer edgetl may add some)."""
    def check(v, path):
        if not isinstance(v, dict):
            _bad(path, "an object", v)
        for name in required:
            if name not in v:
                raise Bad(path + [name], "is missing")
        for name, spec in fields.items():
            if name in v:
                spec(v[name], path + [name])
    return check


# ------------------------------------------------------------------ files


_STAGED = re.compile(r"^\.(?P<name>.+)\.edgetl-(?:new|old)-\d+$")
_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp(?:\.[^.]*)?$")


def user_path(path) -> str:
    """``path`` as the user knows it: a run's staged copy (``.RUN.edgetl-new-PID``) is the run itself,
    and a temporary file (``.model.keras.a1b2c3d4.tmp.keras``) the file it becomes."""
    parts = []
    for part in Path(path).parts:
        m = _STAGED.match(part) or _TMP.match(part)
        parts.append(m.group("name") if m else part)
    return str(Path(*parts)) if parts else str(path)


def rebuild_hint(run, data_dir=None) -> str:
    data = shlex.quote(str(data_dir)) if isinstance(data_dir, str) and data_dir else "DATA_DIR"
    return (f"restore the file from a copy, or make the run again: edgetl build {data} --out "
            f"{shlex.quote(user_path(run))} --force")


def check(doc, spec, file, hint: str):
    """``doc`` (parsed from ``file``) against ``spec``; one EdgetlError (exit 2) naming the file and the
    first field that does not fit."""
    try:
        spec(doc, [])
    except Bad as b:
        raise EdgetlError(f"{user_path(file)} is damaged: {b.field} {b.reason}", hint=hint) from None
    except RecursionError:
        raise EdgetlError(f"{user_path(file)} is damaged: nested too deep", hint=hint) from None
    return doc


def read(file, spec, hint: str, missing=None):
    """Read and check a run's JSON file through edge_runtime.files (regular files only, size-capped,
    never blocking). ``missing``: returned when the file does not exist (else an error)."""
    from edge_runtime import files

    try:
        doc = files.read_json(file, what=Path(file).name)
    except files.FileProblem as e:
        if e.missing and missing is not None:
            return missing
        raise EdgetlError(f"{user_path(file)}: {e.reason}", hint=hint) from None
    except ValueError as e:
        raise EdgetlError(f"{user_path(file)} is damaged (not valid JSON: {str(e)[:120]})", hint=hint) from None
    return check(doc, spec, file, hint)


def fits(doc, spec) -> bool:
    """True when ``doc`` has the shape ``spec`` (for files that are simply rebuilt when they do not)."""
    try:
        spec(doc, [])
    except (Bad, RecursionError):
        return False
    return True


# ------------------------------------------------------------------ the shapes of a run's files


SPLITS = ("train", "val", "test")


def _relpath(v, path):
    """A photo's path inside the data folder: relative, no '..', no NUL."""
    text(nonempty=True, what="a path inside the data folder")(v, path)
    p = Path(v)
    if "\0" in v or p.is_absolute() or ".." in p.parts or v.startswith("~"):
        raise Bad(path, f"must be a path inside the data folder, not {shown(v)}")


def _relpath_or_under(unknown_dir):
    """A photo's path inside the data folder, or (a run made with --unknown) an absolute path inside
    split.json's ``unknown_dir``."""
    base = Path(unknown_dir) if isinstance(unknown_dir, str) and Path(unknown_dir).is_absolute() else None

    def check(v, path):
        if base is not None and isinstance(v, str) and Path(v).is_absolute():
            p = Path(v)
            if "\0" in v or ".." in p.parts or base not in p.parents:
                raise Bad(path, f"must be a path inside the data folder or the unknown folder, not {shown(v)}")
            return
        _relpath(v, path)
    return check


def split_shape(doc):
    """The shape of split.json (labels must index ``classes``, so the shape depends on the document)."""
    from edge_runtime.preprocess import RESIZE_POLICIES

    n = len(doc["classes"]) if isinstance(doc, dict) and isinstance(doc.get("classes"), list) else 0
    entry = pair(_relpath_or_under(doc.get("unknown_dir") if isinstance(doc, dict) else None),
                 integer(0, max(n - 1, 0)))
    shape = obj({
        "data_dir": text(nonempty=True, what="the path of the data folder"),
        "layout": choice("folders", "splits"),
        "seed": nullable(integer()),
        "fractions": nullable(list_of(number(0, 1), 2, 3)),
        "classes": list_of(text(nonempty=True, line=True), min_len=2, unique=True, what="a list of class names"),
        "test_is_val": boolean(),
        "image_size": integer(1, 4096),  # the side of the cached photos: the model's input
        "resize": choice(*RESIZE_POLICIES),
        "files": dict_of(list_of(entry, min_len=1), keys=SPLITS),
        "skipped": list_of(obj({"path": text(), "reason": text()}, required=("path", "reason"))),
        "notes": list_of(text()),
        "sha256": dict_of(text(pattern="[0-9a-f]{64}", what="a SHA-256 (64 hex digits)")),
        "unknown_dir": text(nonempty=True, what="the path of the --unknown folder"),
    }, required=("data_dir", "layout", "classes", "image_size", "resize", "files"))

    def check(v, path):
        shape(v, path)
        files = v["files"]
        for s in ("train", "val"):
            if s not in files:
                raise Bad(path + ["files"], f"has no {s} split (every run has train and val)")
        no_test = "test" not in files
        if "test_is_val" in v and v["test_is_val"] != no_test:
            raise Bad(path + ["test_is_val"], f"must be {str(no_test).lower()}: the files have "
                                              f"{'no' if no_test else 'a'} test split")
        seen = {}
        for s, items in files.items():
            for i, (rel, _) in enumerate(items):
                if rel in seen:
                    raise Bad(path + ["files", s, i, 0], f"lists {shown(rel)} again (already in {seen[rel]})")
                seen[rel] = s
    return check


def _config_shape(v, path):
    from toolchain.cfg import config

    if not isinstance(v, dict):
        _bad(path, "an object", v)
    try:
        config.resolve(None, base=v)
    except EdgetlError as e:
        raise Bad(path, f"is not valid: {e.message}") from None


def report_shape():
    from toolchain.cfg.config import MODES

    num, cnt, txt = nullable(number()), integer(0), text()
    section = obj({"epochs": cnt, "seconds": num, "kept_epoch": nullable(integer(0)),
                   "stopped_early": nullable(boolean()), "kept": choice("feature_extraction", "fine_tune"),
                   "val_accuracy": num, "val_loss": num, "from_layer": integer(0), "from_layer_name": txt,
                   "reason": nullable(txt)})
    per_class = dict_of(obj({"precision": num, "recall": num, "support": cnt},
                            required=("precision", "recall", "support")))
    matrix = list_of(list_of(cnt))
    model = obj({"size_bytes": cnt, "passed": boolean(), "reason": nullable(txt), "confusion": matrix,
                 "latency_ms": dict_of(num), "test_accuracy": num, "accuracy_drop_pt": num, "agreement": num,
                 "kl_mean": num, "keras_accuracy": num, "tflite_accuracy": num, "n": cnt, "path": txt,
                 "convert_seconds": num, "full_integer": boolean(), "mediapipe_squash_agreement": num,
                 "mediapipe_squash_n": cnt,
                 "consumers": dict_of(obj({"measured": boolean(), "declared": boolean(), "passed": boolean(),
                                           "n": cnt, "agreement": num, "tflite_accuracy": num,
                                           "reason": nullable(txt)}))}, required=("size_bytes",))
    return obj({
        "edgetl_version": txt, "created": txt, "status": txt, "data_dir": txt,
        "config": _config_shape,
        "classes": list_of(text(nonempty=True, line=True), unique=True, what="a list of class names"),
        "counts": dict_of(dict_of(cnt), keys=SPLITS),
        "skipped": list_of(obj({"path": txt, "reason": txt}, required=("path", "reason"))),
        "notes": list_of(txt),
        "weights": obj({"source": nullable(txt), "file": txt, "sha256": txt, "note": txt}),
        "stages": obj({"feature_extraction": section, "fine_tune": section}),
        "history": dict_of(dict_of(list_of(num))),
        "keras": obj({"n": cnt, "test_accuracy": num, "val_accuracy": num, "val_loss": num, "test_split": txt,
                      "per_class": per_class, "confusion": matrix, "path": txt, "sha256": txt, "stage": txt}),
        "tflite": dict_of(model, keys=MODES),
        "timing": obj({"steps": list_of(obj({"step": txt, "seconds": num, "finished": txt,
                                             "modes": list_of(txt)})),
                       "total_seconds": num}),
        "distribution": obj({"strategy": txt, "workers": cnt, "task_index": cnt, "devices": list_of(txt)}),
    })


INDEX_SHAPE = obj({"image_size": integer(1), "resize": text(), "rows": dict_of(integer(0)),
                   "shard": obj({"task": integer(0), "workers": integer(1)})},
                  required=("image_size", "resize", "rows"))


def run_file(run, name: str) -> Path:
    """``run/name`` (a staged copy of a run holds every file of the run, as it is now: runfolder.Staged)."""
    return Path(run) / name


def read_split(run) -> dict:
    """split.json of a run, checked whole; an error (exit 2) naming the field when it is damaged."""
    run = Path(run)
    f = run_file(run, "split.json")
    if not f.exists() and not f.is_symlink():
        raise EdgetlError(f"{user_path(run)} is not an edgetl run (no split.json)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
    doc = read(f, anything(), rebuild_hint(run))
    data_dir = doc.get("data_dir") if isinstance(doc, dict) else None
    return check(doc, split_shape(doc), f, rebuild_hint(run, data_dir))


def read_report(run, data_dir=None) -> dict:
    """report.json of a run ({} when there is none), checked whole."""
    run = Path(run)
    return read(run_file(run, "report.json"), report_shape(), rebuild_hint(run, data_dir), missing={})


def check_run(run) -> dict:
    """Every JSON file of a run a command relies on (split.json, report.json), checked whole before any
    work. Returns split.json."""
    split = read_split(run)
    rep = read_report(run, split.get("data_dir"))
    cfg = rep.get("config")
    if isinstance(cfg, dict) and "image_size" in cfg:  # the config was checked whole: it resolves
        from toolchain.cfg import config

        size = config.resolve(None, base=cfg).input_size()
        if split["image_size"] != size:
            raise EdgetlError(f"{user_path(run_file(Path(run), 'split.json'))} is damaged: image_size must be {size} "
                              f"(the model's input, from report.json's config), not {split['image_size']}",
                              hint=rebuild_hint(run, split.get("data_dir")))
    return split
