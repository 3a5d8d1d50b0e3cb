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

from edge_runtime.errors import EdgetlError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train a MobileNetV2 classifier on your photos, quantize it to TFLite, prove parity, run it on the edge.",
)

# ------------------------------------------------------------------ shared options
# Training options default to None: "not given", so --config and a run's recorded config can apply.
Alpha = typer.Option(None, "--alpha", help="MobileNetV2 width: 0.35, 0.5, 0.75, 1.0 (default), 1.3, 1.4.")
ImageSize = typer.Option(None, "--image-size", help="Input size: 96, 128, 160 (default), 192, 224.")
Weights = typer.Option(None, "--weights", help="imagenet (default), none, or PATH to a no-top .h5.")
HeadUnits = typer.Option(None, "--head-units", help="Units of the head's hidden Dense layer (default 128).")
Dropout = typer.Option(None, "--dropout", help="Dropout before the head (default 0.2).")
Epochs = typer.Option(None, "--epochs", help="Stage-1 epochs (default 10; early stopping on val loss).")
BatchSize = typer.Option(None, "--batch-size", help="Batch size (default 32).")
LearningRate = typer.Option(None, "--learning-rate", help="Stage-1 Adam learning rate (default 1e-3).")
Augment = typer.Option(None, "--augment/--no-augment", help="Train on augmented views too (flip, crop, light).")
FineTuneFrom = typer.Option(None, "--fine-tune-from", help="First base layer to unfreeze: index or name (default 100).")
FineTuneLR = typer.Option(None, "--fine-tune-lr", help="Stage-2 Adam learning rate (default 1e-5).")
FineTuneEpochs = typer.Option(None, "--fine-tune-epochs", help="Stage-2 epochs (default 5; 0 skips stage 2).")
Split = typer.Option(None, "--split", help="train,val,test fractions when DATA_DIR has no split (default 0.8,0.1,0.1).")
Seed = typer.Option(None, "--seed", help="Seed for the split, initialisation and shuffling (default 42).")
Resize = typer.Option(None, "--resize", help="Resize policy: crop (default), squash or pad.")
Strict = typer.Option(None, "--strict/--no-strict", help="Unreadable files are an error instead of skipped.")
ConfigFile = typer.Option(None, "--config", help="TOML file of options (flags override it).")
Force = typer.Option(False, "--force", help="Overwrite an existing run folder / artifacts.")
Quantize = typer.Option(None, "--quantize", help="TFLite mode(s) to produce: int8 (default), float16, dynamic, float32. Repeatable.")
CalibrationSize = typer.Option(None, "--calibration-size", help="Calibration photos for int8 (default 300, seeded).")
IoType = typer.Option(None, "--io", help="I/O type of int8 models: uint8 (default), int8, float32.")
MaxDrop = typer.Option(None, "--max-drop", help="Parity gate: largest accuracy drop in points (default 1.0).")
MinAgreement = typer.Option(None, "--min-agreement", help="Parity gate: smallest top-1 agreement (default 0.97).")
Threads = typer.Option(None, "--threads", help="Interpreter threads (default: all cores).")
Backend = typer.Option(None, "--backend", help="ai_edge_litert, tflite_runtime or tensorflow (default: first installed).")
Labels = typer.Option(None, "--labels", help="Label file (one per line) for a model without metadata.")
InputRange = typer.Option(None, "--input-range", help="LOW,HIGH values for pixels 0 and 255, for a float model without metadata.")
TopK = typer.Option(3, "--top-k", help="How many classes to report.")


def _split(v):
    if v is None:
        return None
    try:
        return [float(x) for x in v.split(",")]
    except ValueError:
        raise EdgetlError(f"--split {v!r} is not a list of fractions", hint="e.g. --split 0.8,0.1,0.1") from None


def _train_flags(**kw) -> dict:
    kw["split"] = _split(kw.get("split"))
    return kw


def _default_out(data_dir: Path) -> Path:
    return Path("runs") / (data_dir.resolve().name or "run")


# ------------------------------------------------------------------ training verbs


