"""The training verbs: `edgetl train`, `edgetl finetune`, `edgetl build` (train + finetune + convert +
parity + report), all writing into one run folder. Each is defined once, for one process and for several.

A one-process run is a cluster of one (collective.Solo): the same steps, in the same order, with
collectives that are the identity. On several workers (or several devices of one machine) every worker runs
the same steps (the collectives need it): photos decoded by their owners, stage-1 features gathered, stage
2 as a custom training loop (ctl.py), evaluation and the Keras side of parity by shard, gathered. Only the
chief writes the run folder; the others keep their shard in a private scratch folder and stop once the
chief has their part.

Every verb checks what it can without TensorFlow first (the data folder, the options, the run folder and
its lock), so a mistake is reported in well under a second. Then it works on a staged copy of the run
(see runfolder.py) that replaces the run only when the command ends: a failed or killed command leaves
the previous run whole.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime import __version__
from edge_runtime.errors import EdgetlError, GateFailed

from toolchain.cfg import config as config_mod
from toolchain.core import data as data_mod
from toolchain.core import diagnose
from toolchain.core import modeling
from toolchain.core import report
from toolchain.rundir import runfolder
from toolchain.rundir import schema
from toolchain.core import train
from toolchain import ui


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def keras_info(ds, cfg) -> dict:
    """What a model.keras carries about itself (see modeling.save)."""
    return {"labels": list(ds.classes), "image_size": [cfg.input_size(), cfg.input_size()], "resize": cfg.resize,
            "value_range": [0.0, 255.0], "edgetl_version": __version__}


def save_final(model, run: Path, ds, cfg, saved: Path | None = None) -> str:
    """RUN/model.keras; its sha256. ``saved``: a file of this very model (stage1.keras, when the model has the
    stage-1 weights): copied when it carries the same info, not saved again (0.5 s of a 160-px build each)."""
    info = keras_info(ds, cfg)
    if saved is not None and modeling.read_info(saved) == {"format": "edgetl.keras", **info}:
        runfolder.save_with(run / "model.keras", lambda tmp: shutil.copyfile(saved, tmp))
    else:
        runfolder.save_with(run / "model.keras", lambda tmp: modeling.save(model, tmp, info))
    return runfolder.sha256_file(run / "model.keras")


def dataset_section(ds) -> dict:
    return {
        "data_dir": str(ds.data_dir),
        "classes": ds.classes,
        "counts": ds.counts(),
        "skipped": ds.skipped,
        "notes": ds.notes,
    }


def clean_history(h: dict) -> dict:
    return {k: [round(float(x), 5) for x in v] for k, v in (h or {}).items()}


def precheck_new(data_dir, out, cfg):
    """Everything about a new run that needs no TensorFlow and no lock."""
    runfolder.check_data_relation(out, data_dir)
    _, classes, _ = data_mod.scan(data_dir)  # a bad data folder fails before anything is written (and what is ignored is said)
    if cfg.unknown:
        data_mod.check_unknown(cfg.unknown, data_dir, classes)
    modeling.check_weights_arg(cfg.weights, cfg.alpha, cfg.image_size)  # offline: fails now, not after TF loads


def make_base(cfg, check_fine_tune: bool):
    base, weights = modeling.make_base(cfg)  # missing or undownloadable weights fail here, before any work
    if check_fine_tune and cfg.fine_tune_epochs > 0:
        modeling.fine_tune_index(base, cfg.fine_tune_from)
    return base, weights


# ------------------------------------------------------------------ the steps every worker runs


def _lock(out: Path, dist):
    """One process holds the run's lock itself; the workers of a cluster run under their supervisor's."""
    return runfolder.RunLock(out) if dist is None else contextlib.nullcontext()


def _begin(dist, devices, checks):
    """``checks()`` (the cheap ones, with the lock held), then TensorFlow and the context. One process:
    the checks run before TensorFlow is imported. Several workers: the cluster starts first and the chief's
    verdict (or its error) is every worker's. Returns (context, what ``checks`` returned)."""
    from toolchain.cluster import collective

    if dist is None:
        decided = checks()
        modeling.import_keras()  # TensorFlow only now: every cheap check has passed
        return collective.local_context(devices), decided
    dist.start()
    with dist.guard():
        return dist, dist.chief_decides(checks)


