"""The `edgetl` command line. Heavy imports (TensorFlow, OpenCV, the interpreter) happen inside the
commands that need them, so `edgetl --help` and the runtime verbs never load TensorFlow.

Exit codes: 0 success, 1 a gate failed (parity), 2 bad usage or bad input (one line and a hint).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core

from edge_runtime.errors import EdgetlError

class _PlainHelpCommand(typer.core.TyperCommand):
    """Typer's help, with its type placeholders (``<path>``, ``<list[str]>``) and braces around
    arguments (``{DATA_DIR}``) removed: metavars already say what to write, in plain words. They are
    removed from each entry before the columns are laid out, so every description starts in one column."""

    @staticmethod
    def _plain(text: str) -> str:
        import re

        text = re.sub(r"\{([A-Za-z0-9_.|\[\]]+)\}", r"\1", text)
        return re.sub(r" <[a-zA-Z\[\]|,. ]+>", "", text)

    def format_options(self, ctx, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            rv = param.get_help_record(ctx)
            if rv is not None:
                rv = (self._plain(rv[0]), rv[1])
                (args if param.param_type_name == "argument" else opts).append(rv)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def get_help(self, ctx) -> str:
        return self._plain(super().get_help(ctx))


app = typer.Typer(
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # -h = --help, on every verb too
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train a MobileNetV2 classifier on your photos, quantize it to TFLite, prove parity, run it on the edge.",
)

def _version(value: bool):
    if value:
        from edge_runtime import __version__

        typer.echo(f"edgetl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print edgetl's version and exit.")):
    """Train a MobileNetV2 classifier on your photos, quantize it to TFLite, prove parity, run it on the edge."""


# ------------------------------------------------------------------ shared options
# Training options default to None: "not given", so --config and a run's recorded config can apply.
Alpha = typer.Option(None, "--alpha", metavar="WIDTH", help="MobileNetV2 width: 0.35, 0.5, 0.75, 1.0 (default), 1.3, 1.4.")
ImageSize = typer.Option(None, "--image-size", metavar="PX", help="What the network sees: 96, 128, 160 (default), 192, 224.")
CentralFraction = typer.Option(None, "--central-fraction", metavar="F", help="The network sees the central F of each side of the model's input (default 0.8: a 200-px input at 160; 1: the whole input). Inside the model, so every consumer gets it.")
Weights = typer.Option(None, "--weights", metavar="SOURCE", help="imagenet (default), none, or the path of a no-top .h5 file.")
HeadUnits = typer.Option(None, "--head-units", metavar="N", help="Units of the head's hidden Dense layer (default 128).")
Dropout = typer.Option(None, "--dropout", metavar="RATE", help="Dropout before the head (default 0.2).")
Epochs = typer.Option(None, "--epochs", metavar="N", help="Stage-1 epochs (default 10; early stopping on val loss).")
BatchSize = typer.Option(None, "--batch-size", metavar="N", help="Batch size (default 32).")
LearningRate = typer.Option(None, "--learning-rate", metavar="LR", help="Stage-1 Adam learning rate (default 1e-3).")
Augment = typer.Option(None, "--augment/--no-augment", help="Train on augmented views too: flip, crop, light (default off).")
TrainViews = typer.Option(None, "--train-views", metavar="VIEWS",
                          help="fit (default): train on the photos as the resize policy fits them; both: also on "
                               "each training photo centre-cropped (MediaPipe's fit for --resize crop), so the "
                               "model knows a photo however the consumer frames it.")
FineTuneFrom = typer.Option(None, "--fine-tune-from", metavar="LAYER", help="First base layer to unfreeze: index or name (default 100).")
FineTuneLR = typer.Option(None, "--fine-tune-lr", metavar="LR", help="Stage-2 Adam learning rate (default 1e-5).")
FineTuneEpochs = typer.Option(None, "--fine-tune-epochs", metavar="N", help="Stage-2 epochs (default 5; 0 skips stage 2).")
Split = typer.Option(None, "--split", metavar="TRAIN,VAL,TEST", help="train,val,test fractions when DATA_DIR has no split (default 0.8,0.1,0.1).")
Seed = typer.Option(None, "--seed", metavar="N", help="Seed for the split, initialisation and shuffling (default 42).")
Resize = typer.Option(None, "--resize", metavar="POLICY", help="Resize policy: mediapipe (default: the whole frame, as MediaPipe Tasks fit it), crop, squash or pad.")
Strict = typer.Option(None, "--strict/--no-strict", help="Unreadable files are an error instead of skipped (default off).")
ConfigFile = typer.Option(None, "--config", metavar="FILE", help="TOML file of options (flags override it).")
Force = typer.Option(False, "--force", help="Replace an existing run or models (the old ones stay until the new ones are complete).")
Quantize = typer.Option(None, "--quantize", metavar="MODE", help="TFLite mode to produce: int8, float16, dynamic, float32; repeatable (default int8 and float32: the device runs the faster one that passes parity).")
CalibrationSize = typer.Option(None, "--calibration-size", metavar="N", help="Calibration photos for int8 (default 50, seeded).")
IoType = typer.Option(None, "--io", metavar="TYPE", help="I/O type of int8 models: uint8 (default), int8, float32.")
UnknownDir = typer.Option(None, "--unknown", metavar="DIR",
                          help="Photos of none of the classes (background, other objects): the models learn to "
                               "answer 'unknown', with a threshold calibrated on held-out ones.")
MinScore = typer.Option(None, "--min-score", metavar="S",
                        help="Answer 'unknown' when no class scores at least S (0 to 1), written into both "
                             "metadata forms (default: calibrated with --unknown, else none).")
MaxDrop = typer.Option(None, "--max-drop", metavar="POINTS", help="Parity gate: largest accuracy drop in points (default 1.0).")
MinAgreement = typer.Option(None, "--min-agreement", metavar="FRACTION", help="Parity gate: smallest top-1 agreement (default 0.97).")
Consumers = typer.Option(None, "--consumers", metavar="LIST",
                         help="Parity gate: the consumers that will run the models, e.g. edge,mediapipe (edge: "
                              "edge_runtime; mediapipe: MediaPipe Tasks and the Task Library; tflite-runtime). "
                              "Default: all that apply (mediapipe for the mediapipe resize policy). Each is "
                              "measured either way.")
Threads = typer.Option(None, "--threads", metavar="N", help="Interpreter threads (default all cores).")
Backend = typer.Option(None, "--backend", metavar="NAME", help="ai_edge_litert, tflite_runtime or tensorflow (default the first installed).")
Labels = typer.Option(None, "--labels", metavar="FILE", help="Label file (one per line) for a model without metadata.")
InputRange = typer.Option(None, "--input-range", metavar="LOW,HIGH", help="LOW,HIGH values for pixels 0 and 255, for a float model without metadata.")
ClusterOpt = typer.Option(None, "--cluster", metavar="HOST:PORT,...",
                          help="Train on several machines: every worker's address, the chief first; run the same "
                               "command on each with its --task-index (or give each a TF_CONFIG).")
TaskIndex = typer.Option(None, "--task-index", metavar="I",
                         help="This worker's position in --cluster (0 is the chief, which alone writes the run).")
LocalWorkers = typer.Option(None, "--local-workers", metavar="N",
                            help="Start N workers on this machine (127.0.0.1) and run the cluster path with them.")
Devices = typer.Option(None, "--devices", metavar="LIST",
                       help="Devices to train on: all (default: every GPU, else the CPU), cpu, gpu:0,gpu:1, or "
                            "cpu:0,cpu:1 (the CPU split in two); several devices train with MirroredStrategy.")
WorkerTimeout = typer.Option(None, "--worker-timeout", metavar="SECONDS",
                             help="Several workers: how long to wait for them to join, and for each to reach a "
                                  "step the others are at (default 600).")
OutputOpt = typer.Option(None, "--output", metavar="NAME_OR_INDEX",
                         help="For a model with several outputs: the head to read, by position (0, 1, ...) or name "
                              "(default: the first score vector whose metadata gives labels).")
TopK = typer.Option(3, "--top-k", metavar="K", show_default=False, help="How many classes to report (default 3).")


def _split(v):
    if v is None:
        return None
    try:
        return [float(x) for x in v.split(",")]
    except ValueError:
        raise EdgetlError(f"--split {v!r} is not a list of fractions", hint="e.g. --split 0.8,0.1,0.1") from None


def _consumers(v):
    return None if v is None else [x.strip() for x in v.split(",") if x.strip()]


def _train_flags(**kw) -> dict:
    kw["split"] = _split(kw.get("split"))
    if "consumers" in kw:
        kw["consumers"] = _consumers(kw["consumers"])
    return kw


def _unknown_flag(unknown: Optional[Path]) -> Optional[str]:
    """--unknown DIR as the config records it: the folder's absolute path."""
    return None if unknown is None else str(Path(unknown).absolute())


