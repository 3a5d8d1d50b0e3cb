"""`edgetl quantize RUN_OR_MODEL`: convert a run's model (or any Keras classifier) to TFLite.

- A run folder (or its model.keras): the models go into the run, staged and swapped in when done (the
  run is whole if the command fails or is killed); with ``--out DIR`` they go into DIR and the run is
  only read.
- Any other .keras file: labels, input range and resize policy come from the edgetl info stored inside
  the file (a model.keras edgetl wrote, even copied elsewhere), else from flags; calibration photos are
  required. Everything missing is reported at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgetlError

from toolchain.cfg import config as config_mod
from toolchain.rundir import runfolder
from toolchain.rundir import schema
from toolchain import ui


def _run_of(source: Path):
    """The run folder ``source`` is (or whose model.keras it is), else None."""
    cand = source if source.is_dir() else (source.parent if source.name == "model.keras" else None)
    if cand is not None and runfolder.is_any_run(cand):
        return cand
    return None


def run(source, modes=None, calibration=None, calibration_size=None, io=None, out=None, labels=None,
        input_range=None, resize=None, max_drop=None, min_agreement=None, force=False, min_score=None,
        consumers=None) -> dict:
    source = Path(source)
    if not source.exists():
        raise EdgetlError(f"not found: {source}", hint="pass a run folder or a .keras model")
    if calibration is not None and not Path(calibration).is_dir():
        raise EdgetlError(f"calibration folder not found: {calibration}", hint="pass a folder of photos")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise EdgetlError(f"--out {out} exists and is a file", hint="pass a folder for the models")
    flags = dict(quantize=list(modes) if modes else None, calibration_size=calibration_size, io=io,
                 max_drop=max_drop, min_agreement=min_agreement, min_score=min_score, consumers=consumers)
    config_mod.resolve(None, **flags)  # bad flags fail before anything is loaded
    run_dir = _run_of(source)
    if source.is_dir() and run_dir is None:
        raise EdgetlError(f"{source} is not an edgetl run folder (no {runfolder.MARKER})",
                          hint="pass a run folder made by edgetl, or a .keras model file")
    if run_dir is not None:
        return _quantize_run(run_dir, flags, calibration, out, resize, force)
    return _quantize_model(source, flags, calibration, out, labels, input_range, resize, force)


def _quantize_run(run_dir: Path, flags, calibration, out, resize, force) -> dict:
    from toolchain.core import convert
    from toolchain.core import modeling
    from toolchain.core import report

    with runfolder.RunLock(run_dir):
        runfolder.check_existing(run_dir)
        if not (run_dir / "model.keras").is_file():
            raise EdgetlError(f"{run_dir} has no model.keras", hint="train it first: edgetl train / edgetl build")
        split = schema.check_run(run_dir)  # a damaged split.json or report.json: exit 2 before TensorFlow loads
        rep = schema.read_report(run_dir, split.get("data_dir"))
        cfg = config_mod.resolve(None, base=rep.get("config"), **flags)
        if resize and resize != cfg.resize:
            raise EdgetlError(f"--resize {resize} differs from the run's resize policy {cfg.resize}",
                              hint="a run's model is converted with the preprocessing it was trained with")
        t0 = time.perf_counter()
        if out is not None:  # the run is only read
            dest = Path(out)
            made = not dest.exists()
            try:
                results = convert.quantize_run(run_dir, cfg, calibration_dir=calibration, force=force, dest=dest)
            except BaseException:
                if made:
                    _remove_made(dest, [f"model_{m}.{e}" for m in cfg.quantize for e in ("tflite", "json")])
                raise
            for r in results.values():
                r["out"] = str(dest / r["path"])
            return results
        with runfolder.Staged(run_dir, fresh=False) as st:
            modeling.import_keras()
            results = convert.quantize_run(st.path, cfg, calibration_dir=calibration, force=force)
            rep = report.add_timing(st.path, "quantize", time.perf_counter() - t0, modes=list(results))
            report.write(st.path, rep, name=run_dir.name)  # report.md shows the new models (and the time) too
            st.commit(rep.get("status") or "complete")
    for r in results.values():
        r["out"] = str(run_dir / r["path"])
    return results


def _quantize_model(path: Path, flags, calibration, out, labels, input_range, resize, force) -> dict:
    from toolchain.core import convert
    from toolchain.core import modeling
    from toolchain.core import parity

    cfg = config_mod.resolve(None, **flags)
    info = modeling.read_info(path)
    model = modeling.load(path)
    out_dir = Path(out) if out else path.parent
    labels_list, value_range, size, resize = parity.resolve_keras_spec(
        model, path, labels, input_range, resize, info=info,
        also_missing=[] if calibration is not None else [
            "--calibration DIR (photos like the ones the model will see; class folders named like the labels "
            "give accuracy figures too)"])
    stem = path.stem if path.stem != "model" else "model"
    targets = {m: out_dir / f"{stem}_{m}.tflite" for m in cfg.quantize}
    convert.check_export_targets([p for t in targets.values() for p in (t, t.with_suffix(".json"))], force)
    tensors, y, _paths, skipped = parity.load_folder(calibration, size, resize, labels_list, "calibration photos")
    if len(tensors) > cfg.calibration_size:
        rng = np.random.default_rng(cfg.seed)
        calib = tensors[np.sort(rng.choice(len(tensors), cfg.calibration_size, replace=False))]
    else:
        calib = tensors
    ui.info(f"{len(tensors)} photos from {calibration} ({len(calib)} for calibration; all for parity)"
            + (f", {len(skipped)} unreadable skipped" if skipped else ""))
    keras_sha = runfolder.sha256_file(path)
    dataset = {"calibration": {"source": str(calibration), "n": len(calib)}, "classes": labels_list}
    evalset = convert.EvalSet(tensors, y, f"every photo in {calibration}", paths=_paths)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        convert.write_labels_beside(out_dir, labels_list)
        source = convert.exported(model)  # traced once for every mode
        for mode, target in targets.items():
            ui.info(f"converting to {mode} ...")
            r = convert.convert_one(source, mode, target, labels=labels_list, size=size, resize=resize,
                                    value_range=value_range, calibration=calib if mode == "int8" else None,
                                    io=cfg.io, keras_sha=keras_sha, dataset=dataset, evalset=evalset,
                                    max_drop=cfg.max_drop, min_agreement=cfg.min_agreement,
                                    log_dir=None, consumers=cfg.consumers,
                                    central=modeling.central_size(model))
            r["out"] = str(target)
            results[mode] = r
            ui.info(f"  {mode}: {r['size_bytes'] / 1e6:.2f} MB, {r['precision']}, agreement {r.get('agreement')}"
                    f" -> {'pass' if r['passed'] else 'FAIL: ' + str(r['reason'])} -> {target}")
            ui.info("    " + parity.consumer_line(r.get("consumers")))
    except BaseException:
        if made:
            _remove_made(out_dir, [n for t in targets.values() for n in (t.name, t.with_suffix(".json").name)])
        raise
    return results


def _remove_made(folder: Path, names):
    """After a failure, in a folder this command made: remove what it wrote (these names and labels.txt)
    and the folder if that leaves it empty. Anything else found there is left alone."""
    for name in list(names) + ["labels.txt"]:
        try:
            (folder / name).unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def gate_failures(results: dict) -> list:
    return [m for m, r in results.items() if not r.get("passed", True)]