def _scratch(ctx) -> Path:
    """A worker's private folder for its shard (not the chief: it writes the run)."""
    if ctx.scratch is None:
        import tempfile

        ctx.scratch = Path(tempfile.mkdtemp(prefix="edgetl-worker-"))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    return ctx.scratch


@contextlib.contextmanager
def _staged(ctx, out: Path, fresh: bool):
    """The chief's staged copy of the run (None on the other workers)."""
    if not ctx.chief:
        yield None
        return
    with runfolder.Staged(out, fresh=fresh) as st:
        yield st


def _train_into(run: Path, data_dir, cfg, base, weights, t0: float, ctx, prefix=None) -> tuple:
    """Stage 1 into the (staged) folder ``run``. Returns (model, dataset, report). ``prefix`` (a
    train.PrefixCache): filled with the frozen prefix's outputs for stage 2, when it can use them."""
    if ctx.chief:
        runfolder.write_json(run / "report.json", {"edgetl_version": __version__, "created": now(),
                                                   "status": "running", "config": cfg.as_dict()})
    ds = ctx.build_dataset(data_dir, run, cfg, write_run=ctx.chief)
    diag = {}  # report.json `data`: near-duplicates (regrouped), likely label errors, from stage 1's features
    model, section, history, weights = train.stage1(
        ds, cfg, run, base, weights, info=keras_info(ds, cfg), prefix=prefix,
        features_hook=lambda rows, feats, secs: diag.update(diagnose.on_features(ds, run, cfg, rows, feats, ctx,
                                                                                 secs)))
    ev = train.evaluate(model, ds, cfg, prefix)
    rep = {}
    if ctx.chief:
        sha = save_final(model, run, ds, cfg, saved=run / "stage1.keras")  # what stage 1 just saved
        rep = runfolder.update_report(
            run,
            **dataset_section(ds),
            weights=weights,
            config=cfg.as_dict(),
            stages={"feature_extraction": section},
            history={"feature_extraction": clean_history(history)},
            keras={**ev, "path": "model.keras", "sha256": sha, "stage": "feature_extraction"},
            distribution=ctx.describe(),
            status="trained",
            **({"data": diag} if diag else {}),
        )
        rep = report.add_timing(run, "train", time.perf_counter() - t0)
    ui.info(f"stage 1: {section['epochs']} epochs in {section['seconds']:.1f}s, best val_acc {section['val_accuracy']:.4f}"
            f"; test accuracy {ev['test_accuracy']:.4f} ({ev['n']} photos){_tag(ctx)}")
    return model, ds, rep


def _finetune_into(run: Path, cfg, model, ds, rep: dict, ctx, prefix=None) -> tuple:
    t0 = time.perf_counter()
    model, section, history = train.stage2(model, ds, cfg, prefix)
    ev = train.evaluate(model, ds, cfg, prefix)
    if ctx.chief:  # stage 2 not kept: the model has stage 1's weights again (stage1.keras)
        sha = save_final(model, run, ds, cfg, saved=run / "stage1.keras" if section["kept"] != "fine_tune" else None)
        hist = dict(rep.get("history") or {})
        hist["fine_tune"] = clean_history(history)
        stages = dict(rep.get("stages") or {})
        stages["fine_tune"] = section
        rep = runfolder.update_report(
            run,
            config=cfg.as_dict(),
            stages=stages,
            history=hist,
            keras={**ev, "path": "model.keras", "sha256": sha, "stage": section["kept"]},
            distribution=ctx.describe(),
            status="fine-tuned",
        )
        rep = report.add_timing(run, "finetune", time.perf_counter() - t0)
    ui.info(f"stage 2: {section['epochs']} epochs in {section['seconds']:.1f}s, kept {section['kept']}; "
            f"test accuracy {ev['test_accuracy']:.4f}{_tag(ctx)}")
    return model, ds, rep