@app.command()
def build(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class, or train/ val/ [test/]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<DATA_DIR name>)."),
    force: bool = Force,
    config: Optional[Path] = ConfigFile,
    alpha: Optional[float] = Alpha,
    image_size: Optional[int] = ImageSize,
    weights: Optional[str] = Weights,
    head_units: Optional[int] = HeadUnits,
    dropout: Optional[float] = Dropout,
    epochs: Optional[int] = Epochs,
    batch_size: Optional[int] = BatchSize,
    learning_rate: Optional[float] = LearningRate,
    augment: Optional[bool] = Augment,
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
    keep_cache: bool = typer.Option(False, "--keep-cache", help="Keep RUN/cache/ (the decoded photos) after a successful build; later commands rebuild it when needed."),
):
    """Everything: validate and split the photos, train (2 stages), convert to TFLite, check parity, report."""
    from . import config as config_mod
    from . import pipeline

    flags = _train_flags(alpha=alpha, image_size=image_size, weights=weights, head_units=head_units, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=augment,
                         fine_tune_from=fine_tune_from, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
                         split=split, seed=seed, resize=resize, strict=strict, quantize=quantize,
                         calibration_size=calibration_size, io=io, max_drop=max_drop, min_agreement=min_agreement)
    cfg = config_mod.resolve(config, **flags)
    out = out or _default_out(data_dir)
    pipeline.do_build(data_dir, out, cfg, force, keep_cache=keep_cache)
    typer.echo(str(out))


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder per class, or train/ val/ [test/]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<DATA_DIR name>)."),
    force: bool = Force,
    config: Optional[Path] = ConfigFile,
    alpha: Optional[float] = Alpha,
    image_size: Optional[int] = ImageSize,
    weights: Optional[str] = Weights,
    head_units: Optional[int] = HeadUnits,
    dropout: Optional[float] = Dropout,
    epochs: Optional[int] = Epochs,
    batch_size: Optional[int] = BatchSize,
    learning_rate: Optional[float] = LearningRate,
    augment: Optional[bool] = Augment,
    split: Optional[str] = Split,
    seed: Optional[int] = Seed,
    resize: Optional[str] = Resize,
    strict: Optional[bool] = Strict,
):
    """Stage 1: split the photos and train the head on cached features of the frozen base."""
    from . import config as config_mod
    from . import pipeline

    flags = _train_flags(alpha=alpha, image_size=image_size, weights=weights, head_units=head_units, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=augment,
                         split=split, seed=seed, resize=resize, strict=strict)
    cfg = config_mod.resolve(config, **flags)
    out = out or _default_out(data_dir)
    pipeline.do_train(data_dir, out, cfg, force)
    typer.echo(str(out))


@app.command()
def finetune(
    run: Path = typer.Argument(..., help="A run folder made by `edgetl train`."),
    force: bool = typer.Option(False, "--force", help="Fine-tune again a run that is already fine-tuned."),
    config: Optional[Path] = ConfigFile,
    fine_tune_from: Optional[str] = FineTuneFrom,
    fine_tune_lr: Optional[float] = FineTuneLR,
    fine_tune_epochs: Optional[int] = FineTuneEpochs,
    batch_size: Optional[int] = BatchSize,
    augment: Optional[bool] = Augment,
):
    """Stage 2: unfreeze the top of the base and train with a small learning rate (BatchNorm frozen)."""
    from . import pipeline

    flags = dict(fine_tune_from=fine_tune_from, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
                 batch_size=batch_size, augment=augment)
    pipeline.do_finetune(run, flags, force, config_file=config)
    typer.echo(str(run))


