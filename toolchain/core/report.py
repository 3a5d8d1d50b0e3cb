"""The human report: RUN/report.md with tables and PNG plots (training curves, confusion matrices of the
Keras model and of every TFLite model, size against accuracy against latency), and report.json's
``timing`` (the seconds of every step run on the run folder, and their sum).

Sizes are in MB (10^6 bytes) everywhere in report.md and the summary."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from toolchain.rundir import runfolder
from toolchain import ui
from toolchain.core import metrics
from toolchain.cfg import config
from toolchain.core import diagnose
from toolchain.core.data import printable


def mb(nbytes) -> str:
    """``1234567`` -> ``"1.23"`` (MB, 10^6 bytes: the one size unit of the report)."""
    return f"{nbytes / 1e6:.2f}"


def add_timing(run: Path, step: str, seconds: float, **extra) -> dict:
    """Record that ``step`` (train, finetune, quantize) took ``seconds`` on this run. report.json's
    ``timing`` keeps every step in order and ``total_seconds``, their sum, so the total stays true when a
    later command (e.g. `edgetl quantize`) adds work to the run. Returns the updated report."""
    rep = runfolder.read_report(run)
    t = rep.get("timing") if isinstance(rep.get("timing"), dict) else {}
    steps = [dict(x) for x in (t.get("steps") or []) if isinstance(x, dict)]
    if not steps and t.get("total_seconds") is not None:  # a report written before per-step timing
        steps = [{"step": "earlier steps", "seconds": float(t["total_seconds"])}]
    steps.append({"step": step, "seconds": round(float(seconds), 1), **extra,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    timing = {"steps": steps, "total_seconds": round(sum(float(x.get("seconds") or 0) for x in steps), 1)}
    return runfolder.update_report(run, timing=timing)


def _step_name(x: dict) -> str:
    modes = x.get("modes")
    return f"{x.get('step')} ({', '.join(modes)})" if modes else str(x.get("step"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        runfolder.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    finally:
        _plt().close(fig)  # also when the disk is full


def training_outcome(rep: dict) -> dict:
    """What each training stage did, from report.json: epochs run and planned, the epoch whose weights
    were kept (1-based, within the stage), whether early stopping ended it, and whether stage 2 was kept.
    Runs recorded before ``kept_epoch`` existed fall back on the config (early stopping restores the epoch
    of lowest val loss; without it the last epoch is kept)."""
    import numpy as np

    hist = rep.get("history") or {}
    st = rep.get("stages") or {}
    cfg = rep.get("config") or {}
    out = {}
    for key, planned_key, patience_key in (("feature_extraction", "epochs", "patience"),
                                           ("fine_tune", "fine_tune_epochs", "fine_tune_patience")):
        sec = st.get(key)
        if not sec:
            continue
        h = hist.get(key) or {}
        ran = len(h.get("loss") or [])
        planned = cfg.get(planned_key) or ran
        kept = sec.get("kept_epoch")
        if kept is None and ran:
            vl = h.get("val_loss") or []
            kept = int(np.argmin(vl)) + 1 if (cfg.get(patience_key) or 0) > 0 and vl else ran
        stopped = sec.get("stopped_early")
        if stopped is None:
            stopped = ran < planned
        out[key] = {"ran": ran, "planned": planned, "kept_epoch": kept, "stopped_early": bool(stopped),
                    "restored": bool(ran and kept and kept < ran)}
    ft = out.get("fine_tune")
    if ft is not None:
        sec = st["fine_tune"]
        ft["discarded"] = sec.get("kept") == "feature_extraction"
        ft["reason"] = sec.get("reason")
    return out


def outcome_lines(rep: dict) -> list:
    """One sentence per stage: epochs, early stopping, which weights were kept (plot caption and report.md)."""
    o = training_outcome(rep)
    lines = []
    fe, ft = o.get("feature_extraction"), o.get("fine_tune")
    if fe and fe["ran"]:
        s = f"stage 1: {fe['ran']} of {fe['planned']} epochs"
        s += " (early stopping)" if fe["stopped_early"] else ""
        s += f"; weights of epoch {fe['kept_epoch']} kept"
        s += " (lowest val loss)" if fe["restored"] or fe["stopped_early"] else ""
        if ft and ft["discarded"] and ft["ran"]:
            s += " and used as the final model"
        lines.append(s)
    if ft:
        if not ft["ran"]:
            lines.append(f"stage 2: skipped ({ft.get('reason') or 'no epochs'})")
        else:
            s = f"stage 2: {ft['ran']} of {ft['planned']} epochs" + (" (early stopping)" if ft["stopped_early"] else "")
            if ft["discarded"]:
                s += "; discarded (validation did not improve on stage 1): the stage-1 weights are kept"
            else:
                s += f"; weights of stage-2 epoch {ft['kept_epoch']} kept"
                s += " (lowest val loss)" if ft["restored"] or ft["stopped_early"] else ""
            lines.append(s)
    return lines


def curves_figure(rep: dict):
    """The training-curves figure (None without a stage-1 history): loss and accuracy per epoch over both
    stages, the kept epoch marked, a discarded stage 2 greyed out, and a caption saying what happened.

    Stage 2 starts from the weights of stage 1's kept epoch (early stopping restores them), not from its
    last epoch: its curve is drawn apart, linked by a dotted line to the kept stage-1 epoch, which is
    marked too. The legend sits above both plots (never over a curve); an accuracy axis ends at 1.0."""
    hist = rep.get("history") or {}
    h1, h2 = hist.get("feature_extraction") or {}, hist.get("fine_tune") or {}
    if not h1:
        return None
    plt = _plt()
    o = training_outcome(rep)
    fe, ft = o.get("feature_extraction") or {}, o.get("fine_tune") or {}
    n1 = len(h1.get("loss", []))
    n2 = len(h2.get("loss", []))
    discarded = bool(ft.get("discarded")) or not n2
    k1 = fe.get("kept_epoch") or n1
    kept_x = k1 if discarded else n1 + (ft.get("kept_epoch") or n2)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    legend = {}  # label -> handle, for the one legend of the figure
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style, color, name in (("", "-", "C0", "train"), ("val_", "--", "C1", "validation")):
            y1, y2 = list(h1.get(prefix + key, [])), list(h2.get(prefix + key, []))
            line = ax.plot(range(1, len(y1) + 1), y1, style, marker="o", ms=3, color=color, clip_on=False,
                           gid=f"stage1-{prefix}{key}")[0]
            legend.setdefault(name, line)
            if y2:
                ax.plot(range(n1 + 1, n1 + len(y2) + 1), y2, style, marker="o", ms=3, color=color, clip_on=False,
                        gid=f"stage2-{prefix}{key}")
                if 1 <= k1 <= len(y1):  # where stage 2 starts from: the kept stage-1 weights
                    link = ax.plot([k1, n1 + 1], [y1[k1 - 1], y2[0]], ":", color=color, lw=1, alpha=0.8,
                                   clip_on=False, gid=f"stage2-start-{prefix}{key}")[0]
                    legend.setdefault("stage 2 starts from the kept stage-1 weights", link)
            if prefix != "val_":
                continue
            y = y1 + y2 if not discarded else y1
            if n2 and not discarded and 1 <= k1 <= len(y1):
                mark = ax.plot([k1], [y1[k1 - 1]], marker="D", ms=7, color=color, mec="black", mew=0.6, ls="none",
                               zorder=5, clip_on=False, gid="stage1-kept")[0]
                legend.setdefault(f"stage-1 weights kept (epoch {k1})", mark)
            if kept_x and 1 <= kept_x <= len(y):
                star = ax.plot([kept_x], [y[kept_x - 1]], marker="*", ms=14, color=color, mec="black", mew=0.6,
                               ls="none", zorder=5, clip_on=False, gid="kept")[0]
                legend.setdefault(f"kept weights (epoch {kept_x})", star)
        if kept_x:
            ax.axvline(kept_x, color="green", ls=":", lw=1.2)
        # what happened, just above the frame (clear of the curves), right-aligned (clear of the title)
        marks = ["stage 1: early stopping"] if fe.get("stopped_early") else []
        if n2:
            ax.axvspan(n1 + 0.5, n1 + n2 + 0.5, color="grey", alpha=0.15 if discarded else 0.06, lw=0)
            marks.append("stage 2 (shaded): " + ("discarded" if discarded else "fine-tuned")
                         + (", early stopping" if ft.get("stopped_early") else ""))
        if marks:
            ax.annotate("; ".join(marks), (1.0, 1.0), xycoords="axes fraction", xytext=(0, 8),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8, color="dimgrey")
        ax.set_xlabel("epoch (stage 1, then stage 2)" if n2 else "epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    top_to_one(axes[1])
    fig.tight_layout()
    fig.legend(list(legend.values()), list(legend), loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(len(legend), 3), fontsize=8, frameon=False)
    caption = outcome_lines(rep)
    if caption:
        fig.text(0.01, 0.0, "\n".join(caption), ha="left", va="top", fontsize=8.5)
    return fig


def plot_curves(run: Path, rep: dict):
    fig = curves_figure(rep)
    if fig is not None:
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


def _fit_texts(fig, axes, texts, rounds: int = 3):
    """Grow the axes' data limits until every text (annotations placed in points from their data point)
    lies inside its axes, so no label is cut by or drawn over the frame."""
    for _ in range(rounds):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        grew = False
        for ax, t in texts:
            box = t.get_window_extent(renderer).expanded(1.15, 1.4)
            inner = ax.get_window_extent(renderer)
            if (box.x0 >= inner.x0 and box.x1 <= inner.x1 and box.y0 >= inner.y0 and box.y1 <= inner.y1):
                continue
            inv = ax.transData.inverted()
            ax.update_datalim(inv.transform([[box.x0, box.y0], [box.x1, box.y1]]))
            grew = True
        if not grew:
            return
        for ax in axes:
            ax.autoscale_view()


def tradeoff_figure(rep: dict):
    """Test accuracy (the figure of the report's table, on the test split) against size, and against p50
    latency at 1 thread (None without TFLite accuracy figures). Labels sit inside the axes, the legend
    away from the points; the accuracy axis stops at 1.0. Reports without a test accuracy per model fall
    back on the accuracy over the parity photos, and say so."""
    tfl = {m: r for m, r in (rep.get("tflite") or {}).items()
           if r.get("test_accuracy") is not None or r.get("tflite_accuracy") is not None}
    if not tfl:
        return None
    plt = _plt()
    on_test = all(r.get("test_accuracy") is not None for r in tfl.values())
    sc = parity_scope(tfl, rep)
    if on_test:
        k_acc = (rep.get("keras") or {}).get("test_accuracy")
        ylabel = f"test accuracy ({sc['test_n']} {sc['split']} photos)"
    else:
        k_acc = next(iter(tfl.values())).get("keras_accuracy")
        ylabel = f"accuracy on all {sc['all_n']} parity photos"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    texts = []
    for ax, key, label in ((axes[0], "size", "model size (MB)"), (axes[1], "latency", "p50 latency, 1 thread (ms)")):
        pts = []
        for mode, r in tfl.items():
            x = r["size_bytes"] / 1e6 if key == "size" else (r.get("latency_ms") or {}).get("1", 0.0)
            y = r["test_accuracy"] if on_test else r["tflite_accuracy"]
            pts.append((mode, float(x), float(y)))
        xs = [p[1] for p in pts]
        mid = (min(xs) + max(xs)) / 2
        for i, (mode, x, y) in enumerate(pts):
            ax.scatter(x, y, s=50, zorder=3, clip_on=False)
            right = x > mid  # label toward the middle of the plot
            below = i % 2 == 1 or y >= 0.995  # a point at the top of the axis: label below it
            texts.append((ax, ax.annotate(mode, (x, y), fontsize=8, zorder=4, ha="right" if right else "left",
                                          va="top" if below else "bottom", annotation_clip=False,
                                          xytext=(-7 if right else 7, -6 if below else 6),
                                          textcoords="offset points")))
        if k_acc is not None:
            ax.axhline(k_acc, color="grey", ls="--", lw=1, label="Keras model", clip_on=False)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.12)
    axes[0].set_ylabel(ylabel)
    fig.suptitle("TFLite models: accuracy against size and latency (this machine)", fontsize=10)
    fig.tight_layout()
    _fit_texts(fig, axes, texts)
    for ax in axes:  # one shared y axis; each hides its own top spine
        top_to_one(ax)
    if k_acc is not None:
        for ax in axes:
            ax.legend(fontsize=8, loc="best")
    return fig


def top_to_one(ax):
    """An accuracy axis ends at 1.0 at most (points drawn at 1.0 stay whole: they are not clipped)."""
    lo, hi = ax.get_ylim()
    if hi > 1.0:
        ax.set_ylim(min(lo, 0.999), 1.0)
        ax.spines["top"].set_visible(False)  # a line at 1.0 (the Keras model's) stays visible


def plot_tradeoff(run: Path, rep: dict):
    fig = tradeoff_figure(rep)
    if fig is not None:
        _save(fig, run / "plots" / "size_accuracy_latency.png")


def _fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _interval(v) -> tuple | None:
    """A recorded [low, high] interval, or None (absent, or not two numbers)."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return float(v[0]), float(v[1])
    return None


def drop_text(drop, ci) -> str:
    """``0.12 [-0.37, 0.62]``: a drop in points with its 95 % interval (when recorded)."""
    iv = _interval(ci)
    text = _fmt(float(drop), 2) if isinstance(drop, (int, float)) else "-"
    return text + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv and text != "-" else "")


