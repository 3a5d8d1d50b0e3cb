"""The human report: RUN/report.md with tables and PNG plots (training curves, confusion matrices of the
Keras model and of every TFLite model, size against accuracy against latency)."""

from __future__ import annotations

from pathlib import Path

from . import runfolder, ui


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    runfolder.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    _plt().close(fig)


def plot_curves(run: Path, rep: dict):
    hist = rep.get("history") or {}
    h1, h2 = hist.get("feature_extraction") or {}, hist.get("fine_tune") or {}
    if not h1:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    n1 = len(h1.get("loss", []))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            y1 = h1.get(prefix + key, [])
            y2 = h2.get(prefix + key, [])
            xs = list(range(1, len(y1) + len(y2) + 1))
            ax.plot(xs, list(y1) + list(y2), style, marker="o", ms=3, label=("val " if prefix else "train ") + key)
        if h2:
            ax.axvline(n1 + 0.5, color="grey", lw=1)
            ax.text(n1 + 0.6, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch (stage 1, then stage 2)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, run / "plots" / "training_curves.png")


def plot_confusion(path: Path, cm, classes, title: str):
    import numpy as np

    plt = _plt()
    cm = np.asarray(cm)
    n = len(classes)
    size = max(3.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    vmax = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > vmax / 2 else "black")
    _save(fig, path)


def plot_tradeoff(run: Path, rep: dict):
    """Accuracy (over the parity photos) against size, and against p50 latency at 1 thread."""
    tfl = {m: r for m, r in (rep.get("tflite") or {}).items() if r.get("tflite_accuracy") is not None}
    if not tfl:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    k_acc = next(iter(tfl.values())).get("keras_accuracy")
    for ax, key, label in ((axes[0], "size", "model size (MB)"), (axes[1], "latency", "p50 latency, 1 thread (ms)")):
        for i, (mode, r) in enumerate(tfl.items()):
            x = r["size_bytes"] / 1e6 if key == "size" else (r.get("latency_ms") or {}).get("1", 0.0)
            ax.scatter(x, r["tflite_accuracy"], s=50, zorder=3)
            ax.annotate(mode, (x, r["tflite_accuracy"]), fontsize=8, zorder=4,
                        xytext=((6, 8), (6, -12), (-44, 8), (-44, -12))[i % 4], textcoords="offset points")
        if k_acc is not None:
            ax.axhline(k_acc, color="grey", ls="--", lw=1, label="Keras model")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy on {next(iter(tfl.values())).get('n')} photos")
    fig.suptitle("TFLite models: accuracy against size and latency (this machine)", fontsize=10)
    _save(fig, run / "plots" / "size_accuracy_latency.png")