def _tag(ctx) -> str:
    t = ctx.tag()
    return f" {t}" if t else ""


# ------------------------------------------------------------------ the verbs


@contextlib.contextmanager
def _new_run(data_dir, out: Path, cfg, force: bool, dist, devices, check_fine_tune: bool):
    """How every new run starts (train, build): the cheap checks, the lock, TensorFlow and the context, the
    base model, the staged folder. Yields (context, staged run or None, the folder to write, base, weights
    info, start time)."""
    precheck_new(data_dir, out, cfg)
    with _lock(out, dist):
        ctx, _ = _begin(dist, devices, lambda: runfolder.check_new(out, force, data_dir) and None)
        with ctx.guard():
            t0 = time.perf_counter()
            base, weights = ctx.together(lambda: make_base(cfg, check_fine_tune=check_fine_tune))
            with _staged(ctx, out, fresh=True) as st:
                yield ctx, st, (st.path if st else _scratch(ctx)), base, weights, t0


def do_train(data_dir, out, cfg, force: bool, dist=None, devices=None) -> Path | None:
    """Stage 1 into a new run folder (replacing an old run only with --force, and only at the end).
    ``dist``: this process is one worker of a cluster (collective.Context); None: one process."""
    out = Path(out)
    with _new_run(data_dir, out, cfg, force, dist, devices, False) as (ctx, st, run, base, weights, t0):
        _model, _ds, rep = _train_into(run, data_dir, cfg, base, weights, t0, ctx)
        if not ctx.chief:
            return None
        report.write(run, rep, name=out.name)
        st.commit("trained")
    ui.info(f"elapsed {time.perf_counter() - t0:.1f}s")
    return out


def finetune_checks(run: Path, cfg_flags: dict, force: bool, config_file=None) -> tuple:
    """Everything `finetune` checks before any work (with the lock held): (report, config, split)."""
    runfolder.check_existing(run)
    split = schema.check_run(run)  # both files checked whole: a damaged one fails before TensorFlow loads
    rep = schema.read_report(run, split["data_dir"])
    if not rep or "stages" not in rep:
        raise EdgetlError(f"{run} is not a trained edgetl run (no report.json with stage 1)",
                          hint="run `edgetl train DATA_DIR --out RUN` first")
    if "fine_tune" in rep["stages"] and not force:
        raise EdgetlError(f"{run} is already fine-tuned", hint="pass --force to fine-tune again from the stage-1 model")
    cfg = config_mod.resolve(config_file, base=rep.get("config"), **cfg_flags)
    built = config_mod.resolve(None, base=rep.get("config"))
    changed = [k for k in config_mod.STAGE1_KEYS if getattr(cfg, k) != getattr(built, k)]
    if changed:  # only a config file can say so (finetune has no such flags): the stage-1 model fixes them
        k = changed[0]
        raise EdgetlError(f"{config_file} sets {k} = {getattr(cfg, k)!r}, but {run} was built with "
                          f"{getattr(built, k)!r}: fine-tuning keeps the stage-1 model and its data as they are",
                          hint=f"leave {', '.join(changed)} out of the file for finetune, or make a new run with "
                               f"them: edgetl build DATA_DIR --config {config_file} --out NEW_RUN")
    train.check_run_for_finetune(run)
    return rep, cfg, split