def parity_scope(tfl: dict, rep: dict) -> dict:
    """What photos each parity figure covers: ``all`` (the parity set: n and its description), ``test``
    (the test split: n and its name), for the labels of the table, the summary and the plot."""
    first = next(iter(tfl.values())) if tfl else {}
    k = rep.get("keras") or {}
    split = k.get("test_split") or "test"
    test_n = first.get("test_n", k.get("n"))
    n = first.get("n")
    desc = str(first.get("parity_data") or f"{n} photos")
    head = f"{n} photos of the run: "
    if desc.startswith(head):  # "240 photos of the run: test 24, val 24, train 192"
        desc = f"all {n} photos of the run ({desc[len(head):]})"
    return {"all_n": n, "all_desc": desc, "test_n": test_n, "split": split}


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
              f"- model: MobileNetV2 alpha {cfg.get('alpha')}, {config.input_text(cfg)}, weights "
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
            lines += [f"- `{printable(s['path'])}`: {printable(s['reason'])}" for s in rep["skipped"][:50]]
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
        lines.append("")
        lines += [f"- {line}" for line in outcome_lines(rep)]
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
        sc = parity_scope(tfl, rep)
        all_n, test_n, split = sc["all_n"], sc["test_n"], sc["split"]
        lines += ["## TFLite models", "",
                  f"Parity compares each TFLite model with the Keras model on the same photos, so it is measured "
                  f"on {sc['all_desc']}: a model-against-model comparison, not a measure of generalisation, "
                  "and the more photos the finer it is"
                  + (f" (one of {test_n} {split} photos is {100.0 / test_n:.2f} points)" if test_n else "")
                  + f". Test accuracy is on the {test_n} photos of the "
                  f"{split} split alone, as the Keras model's ({_fmt(k.get('test_accuracy'))}). A drop is the "
                  "Keras model's accuracy minus the TFLite model's on the same photos, in points, with its 95 % "
                  f"interval in brackets ({metrics.DROP_INTERVAL}). The gate uses the drop and the agreement "
                  f"over all {all_n} photos.", "",
                  f"| mode | size (MB) | full-integer | test acc ({test_n} {split} photos) "
                  f"| drop (pt), {test_n} {split} photos | drop (pt), all {all_n} photos "
                  f"| agreement, all {all_n} photos | KL mean | p50 ms (1 thr) | p50 ms (2 thr) | convert s | gate |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, r in tfl.items():
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {mode} | {mb(r['size_bytes'])} | {r.get('full_integer')} | {_fmt(r.get('test_accuracy'))} | "
                f"{drop_text(r.get('test_accuracy_drop_pt'), r.get('test_accuracy_drop_ci95_pt'))} | "
                f"{drop_text(r.get('accuracy_drop_pt'), r.get('accuracy_drop_ci95_pt'))} | "
                f"{_fmt(r.get('agreement'))} | {_fmt(r.get('kl_mean'), 5)} | "
                f"{_fmt(lat.get('1'), 2)} | {_fmt(lat.get('2'), 2)} | {_fmt(r.get('convert_seconds'), 1)} | "
                f"{'pass' if r.get('passed') else 'FAIL: ' + str(r.get('reason'))} |")
        lines += ["", "Latency is measured on this machine with the runtime's Classifier "
                      f"({(next(iter(tfl.values())).get('backend'))}); it differs on other CPUs "
                      "(int8 pays off most on ARM cores and accelerators).", "",
                  "![size accuracy latency](plots/size_accuracy_latency.png)", ""]
        lines += consumer_lines(tfl, cfg)
        for mode in tfl:
            if (run / "plots" / f"confusion_{mode}.png").is_file():
                lines.append(f"![confusion {mode}](plots/confusion_{mode}.png)")
        lines.append("")
    lines += diagnose.report_lines(rep)  # misclassified photos, label issues, near-duplicates, unknown
    timing = rep.get("timing") or {}
    if timing.get("steps"):
        lines += ["## Time", "", "Wall time of each command run on this folder; the total is their sum.", "",
                  "| step | seconds | finished |", "|---|---|---|"]
        for x in timing["steps"]:
            lines.append(f"| {_step_name(x)} | {_fmt(x.get('seconds'), 1)} | {x.get('finished', '')} |")
        lines += [f"| **total** | **{_fmt(float(timing.get('total_seconds') or 0), 1)}** | |", ""]
    elif timing.get("total_seconds") is not None:
        lines += [f"Total time: {timing['total_seconds']} s", ""]
    lines += ["## Files", "",
              "`model.keras`, the `.tflite` models, `labels.txt`, `split.json` and the reports are the results. "
              "`cache/` (the decoded photos, rebuilt from the data folder when a later command needs it), "
              "`stage1.keras` (needed only to fine-tune again) and `logs/` (converter logs) can be deleted: "
              "`edgetl clean RUN` (RUN: this folder) does it.", ""]
    runfolder.write_text(run / "report.md", "\n".join(lines))