def _fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write(run: Path, rep: dict, name: str | None = None):
    """Write RUN/report.md (and its plots) from report.json's content. ``name``: the run's name when
    ``run`` is the staged copy being written."""
    run = Path(run)
    classes = rep.get("classes") or []
    k = rep.get("keras") or {}
    if k.get("confusion"):
        plot_confusion(run / "plots" / "confusion_keras.png", k["confusion"], classes, "Keras model (test split)")
    for mode, r in (rep.get("tflite") or {}).items():
        if r.get("confusion"):
            plot_confusion(run / "plots" / f"confusion_{mode}.png", r["confusion"], classes, f"TFLite {mode} (test split)")
    plot_curves(run, rep)
    plot_tradeoff(run, rep)
    cfg = rep.get("config") or {}
    lines = [f"# edgetl run report: {name or run.name}", ""]
    lines += [f"- data: `{rep.get('data_dir')}` ({len(classes)} classes)",
              f"- model: MobileNetV2 alpha {cfg.get('alpha')}, {cfg.get('image_size')} px, weights "
              f"{(rep.get('weights') or {}).get('source')}, resize `{cfg.get('resize')}`",
              f"- edgetl {rep.get('edgetl_version')}, created {rep.get('created')}, status **{rep.get('status')}**",
              ""]
    counts = rep.get("counts") or {}
    if counts:
        splits = list(counts)
        lines += ["## Data", "", "| class | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |")
        lines.append("")
        if rep.get("skipped"):
            lines += [f"Skipped {len(rep['skipped'])} unreadable file(s):", ""]
            lines += [f"- `{s['path']}`: {s['reason']}" for s in rep["skipped"][:50]]
            lines.append("")
        for n in rep.get("notes") or []:
            lines.append(f"> note: {n}")
        lines.append("")
    st = rep.get("stages") or {}
    if st:
        lines += ["## Training", "", "| stage | epochs | seconds | val accuracy | kept |", "|---|---|---|---|---|"]
        fe = st.get("feature_extraction") or {}
        ft = st.get("fine_tune") or {}
        lines.append(f"| feature extraction (cached features) | {fe.get('epochs')} | {fe.get('seconds')} | "
                     f"{_fmt(fe.get('val_accuracy'))} | |")
        if ft:
            lines.append(f"| fine-tune from layer {ft.get('from_layer')} ({ft.get('from_layer_name', '')}) | "
                         f"{ft.get('epochs')} | {ft.get('seconds')} | {_fmt(ft.get('val_accuracy'))} | {ft.get('kept')} |")
        lines += ["", "![training curves](plots/training_curves.png)", ""]
    if k:
        lines += ["## Keras model", "",
                  f"Test accuracy **{_fmt(k.get('test_accuracy'))}** on {k.get('n')} photos "
                  f"({k.get('test_split')} split); validation accuracy {_fmt(k.get('val_accuracy'))}.", "",
                  "| class | precision | recall | support |", "|---|---|---|---|"]
        for c, m in (k.get("per_class") or {}).items():
            lines.append(f"| {c} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {m['support']} |")
        lines += ["", "![confusion keras](plots/confusion_keras.png)", ""]
    tfl = rep.get("tflite") or {}
    if tfl:
        first = next(iter(tfl.values()))
        lines += ["## TFLite models", "",
                  f"Parity (drop, agreement, KL) is measured against the Keras model on {first.get('parity_data')}; "
                  "test accuracy on the test split alone.", "",
                  "| mode | size (KB) | full-integer | test acc | drop (pt) | agreement | KL mean | p50 ms (1 thr) "
                  "| p50 ms (2 thr) | convert s | gate |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, r in tfl.items():
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {mode} | {r['size_bytes'] / 1024:.0f} | {r.get('full_integer')} | {_fmt(r.get('test_accuracy'))} | "
                f"{_fmt(r.get('accuracy_drop_pt'), 2)} | {_fmt(r.get('agreement'))} | {_fmt(r.get('kl_mean'), 5)} | "
                f"{_fmt(lat.get('1'), 2)} | {_fmt(lat.get('2'), 2)} | {_fmt(r.get('convert_seconds'), 1)} | "
                f"{'pass' if r.get('passed') else 'FAIL: ' + str(r.get('reason'))} |")
        lines += ["", "Latency is measured on this machine with the runtime's Classifier "
                      f"({(next(iter(tfl.values())).get('backend'))}); it differs on other CPUs "
                      "(int8 pays off most on ARM cores and accelerators).", "",
                  "![size accuracy latency](plots/size_accuracy_latency.png)", ""]
        lines += _mediapipe_lines(tfl, cfg)
        for mode in tfl:
            if (run / "plots" / f"confusion_{mode}.png").is_file():
                lines.append(f"![confusion {mode}](plots/confusion_{mode}.png)")
        lines.append("")
    if rep.get("timing"):
        lines += [f"Total time: {rep['timing'].get('total_seconds')} s", ""]
    runfolder.write_text(run / "report.md", "\n".join(lines))


def print_summary(rep: dict):
    k = rep.get("keras") or {}
    ui.info("")
    ui.info(f"Keras model: test accuracy {_fmt(k.get('test_accuracy'))} on {k.get('n')} photos "
            f"({k.get('test_split')} split)")
    tfl = rep.get("tflite") or {}
    if tfl:
        rows = []
        for mode, r in tfl.items():
            lat = r.get("latency_ms") or {}
            rows.append([mode, f"{r['size_bytes'] / 1024:.0f} KB", _fmt(r.get("test_accuracy")),
                         _fmt(r.get("accuracy_drop_pt"), 2), _fmt(r.get("agreement")), _fmt(lat.get("1"), 2),
                         _fmt(lat.get("2"), 2), "pass" if r.get("passed") else "FAIL"])
        ui.info(ui.table(rows, ["model", "size", "test acc", "drop pt", "agreement", "p50 ms 1t", "p50 ms 2t", "gate"]))
        ui.info(f"(drop and agreement over {next(iter(tfl.values())).get('parity_data')})")
    if rep.get("timing"):
        ui.info(f"total time {rep['timing']['total_seconds']} s")


# ---- MediaPipe agreement (one block: the standard TFLite metadata carries no resize policy)
def _mediapipe_lines(tfl: dict, cfg: dict) -> list:
    figs = {m: r for m, r in tfl.items() if r.get("mediapipe_squash_agreement") is not None}
    if not figs:
        return []
    parts = ", ".join(f"{m} {r['mediapipe_squash_agreement']:.3f}" for m, r in figs.items())
    n = next(iter(figs.values())).get("mediapipe_squash_n")
    return [f"MediaPipe fits the whole frame (squash, bilinear) whatever the training policy: estimated top-1 "
            f"agreement of MediaPipe with edge_runtime (`{cfg.get('resize')}`) on {n} parity photos: {parts}.", ""]
