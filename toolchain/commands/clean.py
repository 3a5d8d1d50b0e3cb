"""`edgetl clean RUN`: delete a run's regenerable bulk, keep its results.

Deleted: only files of the run's manifest (what edgetl wrote, see runfolder.py) whose content is still
what edgetl wrote, only regular files reached through real folders (never through a symlink):
  cache/        the decoded photos (images.npy, index.json). Any later command that needs them (quantize,
                parity on the run, finetune) decodes the photos again from the data folder recorded in
                split.json. Kept (with a warning) when that folder is gone or any photo of the run is no
                longer in it, unless --force: it is then the only copy of those photos.
  stage1.keras  the stage-1 model, needed only by `edgetl finetune` (to fine-tune again). The final
                model.keras is kept.
  logs/         the TFLite converter's logs (convert_<mode>.log).
Kept: split.json, labels.txt, report.json, report.md, plots/, model.keras, model_<mode>.tflite/.json,
and anything edgetl did not write (a file of yours inside cache/ or logs/ keeps that folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import EdgetlError

from toolchain.rundir import runfolder
from toolchain.rundir import schema
from toolchain import ui
from toolchain.core.report import mb

STAGE1 = "stage1.keras"
# What clean may delete: manifest entries (content unchanged since edgetl wrote it) under these.
GROUPS = ("cache/", STAGE1, "logs/")


@dataclass
class Plan:
    """What `clean` deletes (files, then the folders they leave empty), frees, and keeps with a reason."""

    files: list = field(default_factory=list)  # (path, bytes, relative path)
    dirs: list = field(default_factory=list)  # removed only if empty after the files are gone
    kept: list = field(default_factory=list)  # (path, reason)
    groups: dict = field(default_factory=dict)  # display name -> bytes

    @property
    def bytes(self) -> int:
        return sum(b for _, b, _ in self.files)


def missing_photos(run: Path) -> tuple:
    """(data folder or None, how many of the run's photos are no longer there as regular files, one of
    them). The cache is the only copy of a photo that is gone."""
    try:
        doc = schema.read_split(run)
    except EdgetlError:
        return None, -1, None
    d = doc.get("data_dir")
    if not isinstance(d, str) or not d:
        return None, -1, None
    data_dir = Path(d)
    gone, example = 0, None
    files = doc.get("files") if isinstance(doc.get("files"), dict) else {}
    for items in files.values():
        for item in items if isinstance(items, list) else []:
            rel = item[0] if isinstance(item, list) and item and isinstance(item[0], str) else None
            if rel is None or not (data_dir / rel).is_file():
                gone += 1
                example = example or rel
    return data_dir, gone, example


def _group(run: Path, mf: dict, name: str, pl: Plan):
    """Plan the deletion of the manifest entries ``name`` (a file) or under ``name`` (a folder, ending
    in /) whose content is still edgetl's."""
    top = name.rstrip("/")
    d = run / top
    if d.is_symlink():
        pl.kept.append((d, "a symlink (not made by edgetl)"))
        return
    rels = sorted(r for r in mf if (r.startswith(name) if name.endswith("/") else r == name))
    total, ours = 0, set()
    for rel in rels:
        if runfolder.ours(run, rel, mf[rel]):
            b = (run / rel).stat().st_size
            pl.files.append((run / rel, b, rel))
            ours.add(rel)
            total += b
    if not name.endswith("/"):
        if ours:
            pl.groups[name] = total
        return
    if not d.is_dir():
        return
    others = sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                    if not p.is_dir() and f"{top}/{p.relative_to(d).as_posix()}" not in ours)
    if others:
        pl.kept.append((d, f"holds {len(others)} file(s) edgetl did not write: {', '.join(others[:5])}"))
    pl.dirs += sorted((p for p in d.rglob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: -len(p.parts)) + [d]
    if not others:
        pl.groups[name] = total
    elif total:
        pl.groups[f"{name} (edgetl's files; the folder stays)"] = total


def plan(run, force: bool = False) -> Plan:
    """What cleaning ``run`` would delete. EdgetlError (exit 2) if it is not an edgetl run folder."""
    run = Path(run)
    if not run.exists():
        raise EdgetlError(f"not found: {run}", hint="pass a run folder made by `edgetl build` or `edgetl train`")
    if not runfolder.is_any_run(run):
        raise EdgetlError(f"{run} is not an edgetl run folder; refusing to delete anything in it",
                          hint="pass a run folder made by `edgetl build` or `edgetl train`")
    pl = Plan()
    mf = runfolder.manifest(run)
    cache = run / "cache"
    keep_cache = None
    if cache.exists() and not force:
        data_dir, gone, example = missing_photos(run)
        if data_dir is None or not data_dir.is_dir():
            keep_cache = f"the data folder {data_dir} is gone, so the cache is the only copy of the photos"
        elif gone:
            keep_cache = (f"{gone} photo(s) of the run are no longer in {data_dir} (e.g. {example}), so the cache "
                          "is the only copy of them")
    if keep_cache:
        pl.kept.append((cache, keep_cache + " (--force deletes it anyway)"))
    for name in GROUPS:
        if name == "cache/" and keep_cache:
            continue
        _group(run, mf, name, pl)
    return pl


def clean(run, force: bool = False, dry_run: bool = False) -> Plan:
    """Delete the run's regenerable bulk (see the module docstring) and print what was freed (stdout)."""
    run = Path(run)
    pl = plan(run, force)
    for path, reason in pl.kept:
        ui.warn(f"kept {path}: {reason}")
    if not dry_run:
        for path, _, _ in pl.files:
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
        runfolder.forget(run, [rel for _, _, rel in pl.files])
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
    """Delete the cache/ of a staged run after a build (everything in it is edgetl's: the staged folder
    holds nothing else); returns the bytes freed."""
    run = Path(run)
    freed = 0
    for f in sorted((run / "cache").glob("*")) if (run / "cache").is_dir() else []:
        if f.is_file() and not f.is_symlink():
            freed += f.stat().st_size
            f.unlink()
    try:
        (run / "cache").rmdir()
    except OSError:
        pass
    return freed
