"""`edgetl clean RUN`: delete a run's regenerable bulk, keep its results.

Deleted (only these names, only in an edgetl run folder, only regular files and real folders, never
through a symlink):
  cache/        the decoded photos (images.npy, index.json, an interrupted images.u8.tmp). Any later
                command that needs them (quantize, parity on the run, finetune) decodes the photos again
                from the data folder recorded in split.json. Kept (with a warning) when that folder is gone,
                unless --force: it is then the only copy of the training photos.
  stage1.keras  the stage-1 model, needed only by `edgetl finetune` (to fine-tune again). The final
                model.keras is kept.
  logs/         the TFLite converter's logs (convert_<mode>.log).
Kept: split.json, labels.txt, report.json, report.md, plots/, model.keras, model_<mode>.tflite/.json,
and anything edgetl did not write (a file of yours inside cache/ or logs/ keeps that folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgetlError

from . import runfolder, ui
from .report import mb

CACHE_FILES = ("images.npy", "index.json", "images.u8.tmp")
LOG_FILES = tuple(f"convert_{m}.log" for m in ("int8", "float16", "dynamic", "float32"))
STAGE1 = "stage1.keras"


@dataclass
class Plan:
    """What `clean` deletes (files, then the folders they leave empty), frees, and keeps with a reason."""

    files: list = field(default_factory=list)  # (path, bytes)
    dirs: list = field(default_factory=list)  # removed only if empty after the files are gone
    kept: list = field(default_factory=list)  # (path, reason)
    groups: dict = field(default_factory=dict)  # display name -> bytes

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.files)


def _regular(p: Path) -> bool:
    return p.is_file() and not p.is_symlink()


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _data_dir(run: Path) -> Path | None:
    try:
        d = json.loads((run / "split.json").read_text()).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(d) if isinstance(d, str) and d else None


def _folder(run: Path, name: str, known: tuple, plan: Plan):
    d = run / name
    if d.is_symlink():
        plan.kept.append((d, "a symlink (not made by edgetl)"))
        return
    if not d.is_dir():
        return
    total = 0
    for f in (d / n for n in known):
        if _regular(f):
            b = _size(f)
            plan.files.append((f, b))
            total += b
    others = sorted(c.name for c in d.iterdir() if c.name not in known or not _regular(c))
    if others:
        plan.kept.append((d, f"holds {len(others)} file(s) edgetl did not write: {', '.join(others[:5])}"))
    plan.dirs.append(d)
    if not others:
        plan.groups[f"{name}/"] = total
    elif total:
        plan.groups[f"{name}/ (edgetl's files; the folder stays)"] = total


def plan(run, force: bool = False) -> Plan:
    """What cleaning ``run`` would delete. EdgetlError (exit 2) if it is not an edgetl run folder."""
    run = Path(run)
    if not run.exists():
        raise EdgetlError(f"not found: {run}", hint="pass a run folder made by `edgetl build` or `edgetl train`")
    if not runfolder.is_any_run(run):
        raise EdgetlError(f"{run} is not an edgetl run folder; refusing to delete anything in it",
                          hint="pass a run folder made by `edgetl build` or `edgetl train`")
    pl = Plan()
    data_dir = _data_dir(run)
    cache = run / "cache"
    if cache.exists() and not force and (data_dir is None or not data_dir.is_dir()):
        pl.kept.append((cache, f"the data folder {data_dir} is gone, so the cache is the only copy of the photos "
                               "(--force deletes it anyway)"))
    else:
        _folder(run, "cache", CACHE_FILES, pl)
    s1 = run / STAGE1
    if _regular(s1):
        pl.files.append((s1, _size(s1)))
        pl.groups[STAGE1] = _size(s1)
    _folder(run, "logs", LOG_FILES, pl)
    return pl


def clean(run, force: bool = False, dry_run: bool = False) -> Plan:
    """Delete the run's regenerable bulk (see the module docstring) and print what was freed (stdout)."""
    run = Path(run)
    pl = plan(run, force)
    for path, reason in pl.kept:
        ui.warn(f"kept {path}: {reason}")
    if not dry_run:
        for path, _ in pl.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise EdgetlError(f"cannot delete {path}: {e.strerror or e}",
                                  hint="check the folder's permissions") from None
        for d in pl.dirs:
            try:
                d.rmdir()  # only when empty: anything not edgetl's stays, with its folder
            except OSError:
                pass
    verb = "would free" if dry_run else "freed"
    if not pl.groups:
        print(f"nothing to clean in {run}")
        return pl
    for name, b in pl.groups.items():
        print(f"{'would delete' if dry_run else 'deleted'} {run}/{name} ({mb(b)} MB)")
    print(f"{verb} {mb(pl.bytes)} MB in {run}")
    if STAGE1 in pl.groups and not dry_run:
        ui.info("note: `edgetl finetune` needs stage1.keras; to fine-tune again, train again")
    return pl


def remove_cache(run) -> int:
    """Delete the run's cache/ (edgetl's files in it) after a build; returns the bytes freed."""
    run = Path(run)
    pl = Plan()
    _folder(run, "cache", CACHE_FILES, pl)
    for path, _ in pl.files:
        path.unlink(missing_ok=True)
    for d in pl.dirs:
        try:
            d.rmdir()
        except OSError:
            pass
    return pl.bytes
