"""The training verbs: `edgetl train`, `edgetl finetune`, `edgetl build` (train + finetune + convert +
parity + report), all writing into one run folder.

Every verb checks what it can without TensorFlow first (the data folder, the options, the run folder
and its lock), so a mistake is reported in well under a second. Then it works on a staged copy of the
run (see runfolder.py) that replaces the run only when the command ends: a failed or killed command
leaves the previous run whole.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime import __version__
from edge_runtime.errors import EdgetlError, GateFailed

from . import config as config_mod
from . import data as data_mod
from . import modeling, report, runfolder, schema, train, ui


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def keras_info(ds, cfg) -> dict:
    """What a model.keras carries about itself (see modeling.save)."""
    return {"labels": list(ds.classes), "image_size": [cfg.image_size, cfg.image_size], "resize": cfg.resize,
            "value_range": [0.0, 255.0], "edgetl_version": __version__}


def _save_final(model, run: Path, ds, cfg) -> str:
    runfolder.save_with(run / "model.keras", lambda tmp: modeling.save(model, tmp, keras_info(ds, cfg)))
    return runfolder.sha256_file(run / "model.keras")


def _dataset_section(ds) -> dict:
    return {
        "data_dir": str(ds.data_dir),
        "classes": ds.classes,
        "counts": ds.counts(),
        "skipped": ds.skipped,
        "notes": ds.notes,
    }


def _precheck_new(data_dir, out, cfg):
    """Everything about a new run that needs no TensorFlow and no lock."""
    runfolder.check_data_relation(out, data_dir)
    data_mod.scan(data_dir)  # a bad data folder fails before anything is written (and what is ignored is said)
    modeling.check_weights_arg(cfg.weights)


def _train_into(run: Path, data_dir, cfg, base, weights, t0: float) -> tuple:
    """Stage 1 into the (staged) folder ``run``. Returns (model, dataset, report)."""
    runfolder.write_json(run / "report.json", {"edgetl_version": __version__, "created": _now(), "status": "running",
                                               "config": cfg.as_dict()})
    ds = data_mod.build(data_dir, run, cfg)
    model, section, history, weights = train.stage1(ds, cfg, run, base, weights, info=keras_info(ds, cfg))
    sha = _save_final(model, run, ds, cfg)
    ev = train.evaluate(model, ds, cfg)
    rep = runfolder.update_report(
        run,
        **_dataset_section(ds),
        weights=weights,
        config=cfg.as_dict(),
        stages={"feature_extraction": section},
        history={"feature_extraction": _clean_history(history)},
        keras={**ev, "path": "model.keras", "sha256": sha, "stage": "feature_extraction"},
        distribution=_plain_distribution(),
        status="trained",
    )
    ui.info(f"stage 1: {section['epochs']} epochs in {section['seconds']:.1f}s, best val_acc {section['val_accuracy']:.4f}"
            f"; test accuracy {ev['test_accuracy']:.4f} ({ev['n']} photos)")
    rep = report.add_timing(run, "train", time.perf_counter() - t0)
    return model, ds, rep


def _plain_distribution() -> dict:
    from . import collective

    return collective.plain_distribution()


def _several_devices(devices):
    """A Context for MirroredStrategy when this one process should train on several devices (--devices,
    or several visible GPUs); None keeps the one-process path (a single GPU is simply used)."""
    from . import collective

    if not collective.wants_strategy(devices):
        collective.select_devices(devices)
        return None
    return collective.Context(None, devices)


def _make_base(cfg, check_fine_tune: bool):
    base, weights = modeling.make_base(cfg)  # missing or undownloadable weights fail here, before any work
    if check_fine_tune and cfg.fine_tune_epochs > 0:
        modeling.fine_tune_index(base, cfg.fine_tune_from)
    return base, weights


def do_train(data_dir, out, cfg, force: bool, dist=None, devices=None) -> Path:
    """Stage 1 into a new run folder (replacing an old run only with --force, and only at the end).
    ``dist``: this process is one worker of a cluster (dist_pipeline.py)."""
    from . import dist_pipeline

    if dist is not None:
        return dist_pipeline.do_train(data_dir, out, cfg, force, dist)
    out = Path(out)
    _precheck_new(data_dir, out, cfg)
    with runfolder.RunLock(out):
        runfolder.check_new(out, force, data_dir)
        modeling.import_keras()  # TensorFlow only now: every cheap check has passed
        ctx = _several_devices(devices)
        if ctx is not None:
            return dist_pipeline.do_train(data_dir, out, cfg, force, ctx)
        t0 = time.perf_counter()
        base, weights = _make_base(cfg, check_fine_tune=False)
        with runfolder.Staged(out, fresh=True) as st:
            _model, _ds, rep = _train_into(st.path, data_dir, cfg, base, weights, t0)
            report.write(st.path, rep, name=out.name)
            st.commit("trained")
    ui.info(f"elapsed {time.perf_counter() - t0:.1f}s")
    return out


def _finetune_into(run: Path, cfg, model, ds, rep: dict) -> tuple:
    t0 = time.perf_counter()
    model, section, history = train.stage2(model, ds, cfg)
    sha = _save_final(model, run, ds, cfg)
    ev = train.evaluate(model, ds, cfg)
    hist = dict(rep.get("history") or {})
    hist["fine_tune"] = _clean_history(history)
    stages = dict(rep.get("stages") or {})
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
    return model, ds, rep


def do_finetune(run, cfg_flags: dict, force: bool, config_file=None, dist=None, devices=None) -> Path:
    """Stage 2 on an existing run (from its stage-1 model), replacing the run only when it ends."""
    from . import dist_pipeline

    if dist is not None:
        return dist_pipeline.do_finetune(run, cfg_flags, force, config_file, dist)
    run = Path(run)
    with runfolder.RunLock(run):
        if devices is not None:
            modeling.import_keras()
            ctx = _several_devices(devices)
            if ctx is not None:
                return dist_pipeline.do_finetune(run, cfg_flags, force, config_file, ctx)
        return _finetune_locked(run, cfg_flags, force, config_file)


def finetune_checks(run: Path, cfg_flags: dict, force: bool, config_file=None) -> tuple:
    """Everything `finetune` checks before any work (with the lock held): (report, config, split)."""
    runfolder.check_existing(run)
    split = data_mod.read_split(run)  # both files checked whole: a damaged one fails before TensorFlow loads
    rep = schema.read_report(run, split["data_dir"])
    if not rep or "stages" not in rep:
        raise EdgetlError(f"{run} is not a trained edgetl run (no report.json with stage 1)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
    if "fine_tune" in rep["stages"] and not force:
        raise EdgetlError(f"{run} is already fine-tuned", hint="pass --force to fine-tune again from the stage-1 model")
    cfg = config_mod.resolve(config_file, base=rep.get("config"), **cfg_flags)
    train.check_run_for_finetune(run)
    return rep, cfg, split


def _finetune_locked(run: Path, cfg_flags: dict, force: bool, config_file=None) -> Path:
    rep, cfg, _ = finetune_checks(run, cfg_flags, force, config_file)
    with runfolder.Staged(run, fresh=False) as st:
        model = modeling.load(st.path / "stage1.keras")
        base, _, _ = modeling.parts(model)
        modeling.fine_tune_index(base, cfg.fine_tune_from)  # before the photos are even read
        ds = data_mod.load(st.path)
        _, _, rep = _finetune_into(st.path, cfg, model, ds, rep)
        report.write(st.path, rep, name=run.name)
        st.commit("fine-tuned")
    return run


def do_build(data_dir, out, cfg, force: bool, keep_cache: bool = False, dist=None, devices=None) -> dict:
    """Everything: data, stage 1, stage 2, conversion of each mode, parity gates, report. The new run
    replaces an old one (--force) when it ends, also when a parity gate failed (every artifact kept). The
    cache of decoded photos is deleted at the end unless ``keep_cache`` or a gate failed (a later
    `quantize` would need it); later commands rebuild it when needed. ``dist``: this process is one
    worker of a cluster (dist_pipeline.py)."""
    from . import clean, convert, dist_pipeline

    if dist is not None:
        return dist_pipeline.do_build(data_dir, out, cfg, force, dist)
    out = Path(out)
    _precheck_new(data_dir, out, cfg)
    with runfolder.RunLock(out):
        runfolder.check_new(out, force, data_dir)
        modeling.import_keras()
        ctx = _several_devices(devices)
        if ctx is not None:
            return dist_pipeline.do_build(data_dir, out, cfg, force, ctx)
        t0 = time.perf_counter()
        base, weights = _make_base(cfg, check_fine_tune=True)
        with runfolder.Staged(out, fresh=True) as st:
            run = st.path
            model, ds, rep = _train_into(run, data_dir, cfg, base, weights, t0)
            model, ds, rep = _finetune_into(run, cfg, model, ds, rep)
            t2 = time.perf_counter()
            results = convert.quantize_run(run, cfg, model=model, ds=ds)
            report.add_timing(run, "quantize", time.perf_counter() - t2, modes=list(results))
            ok = all(r["passed"] for r in results.values())
            rep = runfolder.update_report(run, status="built" if ok else "gate-failed")
            if ok and not keep_cache:
                del ds  # the memory map
                freed = clean.remove_cache(run)
                ui.info(f"deleted {out / 'cache'}/ ({report.mb(freed)} MB of decoded photos; later commands decode "
                        "them again when needed; --keep-cache keeps it)")
            report.write(run, rep, name=out.name)
            st.commit("built" if ok else "gate-failed")
    return finish_build(rep, results, out)


def finish_build(rep: dict, results: dict, out: Path) -> dict:
    """The end of a build: the summary table, then exit 1 (GateFailed) when a parity gate failed."""
    report.print_summary(rep)
    failed = [m for m, r in results.items() if not r["passed"]]
    if failed:
        reasons = "; ".join(f"{m}: {results[m]['reason']}" for m in failed)
        raise GateFailed(f"parity gate failed for {', '.join(failed)} ({reasons})",
                         hint=f"every artifact is kept in {out}; see report.md. Try more calibration images "
                              "(--calibration-size), another --quantize mode, or relax --max-drop/--min-agreement")
    return rep


def _clean_history(h: dict) -> dict:
    return {k: [round(float(x), 5) for x in v] for k, v in (h or {}).items()}
