"""`edgetl quantize RUN_OR_MODEL`: convert a run's model (or any Keras classifier) to TFLite."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgetlError

from . import config as config_mod
from . import convert, modeling, parity, runfolder, ui


def run(source, modes=None, calibration=None, calibration_size=None, io=None, out=None, labels=None,
        input_range=None, resize=None, max_drop=None, min_agreement=None, force=False) -> dict:
    source = Path(source)
    if not source.exists():
        raise EdgetlError(f"not found: {source}", hint="pass a run folder or a .keras model")
    if calibration is not None and not Path(calibration).is_dir():
        raise EdgetlError(f"calibration folder not found: {calibration}", hint="pass a folder of photos")
    run_dir = parity.run_dir_of(source) if (source.is_dir() or source.name == "model.keras") else None
    flags = dict(quantize=list(modes) if modes else None, calibration_size=calibration_size, io=io,
                 max_drop=max_drop, min_agreement=min_agreement)
    if run_dir is not None:
        if source.is_file() and source.resolve() != (run_dir / "model.keras").resolve():
            run_dir = None
    if run_dir is not None:
        if not (run_dir / "model.keras").is_file():
            raise EdgetlError(f"{run_dir} has no model.keras", hint="train it first: edgetl train / edgetl build")
        rep = runfolder.read_report(run_dir)
        cfg = config_mod.resolve(None, base=rep.get("config"), **flags)
        if resize and resize != cfg.resize:
            raise EdgetlError(f"--resize {resize} differs from the run's resize policy {cfg.resize}",
                              hint="a run's model is converted with the preprocessing it was trained with")
        t0 = time.perf_counter()
        results = convert.quantize_run(run_dir, cfg, calibration_dir=calibration, force=force)
        from . import report

        rep = report.add_timing(run_dir, "quantize", time.perf_counter() - t0, modes=list(results))
        report.write(run_dir, rep)  # report.md shows the new models (and the time) too
        for r in results.values():
            r["out"] = str(run_dir / r["path"])
        return results
    if source.is_dir():
        raise EdgetlError(f"{source} is not an edgetl run folder (no split.json)",
                          hint="pass a run folder made by edgetl, or a .keras model file")
    return _quantize_model(source, flags, calibration, out, labels, input_range, resize, force)


def _quantize_model(path: Path, flags, calibration, out, labels, input_range, resize, force) -> dict:
    cfg = config_mod.resolve(None, **flags)
    model = modeling.load(path)
    labels_list, value_range, size, resize = parity.resolve_keras_spec(model, path, labels, input_range, resize)
    out_dir = Path(out) if out else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {m: out_dir / (f"{path.stem}_{m}.tflite" if path.stem != "model" else f"model_{m}.tflite")
               for m in cfg.quantize}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise EdgetlError(f"{', '.join(existing)} already exist(s)", hint="pass --force to overwrite, or --out DIR")
    if calibration is None:
        raise EdgetlError(f"{path.name} is not in a run folder, so there are no calibration/evaluation photos",
                          hint="pass --calibration DIR (photos like the ones the model will see; class folders "
                               "named like the labels give accuracy figures too)")
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
    evalset = convert.EvalSet(tensors, y, f"every photo in {calibration}")
    runfolder.write_text(out_dir / "labels.txt", "\n".join(labels_list) + "\n")
    results = {}
    for mode, target in targets.items():
        ui.info(f"converting to {mode} ...")
        r = convert.convert_one(model, mode, target, labels=labels_list, size=size, resize=resize,
                                value_range=value_range, calibration=calib if mode == "int8" else None, io=cfg.io,
                                keras_sha=keras_sha, dataset=dataset, evalset=evalset, max_drop=cfg.max_drop,
                                min_agreement=cfg.min_agreement, log_dir=out_dir / "logs")
        r["out"] = str(target)
        results[mode] = r
        ui.info(f"  {mode}: {r['size_bytes'] / 1024:.0f} KB, {r['precision']}, agreement {r.get('agreement')}"
                f" -> {target}")
    return results