@app.command()
def quantize(
    source: Path = typer.Argument(..., help="A run folder, or a Keras model (.keras)."),
    mode: Optional[List[str]] = typer.Option(None, "--mode", help="int8 (default), float16, dynamic, float32. Repeatable."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration photos (default: the run's train split)."),
    calibration_size: Optional[int] = CalibrationSize,
    io: Optional[str] = IoType,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for a .keras source (default: beside it)."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = typer.Option(None, "--input-range", help="For a Keras model not built by edgetl: LOW,HIGH its input expects for pixels 0 and 255."),
    resize: Optional[str] = Resize,
    max_drop: Optional[float] = MaxDrop,
    min_agreement: Optional[float] = MinAgreement,
    force: bool = Force,
):
    """Convert to TFLite (int8 full-integer by default), check it, embed metadata, measure parity."""
    from . import quantize_cmd

    results = quantize_cmd.run(source, modes=mode, calibration=calibration, calibration_size=calibration_size, io=io,
                               out=out, labels=labels, input_range=input_range, resize=resize, max_drop=max_drop,
                               min_agreement=min_agreement, force=force)
    for r in results.values():
        typer.echo(r["out"])


@app.command()
def parity(
    keras_model: Path = typer.Argument(..., help="The Keras model (.keras)."),
    tflite_model: Path = typer.Argument(..., help="The TFLite model."),
    data: Optional[Path] = typer.Argument(None, help="DATA_DIR (every photo in it) or RUN (its test split)."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Largest accuracy drop allowed, in points."),
    min_agreement: float = typer.Option(0.97, "--min-agreement", help="Smallest top-1 agreement allowed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = typer.Option(None, "--input-range", help="For a Keras model not built by edgetl: LOW,HIGH for pixels 0 and 255."),
    resize: Optional[str] = Resize,
    threads: Optional[int] = Threads,
):
    """Compare a TFLite model with its Keras model on the same photos; exit 1 when a gate fails."""
    from . import parity_cmd

    result = parity_cmd.run(keras_model, tflite_model, data, max_drop=max_drop, min_agreement=min_agreement,
                            labels=labels, input_range=input_range, resize=resize, threads=threads)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        parity_cmd.print_result(result)
    if not result["passed"]:
        from edge_runtime.errors import GateFailed

        raise GateFailed(f"parity gate failed: {result['reason']}",
                         hint="calibrate with more photos, use another mode, or relax --max-drop/--min-agreement")


@app.command()
def clean(
    run: Path = typer.Argument(..., help="A run folder made by edgetl."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    force: bool = typer.Option(False, "--force", help="Delete the cache even when the data folder it was decoded from is gone."),
):
    """Delete a run's regenerable bulk (cache/, stage1.keras, logs/) and print what was freed; results stay."""
    from . import clean as clean_mod

    clean_mod.clean(run, force=force, dry_run=dry_run)


# ------------------------------------------------------------------ runtime verbs (no TensorFlow)


def _classifier(model, threads, labels, backend, input_range, resize=None):
    from edge_runtime.classifier import Classifier

    clf = Classifier(model, num_threads=threads, labels=labels, backend=backend, input_range=input_range,
                     resize=resize, warn=False)
    for note in clf.notes:
        print(f"warning: {note}", file=sys.stderr)
    return clf


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A .tflite model."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders (recursed)."),
    top_k: int = TopK,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: path,label,score,top_k."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    resize: Optional[str] = typer.Option(None, "--resize", help="Override the model's resize policy."),
    threads: Optional[int] = Threads,
    backend: Optional[str] = Backend,
):
    """Classify image files. Unreadable files are reported one by one and the run goes on (exit 2 at the end)."""
    from . import runtime_cmds

    if as_json and as_csv:
        raise EdgetlError("--json and --csv are exclusive", hint="pick one output format")
    clf = _classifier(model, threads, labels, backend, input_range, resize)
    fmt = "json" if as_json else "csv" if as_csv else "table"
    failed, total = runtime_cmds.predict(clf, paths, top_k, fmt)
    if failed:
        raise EdgetlError(f"{failed} of {total} file(s) could not be classified (listed above)",
                          hint="fix or remove those files; the others were classified")


@app.command()
def camera(
    model: Path = typer.Argument(..., help="A .tflite model."),
    source: str = typer.Option("0", "--source", help="Camera index (0), video file, or stream URL."),
    headless: bool = typer.Option(False, "--headless", help="No window: print one JSON line per frame."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after N frames."),
    smooth: int = typer.Option(1, "--smooth", help="Average the scores over the last N frames."),
    top_k: int = TopK,
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    threads: Optional[int] = Threads,
    backend: Optional[str] = Backend,
):
    """Classify a live camera, a video file or a stream; a window with top-k and FPS, or JSON lines."""
    from edge_runtime import camera as cam

    if smooth < 1 or (max_frames is not None and max_frames < 1):
        raise EdgetlError("--smooth and --max-frames must be at least 1", hint="e.g. --smooth 5 --max-frames 100")
    clf = _classifier(model, threads, labels, backend, input_range)
    summary = cam.run(clf, source, headless=headless, max_frames=max_frames, smooth=smooth, top_k=top_k)
    s = summary.as_dict()
    print(f"{s['frames']} frames in {s['seconds']:.1f}s: {s['mean_fps']:.1f} FPS mean, classify p50 "
          f"{s['latency_ms_p50']:.2f} ms, loop p50 {s['loop_ms_p50']:.2f} ms ({s['ended']})", file=sys.stderr)


@app.command()
def bench(
    model: Path = typer.Argument(..., help="A .tflite model."),
    threads: str = typer.Option("1,2", "--threads", help="Thread counts to measure, e.g. 1,2,4."),
    runs: int = typer.Option(200, "--runs", help="Timed runs per thread count."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed runs first."),
    image: Optional[Path] = typer.Option(None, "--image", help="Benchmark on this photo (default: a 640x480 test frame)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    labels: Optional[Path] = Labels,
    input_range: Optional[str] = InputRange,
    backend: Optional[str] = Backend,
):
    """Latency (p50/p90/p99), FPS, size, peak memory and backend, per thread count."""
    from . import runtime_cmds

    runtime_cmds.bench(model, threads, runs, warmup, image, as_json, labels, input_range, backend)


@app.command()
def info(
    model: Path = typer.Argument(..., help="A .tflite model."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    backend: Optional[str] = Backend,
):
    """Inputs, outputs, quantization, operators, precision and the embedded metadata of a model."""
    from . import runtime_cmds

    runtime_cmds.info(model, as_json, backend)


# ------------------------------------------------------------------ entry point


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        app(args=argv, prog_name="edgetl")
    except EdgetlError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