def _default_out(data_dir: Path) -> Path:
    return Path("runs") / (data_dir.resolve().name or "run")


_ARGV: list = []


def _distributed(call, lock_target, cluster, task_index, local_workers, devices, worker_timeout, precheck=None):
    """Run a training verb: in this process as always, as one TensorFlow worker started by a supervisor, or
    as that supervisor (--local-workers, --cluster, TF_CONFIG; see distributed.py). Returns True when this
    process should print the run folder (the chief, or a plain run)."""
    import os

    from toolchain.cluster import distributed
    from toolchain.cluster.collective import parse_devices
    from toolchain.cfg.config import check_number

    settings = distributed.child_settings()
    if settings is not None:  # a worker started by the supervisor below
        distributed.die_with_supervisor(settings)  # first: a worker never outlives its supervisor
    check_number("worker_timeout", worker_timeout, "--worker-timeout")
    parse_devices(devices)  # a typo fails now, not after TensorFlow has loaded
    if settings is not None:  # TF_CONFIG says which worker this is
        from toolchain.cluster import collective

        cl = distributed.parse_tf_config(os.environ.get("TF_CONFIG", ""))
        ctx = collective.Context(cl, devices, settings.get("timeout", distributed.DEFAULT_TIMEOUT), settings)
        call(dist=ctx)
        return ctx.chief
    distributed.sweep_stale_scratch()  # what a killed supervisor left in the temporary folder
    plan = distributed.plan(cluster, task_index, local_workers)
    if plan is None:
        call(devices=devices)
        return True
    if precheck is not None:
        precheck()
    code = distributed.launch(plan, _ARGV, lock_target, worker_timeout or distributed.DEFAULT_TIMEOUT)
    raise typer.Exit(code)


