"""`edgetl build/train/finetune` on several workers (or several devices of one machine).

Every worker runs the same command and the same steps, in the same order (the collectives need it):
photos decoded by their owners, stage-1 features computed by shard and gathered with an all-gather (so
every worker trains the same head on all of them, with no shared filesystem needed), stage 2 as a custom
training loop (ctl.py), evaluation and the Keras side of parity by shard, gathered. Only the chief (task
0) writes the run folder, through the same staged copy as one process (runfolder.Staged), and converts to
TFLite once the others have given their part; the others keep their shard in a private scratch folder and
stop there.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from edge_runtime import __version__

from . import collective, modeling, pipeline, report, runfolder, train, ui
from . import config as config_mod


def _scratch(ctx) -> Path:
    if ctx.scratch is None:
        import tempfile

        ctx.scratch = Path(tempfile.mkdtemp(prefix="edgetl-worker-"))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    return ctx.scratch


def _train_into(run: Path, data_dir, cfg, base, weights, t0: float, ctx) -> tuple:
    if ctx.chief:
        runfolder.write_json(run / "report.json", {"edgetl_version": __version__, "created": pipeline._now(),
                                                   "status": "running", "config": cfg.as_dict()})
    ds = collective.build_dataset(data_dir, run, cfg, ctx, write_run=ctx.chief)
    model, section, history, weights = train.stage1(ds, cfg, run, base, weights, info=pipeline.keras_info(ds, cfg))
    ev = train.evaluate(model, ds, cfg)
    rep = {}
    if ctx.chief:
        sha = pipeline._save_final(model, run, ds, cfg)
        rep = runfolder.update_report(
            run, **pipeline._dataset_section(ds), weights=weights, config=cfg.as_dict(),
            distribution=ctx.describe(),
            stages={"feature_extraction": section},
            history={"feature_extraction": pipeline._clean_history(history)},
            keras={**ev, "path": "model.keras", "sha256": sha, "stage": "feature_extraction"},
            status="trained")
        rep = report.add_timing(run, "train", time.perf_counter() - t0)
    ui.info(f"stage 1: {section['epochs']} epochs in {section['seconds']:.1f}s, best val_acc {section['val_accuracy']:.4f}"
            f"; test accuracy {ev['test_accuracy']:.4f} ({ev['n']} photos) {ctx.tag()}")
    return model, ds, rep


def _finetune_into(run: Path, cfg, model, ds, rep: dict, ctx) -> tuple:
    model, section, history = train.stage2(model, ds, cfg)
    ev = train.evaluate(model, ds, cfg)
    if ctx.chief:
        sha = pipeline._save_final(model, run, ds, cfg)
        hist = dict(rep.get("history") or {})
        hist["fine_tune"] = pipeline._clean_history(history)
        stages = dict(rep.get("stages") or {})
        stages["fine_tune"] = section
        rep = runfolder.update_report(run, config=cfg.as_dict(), stages=stages, history=hist,
                                      distribution=ctx.describe(),
                                      keras={**ev, "path": "model.keras", "sha256": sha, "stage": section["kept"]},
                                      status="fine-tuned")
    ui.info(f"stage 2: {section['epochs']} epochs in {section['seconds']:.1f}s, kept {section['kept']}; "
            f"test accuracy {ev['test_accuracy']:.4f} {ctx.tag()}")
    return model, ds, rep


def _start(ctx, cheap_checks):
    """The checks every worker can make alone, then TensorFlow and the cluster."""
    cheap_checks()
    ctx.start()


def do_train(data_dir, out, cfg, force: bool, ctx) -> Path | None:
    out = Path(out)
    _start(ctx, lambda: pipeline._precheck_new(data_dir, out, cfg))
    with ctx.guard():
        ctx.chief_decides(lambda: runfolder.check_new(out, force, data_dir) and None)
        t0 = time.perf_counter()
        base, weights = ctx.together(lambda: pipeline._make_base(cfg, check_fine_tune=False))
        with _staged(ctx, out, fresh=True) as st:
            run = st.path if st else _scratch(ctx)
            _model, _ds, rep = _train_into(run, data_dir, cfg, base, weights, t0, ctx)
            if not ctx.chief:
                return None
            report.write(run, rep, name=out.name)
            st.commit("trained")
    ui.info(f"elapsed {time.perf_counter() - t0:.1f}s")
    return out


@contextlib.contextmanager
def _staged(ctx, out: Path, fresh: bool):
    if not ctx.chief:
        yield None
        return
    with runfolder.Staged(out, fresh=fresh) as st:
        yield st


def do_finetune(run, cfg_flags: dict, force: bool, config_file, ctx) -> Path | None:
    run = Path(run)
    ctx.start()
    with ctx.guard():
        def prepare():
            _, cfg, split = pipeline.finetune_checks(run, cfg_flags, force, config_file)
            return {"config": cfg.as_dict(), "split": split}

        shared = ctx.chief_decides(prepare)
        cfg = config_mod.resolve(None, base=shared["config"])
        t0 = time.perf_counter()
        with _staged(ctx, run, fresh=False) as st:
            where = st.path if st else _scratch(ctx)
            blob = ctx.broadcast_bytes((where / "stage1.keras").read_bytes() if ctx.chief else None)
            if not ctx.chief:
                runfolder.write_bytes(where / "stage1.keras", blob)
            model = modeling.load(where / "stage1.keras")
            base, _, _ = modeling.parts(model)
            modeling.fine_tune_index(base, cfg.fine_tune_from)
            ds = collective.load_dataset(shared["split"], _scratch(ctx) if not ctx.chief else where, ctx)
            rep = runfolder.read_report(where) if ctx.chief else {}
            _, _, rep = _finetune_into(where, cfg, model, ds, rep, ctx)
            if not ctx.chief:
                return None
            import shutil

            shutil.rmtree(where / "cache-shard", ignore_errors=True)
            rep = report.add_timing(where, "finetune", time.perf_counter() - t0)
            report.write(where, rep, name=run.name)
            st.commit("fine-tuned")
    return run


def do_build(data_dir, out, cfg, force: bool, ctx) -> dict | None:
    from . import convert, parity

    out = Path(out)
    _start(ctx, lambda: pipeline._precheck_new(data_dir, out, cfg))
    with ctx.guard():
        ctx.chief_decides(lambda: runfolder.check_new(out, force, data_dir) and None)
        t0 = time.perf_counter()
        base, weights = ctx.together(lambda: pipeline._make_base(cfg, check_fine_tune=True))
        with _staged(ctx, out, fresh=True) as st:
            run = st.path if st else _scratch(ctx)
            model, ds, rep = _train_into(run, data_dir, cfg, base, weights, t0, ctx)
            t1 = time.perf_counter()
            model, ds, rep = _finetune_into(run, cfg, model, ds, rep, ctx)
            if ctx.chief:
                rep = report.add_timing(run, "finetune", time.perf_counter() - t1)
            t2 = time.perf_counter()
            # what conversion and parity need from every worker: calibration photos and the parity photos
            # (gathered), the Keras model's probabilities on them (each worker its share, gathered)
            calib = convert.calibration_from_run(ds, cfg) if "int8" in cfg.quantize else None
            evalset = convert.run_evalset(ds, cfg.seed)
            k = int(model.output.shape[-1])
            evalset.p_keras = ctx.shard_positions(
                lambda idx: parity.keras_probabilities(model, evalset.tensors[idx], (0.0, 255.0)),
                len(evalset.tensors), (0, k))
            if not ctx.chief:
                ui.info("this worker's part is done; the chief converts and writes the run")
                return None
            results = convert.quantize_run(run, cfg, model=model, ds=ds, calibration=calib, evalset=evalset)
            report.add_timing(run, "quantize", time.perf_counter() - t2, modes=list(results))
            ok = all(r["passed"] for r in results.values())
            rep = runfolder.update_report(run, status="built" if ok else "gate-failed")
            report.write(run, rep, name=out.name)
            st.commit("built" if ok else "gate-failed")
    return pipeline.finish_build(rep, results, out)