def do_finetune(run, cfg_flags: dict, force: bool, config_file=None, dist=None, devices=None) -> Path | None:
    """Stage 2 on an existing run (from its stage-1 model), replacing the run only when it ends."""
    run = Path(run)

    def checks():
        _, cfg, split = finetune_checks(run, cfg_flags, force, config_file)
        return {"config": cfg.as_dict(), "split": split}

    with _lock(run, dist):
        ctx, shared = _begin(dist, devices, checks)
        cfg = config_mod.resolve(None, base=shared["config"])
        with ctx.guard(), _staged(ctx, run, fresh=False) as st:
            where = st.path if st else _scratch(ctx)
            if ctx.n > 1:  # the chief's stage-1 model, on every worker
                blob = ctx.broadcast_bytes((where / "stage1.keras").read_bytes() if ctx.chief else None)
                if not ctx.chief:
                    runfolder.write_bytes(where / "stage1.keras", blob)
            model = modeling.load(where / "stage1.keras")
            base, _, _ = modeling.parts(model)
            modeling.fine_tune_index(base, cfg.fine_tune_from)  # before the photos are even read
            ds = ctx.load_dataset(shared["split"], where)
            rep = runfolder.read_report(where) if ctx.chief else {}
            prefix = train.PrefixCache(where / "cache")
            try:
                _, _, rep = _finetune_into(where, cfg, model, ds, rep, ctx, prefix)
            finally:
                prefix.close()
            if not ctx.chief:
                return None
            shutil.rmtree(where / "cache-shard", ignore_errors=True)  # a sharded run's decoded share
            report.write(where, rep, name=run.name)
            st.commit("fine-tuned")
    return run


def do_build(data_dir, out, cfg, force: bool, keep_cache: bool = False, dist=None, devices=None) -> dict | None:
    """Everything: data, stage 1, stage 2, conversion of each mode, parity gates, report. The new run
    replaces an old one (--force) when it ends, also when a parity gate failed (every artifact kept). The
    cache of decoded photos is deleted at the end unless ``keep_cache`` or a gate failed (a later
    `quantize` would need it); later commands rebuild it when needed."""
    from toolchain.commands import clean
    from toolchain.core import convert
    from toolchain.core import parity

    out = Path(out)
    with _new_run(data_dir, out, cfg, force, dist, devices, True) as (ctx, st, run, base, weights, t0):
        prefix = train.PrefixCache(run / "cache")  # stage 2 on the frozen prefix's outputs, if it can
        try:
            model, ds, rep = _train_into(run, data_dir, cfg, base, weights, t0, ctx, prefix)
            model, ds, rep = _finetune_into(run, cfg, model, ds, rep, ctx, prefix)
            t2 = time.perf_counter()
            # what conversion and parity need from every worker: calibration photos and the parity
            # photos (gathered), the Keras model's probabilities on them (each worker its share)
            calib = convert.calibration_from_run(ds, cfg) if "int8" in cfg.quantize else None
            evalset = convert.run_evalset(ds, cfg.seed)
            k = int(model.output.shape[-1])
            if prefix.has(evalset.rows, model):  # only the layers above the prefix run
                evalset.p_keras = prefix.predict(model, evalset.rows)
            else:
                evalset.p_keras = ctx.shard_positions(
                    lambda idx: parity.keras_probabilities(model, evalset.tensors[idx], (0.0, 255.0),
                                                           desc="keras on parity set"),
                    len(evalset.tensors), (0, k))
        finally:
            prefix.close()
        if not ctx.chief:
            ui.info("this worker's part is done; the chief converts and writes the run")
            return None
        results = convert.quantize_run(run, cfg, model=model, ds=ds, calibration=calib, evalset=evalset)
        report.add_timing(run, "quantize", time.perf_counter() - t2, modes=list(results))
        ok = all(r["passed"] for r in results.values())
        rep = runfolder.update_report(run, status="built" if ok else "gate-failed")
        if ok and not keep_cache:
            del ds  # the memory map
            freed = clean.remove_cache(run)
            ui.info(f"deleted {out / 'cache'}/ ({report.mb(freed)} MB of decoded photos; later commands "
                    "decode them again when needed; --keep-cache keeps it)")
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