# ------------------------------------------------------------------ training verbs


DataDir = typer.Argument(..., metavar="DATA_DIR", show_default=False,
                         help="Folder with one sub-folder per class, or train/ val/ [test/] folders of them.")
RunOut = typer.Option(None, "--out", metavar="RUN", help="Run folder (default runs/ + the data folder's name).")


@app.command(cls=_PlainHelpCommand, short_help="Everything: photos to a checked, quantized TFLite model and a report.")
def build(
    data_dir: Path = DataDir,
    out: Optional[Path] = RunOut,
    force: bool = Force,
    config: Optional[Path] = ConfigFile,
    alpha: Optional[float] = Alpha,
    image_size: Optional[int] = ImageSize,
    central_fraction: Optional[float] = CentralFraction,
    weights: Optional[str] = Weights,
    head_units: Optional[int] = HeadUnits,
    dropout: Optional[float] = Dropout,
    epochs: Optional[int] = Epochs,
    batch_size: Optional[int] = BatchSize,
    learning_rate: Optional[float] = LearningRate,
    augment: Optional[bool] = Augment,
    train_views: Optional[str] = TrainViews,
    fine_tune_from: Optional[str] = FineTuneFrom,
    fine_tune_lr: Optional[float] = FineTuneLR,
    fine_tune_epochs: Optional[int] = FineTuneEpochs,
    split: Optional[str] = Split,
    seed: Optional[int] = Seed,
    resize: Optional[str] = Resize,
    strict: Optional[bool] = Strict,
    quantize: Optional[List[str]] = Quantize,
    calibration_size: Optional[int] = CalibrationSize,
    io: Optional[str] = IoType,
    max_drop: Optional[float] = MaxDrop,
    min_agreement: Optional[float] = MinAgreement,
    consumers: Optional[str] = Consumers,
    unknown: Optional[Path] = UnknownDir,
    min_score: Optional[float] = MinScore,
    keep_cache: bool = typer.Option(False, "--keep-cache", help="Keep RUN/cache/ (the decoded photos) after a successful build; later commands rebuild it when needed."),
    cluster: Optional[str] = ClusterOpt,
    task_index: Optional[int] = TaskIndex,
    local_workers: Optional[int] = LocalWorkers,
    devices: Optional[str] = Devices,
    worker_timeout: Optional[float] = WorkerTimeout,
):
    """Everything: validate and split the photos, train (2 stages), convert to TFLite, check parity, report."""
    from toolchain.cfg import config as config_mod
    from toolchain.commands import pipeline

    flags = _train_flags(alpha=alpha, image_size=image_size, central_fraction=central_fraction, weights=weights, head_units=head_units, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=augment, train_views=train_views,
                         fine_tune_from=fine_tune_from, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
                         split=split, seed=seed, resize=resize, strict=strict, quantize=quantize,
                         calibration_size=calibration_size, io=io, max_drop=max_drop, min_agreement=min_agreement,
                         consumers=consumers, unknown=_unknown_flag(unknown), min_score=min_score)
    cfg = config_mod.resolve(config, **flags)
    out = out or _default_out(data_dir)
    if _distributed(lambda **kw: pipeline.do_build(data_dir, out, cfg, force, keep_cache=keep_cache, **kw), out, cluster, task_index,
                    local_workers, devices, worker_timeout, lambda: pipeline.precheck_new(data_dir, out, cfg)):
        typer.echo(str(out))


