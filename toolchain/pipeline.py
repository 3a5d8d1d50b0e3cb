"""The training verbs: `edgetl train`, `edgetl finetune`, `edgetl build` (train + finetune + convert +
parity + report), all writing into one run folder."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime import __version__
from edge_runtime.errors import EdgetlError

from . import config as config_mod
from . import data as data_mod
from . import modeling, report, runfolder, train, ui


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_final(model, run: Path) -> str:
    runfolder.save_with(run / "model.keras", lambda tmp: modeling.save(model, tmp))
    return runfolder.sha256_file(run / "model.keras")


def _dataset_section(ds) -> dict:
    return {
        "data_dir": str(ds.data_dir),
        "classes": ds.classes,
        "counts": ds.counts(),
        "skipped": ds.skipped,
        "notes": ds.notes,
    }


def do_train(data_dir, out, cfg, force: bool) -> tuple:
    """Stage 1 into a new run folder. Returns (run, model, dataset, report)."""
    t0 = time.perf_counter()
    modeling.import_keras()  # fail early (exit 2) when TensorFlow is missing
    data_mod.scan(data_dir)  # a bad data folder fails before anything is written
    runfolder.check(out, force)  # so does an existing run without --force
    base, weights = modeling.make_base(cfg)  # and missing or undownloadable weights
    fresh = not Path(out).exists()
    run = runfolder.prepare(out, force)
    runfolder.write_json(run / "report.json", {"edgetl_version": __version__, "created": _now(), "status": "running",
                                               "config": cfg.as_dict()})
    try:
        ds = data_mod.build(data_dir, run, cfg)
    except EdgetlError:
        if fresh:  # nothing of value was made: leave no half-made run behind
            import shutil

            shutil.rmtree(run, ignore_errors=True)
        raise
    model, section, history, weights = train.stage1(ds, cfg, run, base, weights)
    sha = _save_final(model, run)
    ev = train.evaluate(model, ds, cfg)
    rep = runfolder.update_report(
        run,
        **_dataset_section(ds),
        weights=weights,
        config=cfg.as_dict(),
        stages={"feature_extraction": section},
        history={"feature_extraction": _clean_history(history)},
        keras={**ev, "path": "model.keras", "sha256": sha, "stage": "feature_extraction"},
        status="trained",
    )
    ui.info(f"stage 1: {section['epochs']} epochs in {section['seconds']:.1f}s, best val_acc {section['val_accuracy']:.4f}"
            f"; test accuracy {ev['test_accuracy']:.4f} ({ev['n']} photos)")
    rep = report.add_timing(run, "train", time.perf_counter() - t0)
    report.write(run, rep)
    ui.info(f"elapsed {time.perf_counter() - t0:.1f}s")
    return run, model, ds, rep


def do_finetune(run, cfg_flags: dict, force: bool, config_file=None, model=None, ds=None) -> tuple:
    """Stage 2 on an existing run (from its stage-1 model). Returns (model, dataset, report)."""
    t0 = time.perf_counter()
    modeling.import_keras()
    run = Path(run)
    rep = runfolder.read_report(run)
    if not rep or "stages" not in rep:
        raise EdgetlError(f"{run} is not a trained edgetl run (no report.json with stage 1)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
    if "fine_tune" in rep["stages"] and not force:
        raise EdgetlError(f"{run} is already fine-tuned", hint="pass --force to fine-tune again from the stage-1 model")
    cfg = config_mod.resolve(config_file, base=rep.get("config"), **cfg_flags)
    if model is None:
        train.check_run_for_finetune(run)
        model = modeling.load(run / "stage1.keras")
    if ds is None:
        ds = data_mod.load(run)
    model, section, history = train.stage2(model, ds, cfg)
    sha = _save_final(model, run)
    ev = train.evaluate(model, ds, cfg)
    hist = dict(rep.get("history") or {})
    hist["fine_tune"] = _clean_history(history)
    stages = dict(rep["stages"])
    stages["fine_tune"] = section
    rep = runfolder.update_report(
        run,
        config=cfg.as_dict(),
        stages=stages,
        history=hist,
        keras={**ev, "path": "model.keras", "sha256": sha, "stage": section["kept"]},
        status="fine-tuned",
    )
    ui.info(f"stage 2: {section['epochs']} epochs in {section['seconds']:.1f}s, kept {section['kept']}; "
            f"test accuracy {ev['test_accuracy']:.4f}")
    rep = report.add_timing(run, "finetune", time.perf_counter() - t0)
    report.write(run, rep)
    return model, ds, rep


def do_build(data_dir, out, cfg, force: bool, keep_cache: bool = False) -> dict:
    """Everything: data, stage 1, stage 2, conversion of each mode, parity gates, report. The cache of
    decoded photos is deleted at the end unless ``keep_cache`` or a gate failed (a later `quantize` would
    need it); later commands rebuild it when needed."""
    from . import clean, convert

    run, model, ds, rep = do_train(data_dir, out, cfg, force)
    model, ds, rep = do_finetune(run, {}, force=True, model=model, ds=ds)
    t0 = time.perf_counter()
    results = convert.quantize_run(run, cfg, model=model, ds=ds)
    report.add_timing(run, "quantize", time.perf_counter() - t0, modes=list(results))
    passed = all(r["passed"] for r in results.values())
    rep = runfolder.update_report(run, status="built" if passed else "gate-failed")
    if passed and not keep_cache:
        del ds  # the memory map
        freed = clean.remove_cache(run)
        ui.info(f"deleted {run / 'cache'}/ ({report.mb(freed)} MB of decoded photos; later commands decode them "
                "again when needed; --keep-cache keeps it)")
    report.write(run, rep)
    report.print_summary(rep)
    failed = [m for m, r in results.items() if not r["passed"]]
    if failed:
        from edge_runtime.errors import GateFailed

        reasons = "; ".join(f"{m}: {results[m]['reason']}" for m in failed)
        raise GateFailed(f"parity gate failed for {', '.join(failed)} ({reasons})",
                         hint=f"every artifact is kept in {run}; see report.md. Try more calibration images "
                              "(--calibration-size), another --quantize mode, or relax --max-drop/--min-agreement")
    return rep


def _clean_history(h: dict) -> dict:
    return {k: [round(float(x), 5) for x in v] for k, v in (h or {}).items()}