def print_summary(rep: dict):
    k = rep.get("keras") or {}
    ui.info("")
    ui.info(f"Keras model: test accuracy {_fmt(k.get('test_accuracy'))} on {k.get('n')} photos "
            f"({k.get('test_split')} split)")
    tfl = rep.get("tflite") or {}
    if tfl:
        sc = parity_scope(tfl, rep)
        rows = []
        for mode, r in tfl.items():
            lat = r.get("latency_ms") or {}
            rows.append([mode, f"{mb(r['size_bytes'])} MB", _fmt(r.get("test_accuracy")),
                         drop_text(r.get("accuracy_drop_pt"), r.get("accuracy_drop_ci95_pt")),
                         _fmt(r.get("agreement")), _fmt(lat.get("1"), 2), _fmt(lat.get("2"), 2),
                         "pass" if r.get("passed") else "FAIL"])
        ui.info(ui.table(rows, ["model", "size", f"test acc ({sc['test_n']})",
                                f"drop pt, all {sc['all_n']} [95% CI]", f"agreement ({sc['all_n']})",
                                "p50 ms 1t", "p50 ms 2t", "gate"]))
        ui.info(f"(test acc: the {sc['test_n']} {sc['split']} photos; drop and agreement, which the gate uses: "
                f"{sc['all_desc']}; drop = Keras accuracy minus TFLite accuracy on the same photos)")
    timing = rep.get("timing") or {}
    if timing.get("total_seconds") is not None:
        parts = ", ".join(f"{_step_name(x)} {x.get('seconds')} s" for x in timing.get("steps") or [])
        ui.info(f"total time {timing['total_seconds']} s" + (f" ({parts})" if parts else ""))