@app.command(cls=_PlainHelpCommand, short_help="Stage 1: split the photos, train the head on the frozen base's features.")
def train(
    data_dir: Path = DataDir,
    out: Optional[Path] = RunOut,
    force: bool = Force,
    config: Optional[Path] = ConfigFile,
    alpha: Optional[float] = Alpha,
    image_size: Optional[int] = ImageSize,
    central_fraction: Optional[float] = CentralFraction,
    weights: Optional[str] = Weights,
    head_units: Optional[int] = HeadUnits,
    dropout: Optional[float] = Dropout,
    epochs: Optional[int] = Epochs,
    batch_size: Optional[int] = BatchSize,
    learning_rate: Optional[float] = LearningRate,
    augment: Optional[bool] = Augment,
    train_views: Optional[str] = TrainViews,
    split: Optional[str] = Split,
    seed: Optional[int] = Seed,
    resize: Optional[str] = Resize,
    strict: Optional[bool] = Strict,
    unknown: Optional[Path] = UnknownDir,
    cluster: Optional[str] = ClusterOpt,
    task_index: Optional[int] = TaskIndex,
    local_workers: Optional[int] = LocalWorkers,
    devices: Optional[str] = Devices,
    worker_timeout: Optional[float] = WorkerTimeout,
):
    """Stage 1: split the photos and train the head on cached features of the frozen base."""
    from toolchain.cfg import config as config_mod
    from toolchain.commands import pipeline

    flags = _train_flags(alpha=alpha, image_size=image_size, central_fraction=central_fraction, weights=weights, head_units=head_units, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=augment, train_views=train_views,
                         split=split, seed=seed, resize=resize, strict=strict, unknown=_unknown_flag(unknown))
    cfg = config_mod.resolve(config, **flags)
    out = out or _default_out(data_dir)
    if _distributed(lambda **kw: pipeline.do_train(data_dir, out, cfg, force, **kw), out, cluster, task_index,
                    local_workers, devices, worker_timeout, lambda: pipeline.precheck_new(data_dir, out, cfg)):
        typer.echo(str(out))


@app.command(cls=_PlainHelpCommand, short_help="Stage 2: fine-tune the top of the base with a small learning rate.")
def finetune(
    run: Path = typer.Argument(..., metavar="RUN", show_default=False, help="A run folder made by `edgetl train`."),
    force: bool = typer.Option(False, "--force", help="Fine-tune again a run that is already fine-tuned."),
    config: Optional[Path] = ConfigFile,
    fine_tune_from: Optional[str] = FineTuneFrom,
    fine_tune_lr: Optional[float] = FineTuneLR,
    fine_tune_epochs: Optional[int] = FineTuneEpochs,
    batch_size: Optional[int] = BatchSize,
    augment: Optional[bool] = Augment,
    train_views: Optional[str] = TrainViews,
    cluster: Optional[str] = ClusterOpt,
    task_index: Optional[int] = TaskIndex,
    local_workers: Optional[int] = LocalWorkers,
    devices: Optional[str] = Devices,
    worker_timeout: Optional[float] = WorkerTimeout,
):
    """Stage 2: unfreeze the top of the base and train with a small learning rate (BatchNorm frozen)."""
    from toolchain.commands import pipeline

    flags = dict(fine_tune_from=fine_tune_from, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
                 batch_size=batch_size, augment=augment, train_views=train_views)
    if _distributed(lambda **kw: pipeline.do_finetune(run, flags, force, config_file=config, **kw), run, cluster,
                    task_index, local_workers, devices, worker_timeout):
        typer.echo(str(run))


