"""From a folder of labelled photos to a validated, split, decoded-once dataset.

Layouts: ``DATA_DIR/<class>/...`` (the split is made here: seeded, stratified, recorded in
``split.json``), or ``DATA_DIR/{train,val[,test]}/<class>/...`` (the given split is used; without
``test/`` the validation split doubles as the test split, and the report says so).

Every file is read by content (see edge_runtime.preprocess). Unreadable files are listed with the
reason and skipped (``strict`` makes them an error). Each usable photo is decoded and fitted once, with
the runtime's own preprocessing, into ``RUN/cache/images.u8``: a memory-mapped uint8 array, so memory
does not grow with the dataset and later stages never decode again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import unicodedata
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime import files as files_mod
from edge_runtime import preprocess
from edge_runtime.errors import EdgetlError, ImageError

from toolchain.rundir import runfolder
from toolchain.rundir import schema
from toolchain import ui

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
IMBALANCE_RATIO = 3.0


@dataclass
class Dataset:
    data_dir: Path
    classes: list
    layout: str  # "folders" (split made here) or "splits" (given)
    image_size: int
    resize: str
    images: np.ndarray  # (rows, S, S, 3) uint8, memory-mapped
    files: dict  # split -> list of [relpath, label, row]
    skipped: list = field(default_factory=list)  # [{"path", "reason"}]
    notes: list = field(default_factory=list)
    test_is_val: bool = False
    hashes: dict = field(default_factory=dict)  # relpath -> sha256 of the file's bytes when it was decoded
    views: object = None  # --train-views both: train.SecondViews of the training photos, made once

    def rows(self, split: str) -> np.ndarray:
        split = "val" if (split == "test" and self.test_is_val) else split
        return np.asarray([f[2] for f in self.files.get(split, [])], dtype=np.int64)

    def labels(self, split: str) -> np.ndarray:
        split = "val" if (split == "test" and self.test_is_val) else split
        return np.asarray([f[1] for f in self.files.get(split, [])], dtype=np.int64)

    def paths(self, split: str) -> list:
        split = "val" if (split == "test" and self.test_is_val) else split
        return [str(self.data_dir / f[0]) for f in self.files.get(split, [])]

    def counts(self) -> dict:
        out = {}
        for s in SPLITS:
            if s not in self.files:
                continue
            c = {name: 0 for name in self.classes}
            for _, label, _ in self.files[s]:
                c[self.classes[label]] += 1
            out[s] = c
        return out

    def summary(self) -> dict:
        counts = self.counts()
        return {
            "data_dir": str(self.data_dir),
            "classes": self.classes,
            "layout": self.layout,
            "counts": counts,
            "total": sum(sum(c.values()) for c in counts.values()),
            "skipped": len(self.skipped),
            "test_split": "val" if self.test_is_val else "test",
        }


# ---------------------------------------------------------------- scanning


def _subdirs(p: Path) -> list:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def printable(name) -> str:
    """A file or folder name as it can be shown on one line: bytes that are not UTF-8 as ``\\xNN``,
    control characters and line breaks escaped (``\\n``)."""
    s = os.fsencode(str(name)).decode("utf-8", "backslashreplace")
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in s)


def _find_split_dirs(data_dir: Path) -> dict:
    """{split: folder} of the split folders of ``data_dir`` (any case, any alias); two folders for one
    split (``Train/`` beside ``train/``, ``val/`` beside ``validation/``) are an error, never one ignored."""
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        hits = [d for d in _subdirs(data_dir) if d.name.lower() in aliases]
        if len(hits) > 1:
            raise EdgetlError(f"{printable(data_dir)} has {len(hits)} folders for the {split} split: "
                              f"{', '.join(printable(h.name) + '/' for h in hits)}",
                              hint=f"merge them into one folder ({split}/) or rename the others; "
                                   "edgetl never picks one and ignores the rest")
        if hits:
            found[split] = hits[0]
    return found


def check_class_names(names: list, where: Path):
    """Class folder names must be labels: one line of UTF-8 text each (labels.txt, the model's metadata),
    no two alike once Unicode forms and case are set aside. An error names the folder, printably."""
    for name in names:
        why = schema.printable_problem(name)
        if why == "bytes that are not UTF-8":
            raise EdgetlError(f"class folder {printable(where / name)} has a name that is not valid UTF-8",
                              hint="rename the folder with a UTF-8 name: its name becomes a label, which is text")
        if why:
            raise EdgetlError(f"class folder {printable(where / name)} has {why} in its name",
                              hint="rename the folder: its name becomes a label, and labels are written one per "
                                   "line (labels.txt)")
        if name != name.strip():
            raise EdgetlError(f"class folder '{printable(where / name)}' has a name that begins or ends with "
                              "a space", hint="rename the folder without the surrounding spaces (labels are read "
                                              "back one per line, stripped)")
    seen = {}
    for name in names:
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            other = seen[key]
            if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
                msg = (f"class folders {other!a} and {name!a} in {printable(where)} are the same name "
                       f"'{name}' written in two Unicode forms")
            else:
                msg = f"class folders '{other}' and '{name}' in {printable(where)} differ only in case"
            raise EdgetlError(msg, hint="merge them into one folder, or rename one: they would be two labels that "
                                        "read the same (and one folder on macOS and Windows)")
        seen[key] = name


def _ignored(d: Path, keep: list, what: str, warn: bool):
    """Warn about what is directly in ``d`` but not read (loose files, folders that are not ``keep``)."""
    loose = sorted(f for f in d.iterdir() if not f.name.startswith(".") and f not in keep)
    if loose and warn:
        one = len(loose) == 1
        ui.warn(f"{len(loose)} entr{'y' if one else 'ies'} directly in {printable(d)} {'is' if one else 'are'} "
                f"ignored ({what}), e.g. {printable(loose[0].name)}")


def scan(data_dir, skipped=None, warn: bool = True) -> tuple:
    """(layout, classes, {split_or_'all': [(path, label)]}) of a data folder; errors for bad layouts
    (two folders for one split, class names that cannot be labels or that collide). Entries that are not
    regular files and unreadable sub-folders are appended to ``skipped``; what is ignored is said (``warn``)."""
    d = Path(data_dir)
    if not d.exists():
        raise EdgetlError(f"data folder not found: {d}", hint="pass a folder with one sub-folder per class")
    if not d.is_dir():
        raise EdgetlError(f"{d} is a file, not a data folder", hint="pass a folder with one sub-folder per class")
    split_dirs = _find_split_dirs(d)
    if "train" in split_dirs:
        if "val" not in split_dirs:
            raise EdgetlError(f"{d} has a train/ folder but no val/ folder",
                              hint="add val/ (same class folders), or put the class folders directly in DATA_DIR")
        _ignored(d, list(split_dirs.values()), "not a split folder: train/, val/, test/", warn)
        classes = [c.name for c in _subdirs(split_dirs["train"])]
        _check_classes(classes, split_dirs["train"])
        groups = {}
        for split, sd in split_dirs.items():
            sub = [c.name for c in _subdirs(sd)]
            check_class_names(sub, sd)
            if sorted(sub) != classes:
                missing = sorted(set(classes) - set(sub))
                extra = sorted(set(sub) - set(classes))
                raise EdgetlError(
                    f"{sd}: class folders differ from train/ (missing: {', '.join(missing) or '-'}; "
                    f"extra: {', '.join(extra) or '-'})",
                    hint="every split folder must hold the same class folders",
                )
            groups[split] = [(p, i) for i, c in enumerate(classes)
                             for p in preprocess.iter_image_files(sd / c, skipped)]
        return "splits", classes, groups
    classes = [c.name for c in _subdirs(d)]
    _check_classes(classes, d)
    _ignored(d, [d / c for c in classes], "not in a class folder", warn)
    files = [(p, i) for i, c in enumerate(classes) for p in preprocess.iter_image_files(d / c, skipped)]
    return "folders", classes, {"all": files}


def _check_classes(classes, where: Path):
    check_class_names(classes, where)
    if not classes:
        raise EdgetlError(f"{where} has no class folders",
                          hint="put each class's photos in its own sub-folder, e.g. photos/cat/, photos/dog/")
    if len(classes) == 1:
        raise EdgetlError(f"{where} has only one class folder ({classes[0]}); a classifier needs at least two",
                          hint="add a folder for each other class")
    for c in classes:
        if not any(True for _ in preprocess.iter_image_files(where / c)):
            raise EdgetlError(f"class folder {where / c} is empty", hint="add photos to it or remove it")


# ---------------------------------------------------------------- photos of none of the classes (--unknown)


def relpath(path, data_dir) -> str:
    """How split.json names a photo: relative to the data folder, or absolute for a photo outside it (the
    --unknown folder's, recorded as split.json's ``unknown_dir``)."""
    p, d = Path(path), Path(data_dir)
    try:
        return str(p.relative_to(d))
    except ValueError:
        return str(p)


def check_unknown(unknown, data_dir, classes=None) -> list:
    """The --unknown folder's photo files (recursively), after checking what needs no TensorFlow: a folder,
    outside the data folder (and not holding it), with photos, and no class folder already named
    ``unknown`` (the label its photos get)."""
    from edge_runtime.classifier import UNKNOWN_LABEL

    u, d = Path(unknown), Path(data_dir)
    hint = "pass --unknown DIR: a folder of photos that show none of the classes (background, other objects)"
    if not u.is_dir():
        raise EdgetlError(f"--unknown {printable(u)}: {'not found' if not u.exists() else 'not a folder'}", hint=hint)
    ur, dr = u.resolve(), d.resolve()
    if ur == dr or dr in ur.parents or ur in dr.parents:
        raise EdgetlError(f"--unknown {printable(u)} overlaps the data folder {printable(d)}",
                          hint="keep the photos of other things in a folder of their own, beside the data folder "
                               "(a folder inside it would be read as a class)")
    if classes is None:
        _, classes, _ = scan(d, warn=False)
    if any(c.casefold() == UNKNOWN_LABEL for c in classes):
        raise EdgetlError(f"{printable(d)} already has a class folder named '{UNKNOWN_LABEL}', the label --unknown "
                          "gives its photos", hint="rename that folder, or move its photos into the --unknown folder")
    files = list(preprocess.iter_image_files(u))
    if not files:
        raise EdgetlError(f"--unknown {printable(u)} holds no photos", hint=hint)
    return files


def with_unknown(classes: list, groups: dict, cfg, skipped: list | None = None) -> tuple:
    """``(classes, groups)`` of a scanned data folder with the --unknown photos added as one more class,
    ``unknown`` (the last label): with the other photos when edgetl splits them (one seeded, stratified
    split), else split here with the same fractions into the given splits (into val when there is no test/)."""
    if not getattr(cfg, "unknown", ""):
        return classes, groups
    from edge_runtime.classifier import UNKNOWN_LABEL

    u = Path(cfg.unknown).resolve()
    label = len(classes)
    items = [(p, label) for p in preprocess.iter_image_files(u, skipped)]
    groups = {g: list(v) for g, v in groups.items()}
    if "all" in groups:
        groups["all"] += items
    else:
        fr = (list(cfg.split) + [0.0])[:3]
        if "test" not in groups:
            fr = [fr[0], fr[1] + fr[2]]
        elif fr[2] == 0:
            fr = [0.8, 0.1, 0.1]
        parts = stratified_split([(str(p), 0) for p, _ in items], 1, fr, cfg.seed)
        if "error" in parts:
            raise EdgetlError(f"--unknown {printable(u)} has {len(items)} photo(s); splitting them into "
                              f"{', '.join(s for s in SPLITS if s in groups)} needs at least {parts['need']}",
                              hint="add photos of other things to it (a few dozen at least)")
        by_key = {str(p): p for p, _ in items}
        for s, got in parts.items():
            groups[s] += [(by_key[k], label) for k, _ in got]
    return list(classes) + [UNKNOWN_LABEL], groups


# ---------------------------------------------------------------- near-duplicates kept in one split


def keep_groups_together(ds: Dataset, groups: list) -> list:
    """Move photos so that each group of near-duplicates (lists of cache rows) lies in one split: the split
    that holds most of the group (ties: train, then val), as long as every class keeps a photo in every
    split. Only for a split edgetl made (layout ``folders``); a given split is left as it is. Returns the
    moves, [(relpath, from split, to split)]."""
    if ds.layout != "folders":
        return []
    where = {r: (s, i) for s, items in ds.files.items() for i, (_, _, r) in enumerate(items)}
    order = [s for s in ("train", "val", "test") if s in ds.files]
    moves = []
    for g in groups:
        splits = [where[r][0] for r in g if r in where]
        if len(set(splits)) < 2:
            continue
        target = max(order, key=lambda s: (splits.count(s), -order.index(s)))
        for r in g:
            s, _ = where.get(r, (target, None))
            if s == target:
                continue
            entry = next(e for e in ds.files[s] if e[2] == r)
            left = [e for e in ds.files[s] if e[1] == entry[1] and e is not entry]
            if not left:  # the last photo of its class in that split: it stays
                continue
            ds.files[s].remove(entry)
            ds.files[target].append(entry)
            where[r] = (target, None)
            moves.append((entry[0], s, target))
    for s in ds.files:
        ds.files[s].sort(key=lambda f: (f[1], f[0]))
    return moves


# ---------------------------------------------------------------- splitting


def stratified_split(items: list, n_classes: int, fractions, seed: int) -> dict:
    """Seeded, stratified split of (key, label) items into train/val/test by ``fractions``.

    Each class is shuffled with its own generator (seeded by ``seed`` and the class), so adding a photo to
    one class never reshuffles another. Validation and test get at least one photo per class."""
    fr = list(fractions) + [0.0] * (3 - len(fractions))
    by_class = defaultdict(list)
    for key, label in items:
        by_class[label].append(key)
    out = {s: [] for s in SPLITS if s == "train" or fr[SPLITS.index(s)] > 0}
    for label in range(n_classes):
        keys = sorted(by_class.get(label, []))
        rng = np.random.default_rng([seed, label])
        order = rng.permutation(len(keys))
        n = len(keys)
        n_val = max(1, round(n * fr[1])) if fr[1] > 0 else 0
        n_test = max(1, round(n * fr[2])) if fr[2] > 0 else 0
        if n - n_val - n_test < 1:
            return {"error": label, "need": n_val + n_test + 1, "have": n}
        picked = [keys[i] for i in order]
        if n_test:
            out["test"] += [(k, label) for k in picked[:n_test]]
        if n_val:
            out["val"] += [(k, label) for k in picked[n_test : n_test + n_val]]
        out["train"] += [(k, label) for k in picked[n_test + n_val :]]
    return out


# ---------------------------------------------------------------- decoding into the cache


def create_cache(path: Path, shape) -> np.ndarray:
    """A new .npy file of uint8 ``shape``, memory-mapped for writing, with its disk blocks reserved first.

    Writing a memory map on a full disk kills the process with SIGBUS ("Bus error", nothing on stderr),
    so the space (known in advance: N x H x W x 3 bytes) is checked and reserved before any photo is
    decoded; a disk that cannot hold it is an error naming the folder and the sizes."""
    path = Path(path)
    nbytes = int(np.prod(shape))
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(int(x) for x in shape)}
    def no_space(free):
        return EdgetlError(
            f"not enough space in {path.parent}: the photo cache needs {nbytes / 2**20:.0f} MB "
            f"({shape[0]} photos of {shape[1]}x{shape[2]})" + (f", {free / 2**20:.0f} MB free" if free else ""),
            hint="free some space, choose --out on another disk, or use a smaller --image-size")

    free = _free_bytes(path.parent)
    if free is not None and free < nbytes + (64 << 10):
        raise no_space(free)
    path.unlink(missing_ok=True)  # a new file, never one shared (hard-linked) with another run
    with open(path, "xb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        try:
            os.posix_fallocate(f.fileno(), 0, offset + nbytes)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                f.close()
                path.unlink(missing_ok=True)
                raise no_space(_free_bytes(path.parent)) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            f.truncate(offset + nbytes)  # this filesystem cannot reserve: the free-space check above stands
        except AttributeError:  # no posix_fallocate on this OS
            f.truncate(offset + nbytes)
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=offset, shape=tuple(shape))


def _free_bytes(folder: Path):
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def read_one(path: Path, size: int, policy: str):
    try:
        data = preprocess.read_file(path)  # regular files only, never more than the size cap
    except ImageError as e:
        return None, None, e.reason
    except OSError as e:
        return None, None, f"cannot read file ({e.strerror or e})"
    try:
        px = preprocess.fit(preprocess.decode_image(data), size, policy)
    except ImageError as e:
        return None, None, e.reason
    return px, hashlib.sha256(data).hexdigest(), None


def decode_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def build(data_dir, run_dir, cfg) -> Dataset:
    """Scan, validate, decode once into the cache, split, record split.json. Prints a count table."""
    data_dir = Path(data_dir).resolve()
    run_dir = Path(run_dir)
    not_read = []  # not regular files, unreadable folders: never opened, listed with the skipped files
    layout, classes, groups = scan(data_dir, not_read, warn=False)  # the CLI's precheck said what is ignored
    classes, groups = with_unknown(classes, groups, cfg, not_read)
    all_files = [(p, lab, g) for g, items in groups.items() for p, lab in items]
    n = len(all_files)
    cache_dir = run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    size = cfg.input_size()
    tmp = cache_dir / "images.u8.tmp"
    images = create_cache(tmp, (max(n, 1), size, size, 3))
    ok_rows, hashes = {}, {}
    skipped = [{"path": relpath(s["path"], data_dir), "reason": s["reason"]} for s in not_read]
    row = 0
    with ui.Progress(n, "decoding photos") as bar, ThreadPoolExecutor(decode_workers()) as pool:
        results = pool.map(lambda f: read_one(f[0], size, cfg.resize), all_files, chunksize=8)
        for (path, label, group), (px, digest, reason) in zip(all_files, results):
            rel = relpath(path, data_dir)
            if reason is not None:
                skipped.append({"path": rel, "reason": reason})
            else:
                images[row] = px
                ok_rows[rel] = (label, group, row)
                hashes[rel] = digest
                row += 1
            bar.update()
    images.flush()
    del images
    try:
        files, test_is_val = organise(data_dir, layout, classes, groups, all_files, ok_rows, skipped, cfg)
    except EdgetlError:
        tmp.unlink(missing_ok=True)
        raise
    runfolder.replace_file(tmp, cache_dir / "images.npy")
    ds = Dataset(data_dir, classes, layout, size, cfg.resize, None, files, skipped, [], test_is_val,
                 hashes={rel: hashes[rel] for items in files.values() for rel, _, _ in items})
    warn_quality(ds, hashes)
    if test_is_val:
        ds.notes.append("no test/ folder: the val split is also used as the test split")
        ui.warn(ds.notes[-1])
    write_split(ds, run_dir, cfg)
    ds.images = np.load(cache_dir / "images.npy", mmap_mode="r")
    print_counts(ds)
    return ds


def organise(data_dir: Path, layout: str, classes: list, groups: dict, all_files: list, ok_rows: dict, skipped: list,
             cfg) -> tuple:
    """After decoding: report the skipped files, check every class is usable, split (seeded, stratified) or
    take the given split. Returns (files, test_is_val); ``ok_rows``: relpath -> (label, group, row)."""
    if skipped:
        ui.warn(f"{len(skipped)} file(s) skipped:")
        for s in skipped[:20]:
            ui.info(f"  {printable(s['path'])}: {s['reason']}")
        if len(skipped) > 20:
            ui.info(f"  ... and {len(skipped) - 20} more (all listed in report.json)")
        if cfg.strict:
            raise EdgetlError(f"{len(skipped)} unreadable file(s) in {data_dir} (--strict)",
                              hint="fix or remove the files listed above, or run without --strict to skip them")

    usable = defaultdict(int)
    for label, _, _ in ok_rows.values():
        usable[label] += 1
    for i, c in enumerate(classes):
        if not usable[i]:
            n_c = sum(1 for _, lab, _ in all_files if lab == i)
            raise EdgetlError(f"class '{c}' has no readable photo ({n_c} file(s), all unreadable)",
                              hint=f"add readable photos to {c}/ or remove the folder")

    # split
    if layout == "splits":
        files = {g: [] for g in groups}
        for rel, (label, group, r) in ok_rows.items():
            files[group].append([rel, label, r])
        test_is_val = "test" not in files
    else:
        parts = stratified_split([(rel, lab) for rel, (lab, _, _) in ok_rows.items()], len(classes), cfg.split,
                                 cfg.seed)
        if "error" in parts:
            c = classes[parts["error"]]
            raise EdgetlError(
                f"class '{c}' has {parts['have']} usable photo(s); a {'/'.join(str(x) for x in cfg.split)} "
                f"split needs at least {parts['need']}",
                hint="add photos to that class (a few dozen per class is a sensible minimum)",
            )
        files = {s: [[rel, lab, ok_rows[rel][2]] for rel, lab in items] for s, items in parts.items()}
        test_is_val = "test" not in files
    for s in files:
        files[s].sort(key=lambda f: (f[1], f[0]))
    for s, items in files.items():
        have = {lab for _, lab, _ in items}
        for i, c in enumerate(classes):
            if i not in have:
                raise EdgetlError(f"class '{c}' has no usable photo in the {s} split",
                                  hint=f"add readable photos to {c}/ (for given splits: {s}/{c}/)")
    return files, test_is_val


def warn_quality(ds: Dataset, hashes: dict):
    counts = ds.counts()["train"]
    lo, hi = min(counts.values()), max(counts.values())
    if lo and hi / lo >= IMBALANCE_RATIO:
        small = min(counts, key=counts.get)
        big = max(counts, key=counts.get)
        ds.notes.append(f"class imbalance: '{big}' has {hi} training photos, '{small}' {lo} ({hi / lo:.1f}x)")
        ui.warn(ds.notes[-1] + "; accuracy on the small class may suffer")
    where = defaultdict(set)
    labels_of = defaultdict(set)
    for s, items in ds.files.items():
        for rel, lab, _ in items:
            where[hashes[rel]].add((s, rel))
            labels_of[hashes[rel]].add(lab)
    clash = [sorted(rel for _, rel in where[h]) for h, labs in labels_of.items() if len(labs) > 1]
    if clash:
        ds.notes.append(f"{len(clash)} photo(s) appear, identical, in more than one class (the labels contradict "
                        "each other)")
        ui.warn(ds.notes[-1] + ":")
        for group in clash[:5]:
            ui.info("  " + "  ==  ".join(group))
    dups = [sorted(v) for v in where.values() if len({s for s, _ in v}) > 1]
    if dups:
        ds.notes.append(f"{len(dups)} identical file(s) appear in more than one split (test figures are optimistic)")
        ui.warn(ds.notes[-1] + ":")
        for group in dups[:5]:
            ui.info("  " + "  ==  ".join(f"{rel} ({s})" for s, rel in group))


def write_split(ds: Dataset, run_dir: Path, cfg, index: bool = True):
    """split.json (and, with ``index``, the cache's index.json and labels.txt)."""
    doc = {
        "data_dir": str(ds.data_dir),
        "layout": ds.layout,
        "seed": cfg.seed,
        "fractions": cfg.split if ds.layout == "folders" else None,
        "classes": ds.classes,
        "test_is_val": ds.test_is_val,
        "image_size": ds.image_size,
        "resize": ds.resize,
        "files": {s: [[rel, lab] for rel, lab, _ in items] for s, items in ds.files.items()},
        "skipped": ds.skipped,
        "notes": ds.notes,
        "sha256": ds.hashes,  # what each photo was when decoded: a later re-decode says what changed
    }
    if getattr(cfg, "unknown", ""):
        doc["unknown_dir"] = str(Path(cfg.unknown).resolve())  # its photos are listed by absolute path
    runfolder.write_json(run_dir / "split.json", doc)
    if not index:
        return
    rows = {rel: r for items in ds.files.values() for rel, _, r in items}
    runfolder.write_json(run_dir / "cache" / "index.json",
                         {"image_size": ds.image_size, "resize": ds.resize, "rows": rows})
    runfolder.write_text(run_dir / "labels.txt", "\n".join(ds.classes) + "\n")


def read_split(run_dir) -> dict:
    """A run's split.json, its whole shape checked (schema.py): a damaged file is one error naming the
    field, before anything is decoded or trained."""
    return schema.read_split(run_dir)


def load(run_dir, rebuild_into=None) -> Dataset:
    """The dataset of an existing run, from split.json and the cache (re-decoded if the cache is gone).
    split.json and report.json are checked whole first (schema.check_run)."""
    run_dir = Path(run_dir)
    doc = schema.check_run(run_dir)
    n_files = sum(len(v) for v in doc["files"].values())
    size = doc["image_size"]
    cache_dir = run_dir / "cache"
    idx_path, img_path = cache_dir / "index.json", cache_dir / "images.npy"
    rows, images, idx = None, None, None
    try:
        idx = files_mod.read_json(idx_path, what="cache index") if idx_path.exists() else None
        if schema.fits(idx, schema.INDEX_SHAPE) and idx["image_size"] == size and idx["resize"] == doc["resize"] \
                and img_path.is_file():
            images = np.load(img_path, mmap_mode="r")
            rows = idx["rows"]
            if images.shape[1:] != (size, size, 3) or len(rows) != n_files or \
                    any(not 0 <= r < images.shape[0] for r in rows.values()) or \
                    any(rel not in rows for items in doc["files"].values() for rel, _ in items):
                rows, images = None, None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, EdgetlError):
        rows, images = None, None  # a damaged or truncated cache is rebuilt, as a missing one
    notes = list(doc.get("notes", []))
    if rows is None:
        if isinstance(idx, dict) and isinstance(idx.get("shard"), dict):  # made by several workers (collective.py)
            ui.info(f"the photo cache of {run_dir} holds the chief's shard only (the run was made by "
                    f"{idx['shard'].get('workers')} workers): decoding the photos")
        elif img_path.exists():
            ui.warn(f"the photo cache of {schema.user_path(run_dir)} is missing or damaged: decoding the photos again")
        if rebuild_into is not None:  # the run is only read: decode into another folder
            cache_dir = Path(rebuild_into)
            img_path = cache_dir / "images.npy"
        rows, changed = _rebuild_cache(cache_dir, doc)
        note = changed_photos_note(changed, n_files, doc)
        if note:
            notes.append(note)
        images = np.load(img_path, mmap_mode="r")
    files = {s: [[rel, lab, rows[rel]] for rel, lab in items] for s, items in doc["files"].items()}
    return Dataset(Path(doc["data_dir"]), doc["classes"], doc["layout"], size, doc["resize"], images, files,
                   doc.get("skipped", []), notes, doc.get("test_is_val", "test" not in doc["files"]),
                   hashes=dict(doc.get("sha256") or {}))


def scratch_cache() -> Path:
    """Where a photo cache decoded while a run is only read goes (parity on a run, quantize --out): a
    temporary folder of this process, made only if the cache has to be decoded, removed at exit. A run is
    written only by the commands that hold its lock, through a staged copy."""
    import atexit
    import tempfile

    d = Path(tempfile.gettempdir()) / f"edgetl-cache-{os.getpid()}"
    atexit.register(shutil.rmtree, d, True)
    return d


def changed_photos_note(changed: list, total: int, doc: dict) -> str | None:
    """Photos decoded again whose bytes differ from split.json's record (``changed``: relative paths):
    warn naming them and say what is done (they are used as they are now), and return the note."""
    if not changed:
        return None
    changed = sorted(changed)
    names = ", ".join(printable(c) for c in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    note = (f"{len(changed)} of {total} photos changed in {printable(doc['data_dir'])} since the run was made "
            f"(same name, other content): {names}")
    ui.warn(note + "; they are used as they are now, with the label of their folder, so the figures are not "
                   "those of the photos the run was made from (a new `edgetl build --force` splits them afresh)")
    return note


def _rebuild_cache(cache_dir: Path, doc: dict) -> tuple:
    """Decode the run's photos again into ``cache_dir``. Returns (rows, changed): relpath -> cache row, and
    the photos whose content differs from the SHA-256 split.json recorded (none for older runs)."""
    data_dir = Path(doc["data_dir"])
    items = [rel for s in doc["files"].values() for rel, _ in s]
    size, policy = doc["image_size"], doc["resize"]
    recorded = doc.get("sha256") or {}
    tmp = cache_dir / "images.u8.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    images = create_cache(tmp, (max(len(items), 1), size, size, 3))
    changed = []
    with ui.Progress(len(items), "re-decoding photos") as bar:
        for r, rel in enumerate(items):
            px, digest, reason = read_one(data_dir / rel, size, policy)
            if reason is not None:
                raise EdgetlError(f"{printable(data_dir / rel)}: {reason} (it was readable when the run was made)",
                                  hint="restore the data folder recorded in split.json, or start a new run")
            if rel in recorded and recorded[rel] != digest:
                changed.append(rel)
            images[r] = px
            bar.update()
    images.flush()
    del images
    runfolder.replace_file(tmp, cache_dir / "images.npy")
    rows = {rel: r for r, rel in enumerate(items)}
    runfolder.write_json(cache_dir / "index.json", {"image_size": size, "resize": policy, "rows": rows})
    return rows, changed


def print_counts(ds: Dataset):
    counts = ds.counts()
    splits = [s for s in SPLITS if s in counts]
    rows = [[c] + [counts[s][c] for s in splits] + [sum(counts[s][c] for s in splits)] for c in ds.classes]
    rows.append(["total"] + [sum(counts[s].values()) for s in splits] + [sum(sum(counts[s].values()) for s in splits)])
    ui.info(ui.table(rows, ["class"] + splits + ["all"]))
    if ds.skipped:
        ui.info(f"skipped: {len(ds.skipped)} unreadable file(s)")


# ---------------------------------------------------------------- augmentation


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random view of a fitted photo: flip, crop 75-100% (aspect 3:4-4:3) resized back, brightness and
    contrast +-20%. Deterministic for a given generator state."""
    import cv2

    s = img.shape[0]
    out = img[:, ::-1] if rng.random() < 0.5 else img
    area = rng.uniform(0.75, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(s, round(s * np.sqrt(area / aspect))))
    cw = int(min(s, round(s * np.sqrt(area * aspect))))
    y0 = int(rng.integers(0, s - ch + 1))
    x0 = int(rng.integers(0, s - cw + 1))
    out = cv2.resize(np.ascontiguousarray(out[y0 : y0 + ch, x0 : x0 + cw]), (s, s), interpolation=cv2.INTER_LINEAR)
    b = rng.uniform(-0.2, 0.2) * 255
    c = rng.uniform(0.8, 1.2)
    mean = out.mean()
    out = np.clip((out.astype(np.float32) - mean) * c + mean + b, 0, 255)
    return out.astype(np.uint8)