# ---- consumer parity: each model under each consumer that runs it
CONSUMER_NAMES = {"edge": "edge_runtime", "mediapipe": "MediaPipe Tasks / Task Library fit",
                  "tflite-runtime": "tflite-runtime"}


def consumer_lines(tfl: dict, cfg: dict) -> list:
    """The "Consumers" table of report.md (and, for a run made before it, the MediaPipe estimate line)."""
    if not any(r.get("consumers") for r in tfl.values()):
        figs = {m: r for m, r in tfl.items() if r.get("mediapipe_squash_agreement") is not None}
        if not figs:
            return []
        parts = ", ".join(f"{m} {r['mediapipe_squash_agreement']:.3f}" for m, r in figs.items())
        n = next(iter(figs.values())).get("mediapipe_squash_n")
        return [f"MediaPipe fits the whole frame (squash, bilinear) whatever the training policy: estimated top-1 "
                f"agreement of MediaPipe with edge_runtime (`{cfg.get('resize')}`) on {n} parity photos: {parts}.", ""]
    policy = cfg.get("resize")
    intro = (f"Each model measured as each consumer runs it, against the same Keras reference (the Keras model on "
             f"the run's `{policy}` fit): edge_runtime (its fit, on the interpreter named), MediaPipe Tasks and the "
             "TFLite Task Library (their bilinear fit of the whole frame, with MediaPipe's arithmetic, on "
             "ai-edge-litert), tflite-runtime (edge_runtime's fit on that interpreter). A declared consumer is gated "
             "like the model (drop and agreement over all the parity photos); the others are shown only "
             "(`--consumers` declares them).")
    header = ("| mode | consumer | fit | interpreter | photos | agreement | accuracy | drop (pt) | test acc "
              "| agrees with edge | gate |")
    lines = ["### Consumers", "", intro, "", header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in tfl.items():
        for name, f in (r.get("consumers") or {}).items():
            who = CONSUMER_NAMES.get(name, name)
            if not f.get("measured"):
                lines.append(f"| {mode} | {who} | | | | | | | | | not measured here: {f.get('reason')} |")
                continue
            gate_text = ("not declared" if not f.get("declared") else
                         "pass" if f.get("passed") else "FAIL")
            lines.append(f"| {mode} | {who} | {f.get('fit')} | {f.get('interpreter')} | {f.get('n')} | "
                         f"{_fmt(f.get('agreement'))} | {_fmt(f.get('tflite_accuracy'))} | "
                         f"{drop_text(f.get('accuracy_drop_pt'), f.get('accuracy_drop_ci95_pt'))} | "
                         f"{_fmt(f.get('test_accuracy'))} | {_fmt(f.get('agreement_with_edge'))} | {gate_text} |")
    return lines + [""]