@app.command(cls=_PlainHelpCommand, short_help="Convert to TFLite (int8 and float32 by default), check it, measure parity.")
def quantize(
    source: Path = typer.Argument(..., metavar="RUN_OR_MODEL", show_default=False,
                                  help="A run folder, or a Keras model (.keras)."),
    quantize: Optional[List[str]] = Quantize,
    mode: Optional[List[str]] = typer.Option(None, "--mode", hidden=True, help="Old name of --quantize."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", metavar="DIR",
                                               help="Calibration photos (default the run's train split)."),
    calibration_size: Optional[int] = CalibrationSize,
    io: Optional[str] = IoType,
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR",
                                       help="Write the models here (default: into the run, or beside the .keras file)."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = typer.Option(None, "--input-range", metavar="LOW,HIGH",
                                              help="For a Keras model not built by edgetl: the values its input "
                                                   "expects for pixels 0 and 255."),
    resize: Optional[str] = Resize,
    max_drop: Optional[float] = MaxDrop,
    min_agreement: Optional[float] = MinAgreement,
    consumers: Optional[str] = Consumers,
    min_score: Optional[float] = MinScore,
    force: bool = Force,
):
    """Convert to TFLite (full-integer int8 and float32 by default), check it, embed metadata, measure parity.
    Exit 1 when a parity gate fails (the models are kept)."""
    from toolchain.commands import quantize as quantize_cmd

    results = quantize_cmd.run(source, modes=list(quantize or []) + list(mode or []) or None, calibration=calibration,
                               calibration_size=calibration_size, io=io, out=out, labels=labels,
                               input_range=input_range, resize=resize, max_drop=max_drop,
                               min_agreement=min_agreement, min_score=min_score, force=force,
                               consumers=_consumers(consumers))
    for r in results.values():
        typer.echo(r["out"])
    failed = quantize_cmd.gate_failures(results)
    if failed:
        from edge_runtime.errors import GateFailed

        reasons = "; ".join(f"{m}: {results[m]['reason']}" for m in failed)
        raise GateFailed(f"parity gate failed for {', '.join(failed)} ({reasons})",
                         hint="the models are kept; calibrate with more photos (--calibration-size), use another "
                              "--quantize mode, or relax --max-drop/--min-agreement")


@app.command(cls=_PlainHelpCommand, short_help="Compare a TFLite model with its Keras model; exit 1 when a gate fails.")
def parity(
    keras_model: Path = typer.Argument(..., metavar="MODEL.keras", show_default=False, help="The Keras model."),
    tflite_model: Path = typer.Argument(..., metavar="MODEL.tflite", show_default=False, help="The TFLite model."),
    data: Optional[Path] = typer.Argument(None, metavar="[DATA_DIR|RUN]", show_default=False,
                                          help="A folder of photos (all of them) or a run (its test split)."),
    max_drop: float = typer.Option(1.0, "--max-drop", metavar="POINTS", show_default=False,
                                   help="Largest accuracy drop allowed, in points (default 1.0)."),
    min_agreement: float = typer.Option(0.97, "--min-agreement", metavar="FRACTION", show_default=False,
                                        help="Smallest top-1 agreement allowed (default 0.97)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = typer.Option(None, "--input-range", metavar="LOW,HIGH",
                                              help="For a Keras model not built by edgetl: the values for pixels 0 and 255."),
    resize: Optional[str] = Resize,
    threads: Optional[int] = Threads,
    consumers: Optional[str] = Consumers,
):
    """Compare a TFLite model with its Keras model on the same photos; exit 1 when a gate fails."""
    from toolchain.cfg import config as config_mod
    from toolchain.commands import parity as parity_cmd

    declared = config_mod.resolve(None, max_drop=max_drop, min_agreement=min_agreement,  # finite, in range
                                  consumers=_consumers(consumers)).consumers
    _check_numbers(threads=threads)

    result = parity_cmd.run(keras_model, tflite_model, data, max_drop=max_drop, min_agreement=min_agreement,
                            labels=labels, input_range=input_range, resize=resize, threads=threads,
                            consumers=declared)
    if as_json:
        from toolchain.rundir.runfolder import finite

        typer.echo(json.dumps(finite(result), allow_nan=False))
    else:
        parity_cmd.print_result(result)
    if not result["passed"]:
        from edge_runtime.errors import GateFailed

        raise GateFailed(f"parity gate failed: {result['reason']}",
                         hint="calibrate with more photos, use another mode, or relax --max-drop/--min-agreement")


@app.command(cls=_PlainHelpCommand, short_help="Delete a run's regenerable bulk (photo cache, stage-1 model, logs).")
def clean(
    run: Path = typer.Argument(..., metavar="RUN", show_default=False, help="A run folder made by edgetl."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    force: bool = typer.Option(False, "--force", help="Delete the cache even when the data folder it was decoded from is gone."),
):
    """Delete a run's regenerable bulk (cache/, stage1.keras, logs/) and print what was freed; results stay."""
    from toolchain.commands import clean as clean_mod
    from toolchain.rundir import runfolder

    if dry_run:
        clean_mod.clean(run, force=force, dry_run=True)
        return
    with runfolder.RunLock(run):  # never under a command that is using the cache
        runfolder.check_existing(run)  # and finish what a killed command left first
        clean_mod.clean(run, force=force, dry_run=False)


# ------------------------------------------------------------------ runtime verbs (no TensorFlow)


def _check_numbers(**values):
    """Numeric flags, checked before anything is opened (so an error names the flag, not the model),
    through the one range table every number edgetl takes goes through (config.RANGES)."""
    from toolchain.cfg.config import check_number

    for name, v in values.items():
        check_number(name, v, "--" + name.replace("_", "-"))


def _check_runtime_flags(top_k=None, threads=None):
    """Flags checked before the model is opened, so an error names the flag, not the model."""
    _check_numbers(top_k=top_k, threads=threads)


def _classifier(model, threads, labels, backend, input_range, resize=None, mode=None, output=None):
    from edge_runtime import choose
    from edge_runtime.classifier import Classifier

    model, threads = choose.resolve(model, mode=mode, threads=threads, backend=backend,
                                    say=lambda m: print(m, file=sys.stderr, flush=True), classifier_class=Classifier)
    clf = Classifier(model, num_threads=threads, labels=labels, backend=backend, input_range=input_range,
                     resize=resize, warn=False, cli=True, output=output)
    for note in clf.notes:
        print(f"warning: {note}", file=sys.stderr)
    return clf


ModelArg = typer.Argument(..., metavar="MODEL", show_default=False,
                          help="A .tflite model, or a run folder: its fastest model that passed parity on this "
                               "device (measured once, then remembered).")
ModeOpt = typer.Option(None, "--mode", metavar="MODE",
                       help="With a run folder: use its int8, float16, dynamic or float32 model instead of the "
                            "fastest.")


@app.command(cls=_PlainHelpCommand, short_help="Classify image files and folders (table, JSON lines or CSV).")
def predict(
    model: Path = ModelArg,
    paths: List[Path] = typer.Argument(..., metavar="PATHS", show_default=False,
                                       help="Image files or folders (recursed)."),
    top_k: int = TopK,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: path,label,score,top_k."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    resize: Optional[str] = typer.Option(None, "--resize", metavar="POLICY", help="Override the model's resize policy."),
    threads: Optional[int] = Threads,
    backend: Optional[str] = Backend,
    mode: Optional[str] = ModeOpt,
    output: Optional[str] = OutputOpt,
):
    """Classify image files; folders are recursed.

    Problems are listed on stderr as they happen and the run goes on. Exit codes: 0 when at least one file
    was classified and the only files left out are not images at all (a labels .txt, a named pipe, a
    socket: listed as "skipped"); 2 when nothing was classified, or when a photo could not be (image
    content or an image name that does not decode, an unreadable file or folder: listed as "failed").
    """
    from toolchain.commands import runtime as runtime_cmds

    if as_json and as_csv:
        raise EdgetlError("--json and --csv are exclusive", hint="pick one output format")
    _check_runtime_flags(top_k, threads)
    clf = _classifier(model, threads, labels, backend, input_range, resize, mode, output)
    fmt = "json" if as_json else "csv" if as_csv else "table"
    with runtime_cmds.pipe_closed_is_the_end():
        runtime_cmds.predict(clf, paths, top_k, fmt)


@app.command(cls=_PlainHelpCommand, short_help="Classify a camera, video file or stream: a window, or JSON lines.")
def camera(
    model: Path = ModelArg,
    source: str = typer.Option("0", "--source", metavar="SOURCE", show_default=False,
                               help="Camera index, video file or stream URL (default 0, the first camera)."),
    headless: bool = typer.Option(False, "--headless", help="No window: print one JSON line per frame."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", metavar="N", help="Stop after N frames."),
    smooth: int = typer.Option(1, "--smooth", metavar="N", show_default=False,
                               help="Average the scores over the last N frames (default 1)."),
    top_k: int = TopK,
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    threads: Optional[int] = Threads,
    backend: Optional[str] = Backend,
    mode: Optional[str] = ModeOpt,
    output: Optional[str] = OutputOpt,
):
    """Classify a live camera, a video file or a stream; a window with top-k and FPS, or JSON lines."""
    from edge_runtime import camera as cam

    from toolchain.commands import runtime as runtime_cmds

    _check_numbers(smooth=smooth, max_frames=max_frames, top_k=top_k, threads=threads)
    clf = _classifier(model, threads, labels, backend, input_range, mode=mode, output=output)
    with runtime_cmds.pipe_closed_is_the_end():
        summary = cam.run(clf, source, headless=headless, max_frames=max_frames, smooth=smooth, top_k=top_k)
    s = summary.as_dict()
    print(f"{s['frames']} frames in {s['seconds']:.1f}s: {s['mean_fps']:.1f} FPS mean, classify p50 "
          f"{s['latency_ms_p50']:.2f} ms, loop p50 {s['loop_ms_p50']:.2f} ms ({s['ended']})", file=sys.stderr)


@app.command(cls=_PlainHelpCommand, short_help="Latency on this device; for a run, which model is fastest.")
def bench(
    model: Path = typer.Argument(..., metavar="MODEL", show_default=False,
                                 help="A .tflite model, or a run folder: every model of it that passed parity, "
                                      "ranked, and the choice remembered for this device."),
    threads: Optional[str] = typer.Option(None, "--threads", metavar="N,N...", show_default=False,
                                          help="Thread counts to measure (default 1,2 for a model; for a run 1, 2, "
                                               "4... up to the cores)."),
    runs: int = typer.Option(200, "--runs", metavar="N", show_default=False,
                             help="Timed runs per thread count (default 200)."),
    warmup: int = typer.Option(20, "--warmup", metavar="N", show_default=False, help="Untimed runs first (default 20)."),
    image: Optional[Path] = typer.Option(None, "--image", metavar="PHOTO",
                                         help="Benchmark on this photo (default a 640x480 test frame)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    backend: Optional[str] = Backend,
    output: Optional[str] = OutputOpt,
):
    """Latency (p50/p90/p99), FPS, size, peak memory and backend, per thread count. Given a run folder:
    every model of the run that passed its parity gate, measured in one interleaved loop at each thread
    count, ranked, and the fastest remembered as this device's choice (predict and camera use it)."""
    from toolchain.commands import runtime as runtime_cmds

    _check_numbers(runs=runs, warmup=warmup)
    for t in (threads or "").split(","):
        if t.strip().isascii() and t.strip().isdigit():
            _check_numbers(threads=int(t))
    with runtime_cmds.pipe_closed_is_the_end():
        if model.is_dir():
            if output is not None:
                raise EdgetlError("--output chooses a head of one .tflite model; a run's models have one output",
                                  hint="pass the .tflite file with --output, or drop --output")
            runtime_cmds.bench_run(model, threads, runs, warmup, image, as_json, backend)
        else:
            runtime_cmds.bench(model, threads or "1,2", runs, warmup, image, as_json, labels, input_range, backend,
                               output)


InfoModelArg = typer.Argument(..., metavar="MODEL", show_default=False,
                              help="A .tflite model, or a run folder: its models with their parity results, and "
                                   "the one this device uses.")


@app.command(cls=_PlainHelpCommand, short_help="A model's I/O, operators and metadata; a run's models and choice.")
def info(
    model: Path = InfoModelArg,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    backend: Optional[str] = Backend,
):
    """Inputs, outputs, quantization, operators, precision and the embedded metadata of a model; for a run
    folder, its models (size, precision, parity) and which one predict and camera use on this device."""
    from toolchain.commands import runtime as runtime_cmds

    with runtime_cmds.pipe_closed_is_the_end():
        if model.is_dir():
            runtime_cmds.info_run(model, as_json, backend)
        else:
            runtime_cmds.info(model, as_json, backend)


# ------------------------------------------------------------------ entry point


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _click_exceptions():
    """Click's exceptions: vendored by Typer >= 0.2x, the click package before."""
    try:
        from typer._click import exceptions as ex
    except ImportError:  # older Typer (Python < 3.11)
        from click import exceptions as ex
    return ex


def _abort_types():
    types = []
    for mod in ("typer.exceptions", "click.exceptions"):
        try:
            m = __import__(mod, fromlist=["Abort"])
            types.append(m.Abort)
        except (ImportError, AttributeError):
            pass
    return tuple(types) or (KeyboardInterrupt,)


OS_HINTS = {
    "ENOSPC": "free some space on that disk, or write to another one (--out)",
    "EDQUOT": "free some space (disk quota), or write to another disk (--out)",
    "EROFS": "that filesystem is read-only: choose a folder you can write (--out)",
    "EACCES": "check the permissions, or choose a folder you can write (--out)",
    "EPERM": "check the permissions, or choose a folder you can write (--out)",
    "ENAMETOOLONG": "shorten the file or folder name",
    "EISDIR": "pass a file, not a folder",
    "ENOTDIR": "a part of the path is a file, not a folder",
}


def _fail(message: str, hint: str | None, code: int):
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)


def main(argv=None):
    """The `edgetl` command. ``argv`` given (a caller in Python): exits by SystemExit, as any Typer app.
    ``argv`` None (the `edgetl` command itself): once the command is over and TensorFlow was loaded, the
    process ends without the interpreter's teardown of TensorFlow's modules (0.8 to 1.2 s of every build,
    measured, spent after the run was committed): output flushed, exit handlers run, then os._exit."""
    if argv is not None:
        return _main(argv)
    try:
        _main(None)
        code = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, int) and "tensorflow" in sys.modules:
        import atexit
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter would run (logging, scratch folders)
        os._exit(code)
    sys.exit(code)


def _main(argv=None):
    import errno
    import warnings

    warnings.showwarning = _one_line_warning
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    ex = _click_exceptions()
    no_args_help = getattr(ex, "NoArgsIsHelpError", None)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="edgetl", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except EdgetlError as e:
        _fail(e.message, e.hint, e.exit_code)
    except ex.UsageError as e:
        if no_args_help is not None and isinstance(e, no_args_help):
            # bare `edgetl`: a request for help (as `edgetl -h`): the help on stdout, exit 0
            typer.echo(e.ctx.get_help())
            sys.exit(0)
        where = e.ctx.command_path if getattr(e, "ctx", None) is not None else "edgetl"
        msg = " ".join(e.format_message().split())
        _fail(msg[0].lower() + msg[1:] if msg else "bad usage", f"see `{where} --help`", 2)
    except ex.ClickException as e:
        _fail(e.format_message(), "see `edgetl --help`", 2)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            sys.exit(0)
        from toolchain.rundir.schema import user_path

        name = errno.errorcode.get(e.errno or 0, "")
        where = user_path(e.filename) if e.filename is not None else ""  # the run, not its staged copy
        _fail(f"{where}: {e.strerror or e}" if where else f"{e.strerror or e}",
              OS_HINTS.get(name, "check the path and that the disk is writable"), 2)
    except ImportError as e:
        # OpenCV is not a pip requirement on 32-bit ARM (no wheel there): it may be missing
        if (getattr(e, "name", None) or "").split(".")[0] != "cv2":
            raise
        what = "is not installed" if isinstance(e, ModuleNotFoundError) and e.name == "cv2" else f"cannot load ({e})"
        _fail(f"OpenCV (the cv2 module) {what}",
              "pip install opencv-python-headless   (Raspberry Pi OS 32-bit: sudo apt install python3-opencv, "
              "and make the venv with --system-site-packages)", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except _abort_types():
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
