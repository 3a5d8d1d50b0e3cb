"""Output of the runtime verbs (predict, bench, info). No TensorFlow here."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path

from edge_runtime import nativelog, preprocess
from edge_runtime.errors import EdgetlError, ImageError

from toolchain import ui


IMAGE_FORMATS = "JPEG, PNG, GIF, BMP, WebP or TIFF"
# Labels in a list are joined with " | ": ImageNet's labels hold commas ("tench, Tinca tinca"), so a comma
# would not say where one label ends; a label that holds "|" itself is shown quoted.
LABEL_SEP = " | "


def label_text(label: str) -> str:
    return json.dumps(label, ensure_ascii=False) if "|" in label or label != label.strip() else label


def _expand(paths, skipped: list):
    """Files to classify: each argument, or the regular files under each folder (what is not a regular file,
    and folders that cannot be read, go to ``skipped`` as they are met; see preprocess.iter_image_files)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from preprocess.iter_image_files(p, skipped)
        else:
            yield p


def predict(clf, paths, top_k: int, fmt: str, out=None) -> dict:
    """Classify every file, reporting each problem as it happens; returns the counts
    {"classified", "skipped", "failed", "not_finite"} (failed includes not_finite).

    Exit rule (raised here as EdgetlError, exit 2): nothing could be classified, or a photo could not be
    (a file named or made like an image that does not decode, a file or folder that cannot be read, a
    non-finite score). Entries that are not images at all (a labels .txt, a named pipe, a socket, a link to
    a device) are skipped, listed on stderr, and do not change the exit code."""
    import math

    out = out or sys.stdout
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(["path", "label", "score", "top_k"])
    rows = []
    n = {"classified": 0, "skipped": 0, "failed": 0, "not_finite": 0}
    pending: list = []  # filled by the folder walk while it runs

    def report(path, reason, not_an_image):
        key = "skipped" if not_an_image else "failed"
        n[key] += 1
        if fmt == "json":
            out.write(json.dumps({"path": str(path), key if not_an_image else "error": reason}) + "\n")
        print(f"{'skipped' if not_an_image else 'failed'}: {path}: {reason}", file=sys.stderr)

    def flush_pending():
        while pending:
            s = pending.pop(0)
            report(s["path"], s["reason"], s["not_an_image"])

    for p in _expand(paths, pending):
        flush_pending()
        failure = None
        with nativelog.held() as native:  # libtiff's and other decoders' chatter: shown only for a failure
            try:
                probs = clf.probabilities(preprocess.decode_image(p))
            except ImageError as e:
                failure = e
        if failure is not None:
            note = native.last()
            report(p, failure.reason + (f" (the decoder said: {note})" if note else ""),
                   isinstance(failure, preprocess.NotAnImage))
            continue
        if not all(math.isfinite(float(x)) for x in probs):
            n["not_finite"] += 1
            report(p, "the model's scores are not finite numbers (NaN or infinity) for this image", False)
            continue
        preds = clf.top(probs, top_k)
        n["classified"] += 1
        if fmt == "json":
            out.write(json.dumps({"path": str(p), "label": preds[0].label, "score": round(preds[0].score, 6),
                                  "top_k": [x.as_dict() for x in preds]}, allow_nan=False) + "\n")
        elif fmt == "csv":
            writer.writerow([str(p), preds[0].label, f"{preds[0].score:.6f}",
                             ";".join(f"{x.label}:{x.score:.4f}" for x in preds)])
        else:
            rows.append([str(p), preds[0].label, f"{preds[0].score:.4f}",
                         LABEL_SEP.join(f"{label_text(x.label)} {x.score:.3f}" for x in preds[1:]
                                        if round(x.score, 3) > 0)])  # runners-up at 0.000 say nothing
    flush_pending()
    if fmt == "table" and rows:
        if any(r[3] for r in rows):
            out.write(ui.table(rows, ["path", "label", "score", "next"], ["<", "<", ">", "<"]) + "\n")
        else:  # every runner-up at 0.000: no "next" column
            out.write(ui.table([r[:3] for r in rows], ["path", "label", "score"], ["<", "<", ">"]) + "\n")
    out.flush()
    classified, skipped, failed = n["classified"], n["skipped"], n["failed"]
    total = classified + skipped + failed
    if total == 0:
        raise EdgetlError("no files to classify", hint="pass image files or folders that contain some")
    bad_files = failed - n["not_finite"]
    fixes = []
    if bad_files:
        fixes.append("fix or remove the files listed as failed")
    if n["not_finite"]:
        fixes.append("the model gives NaN or infinite scores: check --input-range (float models), or convert "
                     "the model again")
    if classified == 0:
        what = ", ".join(x for x in (f"{failed} failed" if failed else "",
                                     f"{skipped} {'is' if skipped == 1 else 'are'} not an image" if skipped
                                     else "") if x)
        raise EdgetlError(f"no file could be classified: of {total}, {what} (listed above)",
                          hint="; ".join(fixes) if fixes
                          else f"pass photos ({IMAGE_FORMATS}) or folders that contain some")
    if failed:
        raise EdgetlError(
            f"{failed} of {total} file(s) could not be classified (listed above)",
            hint="; ".join(fixes) + f"; {classified} other file(s) were classified"
                 + (f" and {skipped} skipped as not images" if skipped else ""))
    if skipped:
        ui.warn(f"{skipped} file(s) skipped: not images (listed above); {classified} classified")
    return n


@contextlib.contextmanager
def pipe_closed_is_the_end():
    """A reader that stops reading (``edgetl predict ... --json | head -1``) is a normal end: exit 0, with
    nothing more written (stdout is pointed at the null device so the final flush cannot fail again)."""
    try:
        yield
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        raise SystemExit(0) from None


def _parse_threads(text: str) -> list:
    try:
        t = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        t = []
    from edge_runtime import backends

    if not t or any(not 1 <= x <= backends.MAX_THREADS for x in t):
        raise EdgetlError(f"--threads {text!r} is not a list of thread counts (whole numbers from 1 to "
                          f"{backends.MAX_THREADS})", hint="e.g. --threads 1,2,4")
    return t


def bench(model, threads, runs, warmup, image, as_json, labels, input_range, backend, output=None):
    from edge_runtime import bench as bench_mod

    thread_counts = _parse_threads(threads)  # flags first: an error names the flag, not the model
    if runs < 1 or warmup < 0:
        raise EdgetlError("--runs must be at least 1 and --warmup at least 0", hint="e.g. --runs 200 --warmup 20")
    cores = bench_mod.available_cores()
    over = [t for t in thread_counts if t > cores]
    if over:
        ui.warn(f"--threads {','.join(map(str, over))} exceeds the {cores} core(s) this process may use: those "
                f"figures measure threads competing for cores, not a faster model")
    frame = None
    if image is not None:
        import cv2

        frame = cv2.cvtColor(preprocess.decode_image(image), cv2.COLOR_RGB2BGR)
    res = bench_mod.bench(model, thread_counts, runs, warmup, frame, backend, labels, input_range, output)
    if as_json:
        print(json.dumps(res))
        return
    print(f"model    {res['model']} ({res['size_bytes'] / 1e6:.2f} MB)")
    print(f"backend  {res['backend']} (XNNPACK {'on' if res['xnnpack'] else 'off'}), input "
          f"{res['input']['dtype']} {res['input']['shape']}, frame {res['frame'][1]}x{res['frame'][0]}")
    rows = []
    for r in res["results"]:
        c, i = r["classify_ms"], r["invoke_ms"]
        rows.append([r["threads"], f"{c['p50']:.2f}", f"{c['p90']:.2f}", f"{c['p99']:.2f}", f"{c['mean']:.2f}",
                     f"{r['fps']:.1f}", f"{i['p50']:.2f}", f"{i['mean']:.2f}"])
    print(ui.table(rows, ["threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "FPS", "invoke p50", "invoke mean"],
                   [">"] * 8))
    print(f"runs {res['runs']} (+{res['warmup']} warm-up), classify and invoke timed alternately in one loop; "
          f"classify = fit frame + invoke + top-k; FPS = {res['fps_basis']}; {res['cores']} core(s); "
          f"peak memory {res['peak_rss_mb']:.0f} MB")


def bench_run(run, threads, runs, warmup, image, as_json, backend):
    """`edgetl bench RUN`: rank the run's passing models on this device, remember the fastest."""
    from edge_runtime import bench as bench_mod
    from edge_runtime import choose

    thread_counts = _parse_threads(threads) if threads else None
    if runs < 1 or warmup < 0:
        raise EdgetlError("--runs must be at least 1 and --warmup at least 0", hint="e.g. --runs 200 --warmup 20")
    if not choose.is_run_folder(run):
        raise EdgetlError(f"{run} is a folder but not an edgetl run with TFLite models",
                          hint="pass a .tflite model, or a run folder made by `edgetl build`")
    cores = bench_mod.available_cores()
    if thread_counts and any(t > cores for t in thread_counts):
        ui.warn(f"--threads above the {cores} core(s) this process may use measure threads competing for cores")
    frame = None
    if image is not None:
        import cv2

        frame = cv2.cvtColor(preprocess.decode_image(image), cv2.COLOR_RGB2BGR)
    from edge_runtime.classifier import Classifier

    ch = choose.choose(run, threads=thread_counts, backend=backend, runs=runs, warmup=warmup, remeasure=True,
                       frame=frame, classifier_class=Classifier)
    sizes = {c.mode: c.size_bytes for c in choose.candidates(run)}
    if as_json:
        print(json.dumps({"run": str(run), "choice": ch.as_dict(), "sizes": sizes, "cache": str(choose.cache_file())}))
        return
    rows = []
    for i, r in enumerate(ch.ranking):
        rows.append([i + 1, r["mode"], r["threads"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                     f"{1000.0 / r['p50_ms']:.0f}" if r["p50_ms"] > 0 else "-", f"{sizes.get(r['mode'], 0) / 1e6:.2f}",
                     f"{r['p50_ms'] / ch.ranking[0]['p50_ms']:.2f}x"])
    print(f"run      {run}: models that passed parity, measured in one interleaved loop ({runs} rounds)")
    print(f"device   {ch.device.get('cpu')} ({ch.device.get('machine')}, {ch.device.get('cores')} cores; "
          f"{', '.join(ch.device.get('flags', [])) or 'no listed SIMD flags'}), {ch.device.get('backend')}")
    print(ui.table(rows, ["rank", "model", "threads", "p50 ms", "p90 ms", "FPS@p50", "size MB", "vs best"],
                   ["<", "<", ">", ">", ">", ">", ">", ">"]))
    for sk in ch.skipped:
        print(f"not ranked: {sk['mode']} (parity gate failed: {sk['reason']})")
    print(f"choice   {Path(ch.path).name} at {ch.threads} thread(s), {ch.p50_ms:.2f} ms p50; remembered for this "
          f"device in {choose.cache_file()} (`edgetl predict {run} ...` and `edgetl camera {run}` use it)")


def _fmt_list(values, n: int = 3) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values[:n]) + (", ..." if len(values) > n else "") + "]"


def _fmt_labels(labels, n: int = 8) -> str:
    return f"{len(labels)}: {LABEL_SEP.join(label_text(x) for x in labels[:n])}{' ...' if len(labels) > n else ''}"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ci_text(ci) -> str:
    """``-0.37, 0.62`` for a recorded [low, high] interval; "" when absent or not two numbers."""
    return f"{ci[0]:.2f}, {ci[1]:.2f}" if isinstance(ci, list) and len(ci) == 2 and all(map(_is_num, ci)) else ""


def info_run(run, as_json: bool, backend=None):
    """`edgetl info RUN`: the run's models (size, precision, parity result), and the one this device uses
    (as remembered; nothing is measured here: predict, camera and bench measure it once)."""
    from edge_runtime import choose, files

    run = Path(run)
    if not choose.is_run_folder(run):
        raise EdgetlError(f"{run} is a folder but not an edgetl run with TFLite models",
                          hint="pass a .tflite model, or a run folder made by `edgetl build`")
    cands = choose.candidates(run)
    try:
        rep = files.read_json(run / "report.json", what="report")
    except (files.FileProblem, ValueError):
        rep = {}
    rep = rep if isinstance(rep, dict) else {}
    tfl = rep.get("tflite") if isinstance(rep.get("tflite"), dict) else {}
    cfg = rep.get("config") if isinstance(rep.get("config"), dict) else {}
    classes = [str(c) for c in rep.get("classes") or []] if isinstance(rep.get("classes"), list) else []
    choice = choose.remembered(run)
    unk = rep.get("unknown") if isinstance(rep.get("unknown"), dict) else {}
    min_score = unk.get("min_score") if _is_num(unk.get("min_score")) else None
    models = []
    for c in cands:
        r = tfl.get(c.mode) if isinstance(tfl.get(c.mode), dict) else {}
        models.append({"mode": c.mode, "path": c.path.name, "size_bytes": c.size_bytes, "passed": c.passed,
                       "reason": c.reason, "modified": c.modified, "precision": r.get("precision"),
                       "test_accuracy": r.get("test_accuracy"), "test_n": r.get("test_n"), "n": r.get("n"),
                       "accuracy_drop_pt": r.get("accuracy_drop_pt"),
                       "accuracy_drop_ci95_pt": r.get("accuracy_drop_ci95_pt"), "agreement": r.get("agreement")})
    if as_json:
        print(json.dumps({"run": str(run), "classes": classes, "status": rep.get("status"), "models": models,
                          "min_score": min_score,
                          "choice": choice.as_dict() if choice else None, "cache": str(choose.cache_file())}))
        return
    from toolchain.cfg.config import input_text

    print(f"run        {run}: {len(classes)} classes, MobileNetV2 alpha {cfg.get('alpha')} on "
          f"{input_text(cfg)}, status {rep.get('status')}")
    if classes:
        print(f"labels     {_fmt_labels(classes)}")
    rows = []
    for m in models:
        gate = ("changed after the build" if m["modified"] else "pass" if m["passed"] else "FAIL")
        drop, ci = m["accuracy_drop_pt"], _ci_text(m["accuracy_drop_ci95_pt"])
        drop_s = "-" if not _is_num(drop) else f"{drop:.2f}" + (f" [{ci}]" if ci else "")
        rows.append([m["mode"], m["path"], f"{m['size_bytes'] / 1e6:.2f}", str(m["precision"] or "-"),
                     f"{m['test_accuracy']:.4f}" if _is_num(m["test_accuracy"]) else "-", drop_s,
                     f"{m['agreement']:.4f}" if _is_num(m["agreement"]) else "-", gate])
    n_all = next((m["n"] for m in models if m["n"]), None)
    n_test = next((m["test_n"] for m in models if m["test_n"]), None)
    print(ui.table(rows, ["mode", "file", "size MB", "precision", f"test acc ({n_test or '-'})",
                          f"drop pt, all {n_all or '-'} [95% CI]", f"agreement ({n_all or '-'})", "parity"],
                   ["<", "<", ">", "<", ">", ">", ">", "<"]))
    for m in models:
        if not m["passed"] and m["reason"]:
            print(f"not used   {m['mode']}: {m['reason']}")
    if min_score:
        print(f"unknown    the models answer 'unknown' when the best score is below {min_score:.6g} "
              f"({unk.get('source') or '-'})")
    if choice is not None:
        print(f"choice     {Path(choice.path).name} at {choice.threads} thread(s) on this device ({choice.p50_ms:.2f} ms "
              f"p50, measured {choice.measured}); predict and camera use it, `edgetl bench {run}` measures again")
    elif any(m["passed"] for m in models):
        print(f"choice     not measured on this device yet: `edgetl predict {run} ...` and `edgetl camera {run}` "
              f"measure the passing models once and use the fastest (`edgetl bench {run}` shows the figures)")
    else:
        print("choice     none: no model of this run passed its parity gate (--mode MODE forces one)")
    print(f"details    `edgetl info {run / models[0]['path']}`: inputs, outputs, operators and metadata of one model")


def info(model, as_json: bool, backend):
    """Describe a model: I/O, operators, precision, and what each metadata form says (both when both exist)."""
    from edge_runtime import inspect_model
    from edge_runtime import model as model_mod

    m = model_mod.load(model, num_threads=1, backend=backend)
    d = inspect_model.describe(m)
    d["standard_metadata"] = m.standard
    d["archive_files"] = m.archive_files
    d["metadata_problems"] = m.metadata_problems
    d["run_error"] = m.run_error  # the interpreter's error when the crash-safety check ran the model once
    if as_json:
        print(json.dumps(d))
        return
    print(f"model      {d['path']} ({d['size_bytes'] / 1e6:.2f} MB)")
    print(f"precision  {d['precision']}" + (f" (float ops: {', '.join(sorted(set(d['float_ops'])))})"
                                            if d["float_ops"] and d["precision"] != "float32" else ""))
    print(f"backend    {d['backend']}")
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            q = t.get("quantization")
            qs = f" scale {q['scale']:.6g} zero_point {q['zero_point']}" if q else ""
            print(f"{kind[:-1]:<10} {t['name']}: {t['dtype']} {t['shape_signature']}{qs}")
    print(f"operators  {d['operators']}: " + ", ".join(f"{k} {v}" for k, v in d["op_counts"].items()))
    print("tensors    " + ", ".join(f"{k} {v}" for k, v in d["tensor_types"].items()))
    ends = m.output_ends_in()
    print(f"scores     {'the graph ends in ' + ends if ends else 'no SOFTMAX/LOGISTIC at the end: the runtime applies softmax'}")
    if m.archive_files:
        print(f"archive    {', '.join(m.archive_files)}")
    std, meta = m.standard, d["edgetl_metadata"]
    if std:
        print(f"tflite metadata (TFLITE_METADATA, parser >= {std.get('min_parser_version') or '?'})")
        print(f"  name     {std.get('name')}, version {std.get('version') or '-'}, author {std.get('author') or '-'}")
        if std.get("description"):
            print(f"  about    {std['description']}")
        si, so = std.get("input") or {}, std.get("output") or {}
        norm = si.get("normalization")
        stats = si.get("stats") or {}
        print(f"  input    {si.get('name') or '-'}: {si.get('content') or '-'}, colour space {si.get('color_space') or '-'}, "
              + (f"normalization mean {_fmt_list(norm['mean'])} std {_fmt_list(norm['std'])}" if norm
                 else "no normalization")
              + (f", stats min {_fmt_list(stats.get('min') or [])} max {_fmt_list(stats.get('max') or [])}" if stats else ""))
        print(f"  output   {so.get('name') or '-'}: {so.get('content') or '-'}")
        if _is_num(so.get("score_threshold")) and so["score_threshold"]:
            print(f"  threshold {so['score_threshold']:.6g} (ScoreThresholdingOptions: MediaPipe and the Task Library "
                  "return no category below it)")
        cal = so.get("calibration")
        if cal is not None:
            print(f"  calibration ScoreCalibrationOptions {cal.score_transformation}, {len(cal.sigmoids)} lines in "
                  f"{cal.file}, default score {cal.default_score:g} (applied to the scores)")
        if std.get("labels"):
            print(f"  labels   {_fmt_labels(std['labels'])} (from {std.get('labels_file')})")
        for f in std.get("associated_files") or []:
            print(f"  file     {f.get('name')}: {f.get('type')} ({f.get('tensor')})"
                  + (f", {f['description']}" if f.get("description") else "")
                  + (f", locale {f['locale']}" if f.get("locale") else ""))
    if meta:
        inp = meta.get("input", {})
        print(f"metadata   edgetl {meta.get('edgetl_version')}, mode {meta.get('mode')}, created {meta.get('created')}")
        print(f"  labels   {_fmt_labels(meta.get('labels') or [])}")
        print(f"  input    {inp.get('size')} {inp.get('color')}, resize {inp.get('resize')}, "
              f"values {inp.get('value_range')}, {inp.get('dtype')}")
        print(f"  keras    sha256 {str(meta.get('keras_model_sha256'))[:16]}...")
        if _is_num(meta.get("min_score")) and meta["min_score"]:
            print(f"  unknown  answered when the best score is below {meta['min_score']:.6g} (min_score)")
        ds = meta.get("dataset") or {}
        if ds:
            print(f"  dataset  {ds.get('total')} photos, {len(ds.get('classes', []))} classes, from {ds.get('data_dir')}")
        par = meta.get("parity")
        if par:
            ci = _ci_text(par.get("accuracy_drop_ci95_pt"))
            ci = f" [95% CI {ci}]" if ci else ""
            print(f"  parity   on {par.get('n')} photos ({par.get('data')}): keras acc {par.get('keras_accuracy')}, "
                  f"tflite acc {par.get('tflite_accuracy')}, drop {par.get('accuracy_drop_pt')} pt{ci}, agreement "
                  f"{par.get('agreement')}, KL {par.get('kl_mean')} -> {'pass' if par.get('passed') else 'FAIL'}")
    if not std and not meta:
        print("metadata   none: pass --labels, and --input-range for a float input")
    for problem in m.metadata_problems:
        print(f"warning: {problem}", file=sys.stderr)
    if m.run_error:
        print(f"warning: the interpreter prepared this model but failed to run it once on a blank input "
              f"({m.run_error}): predict will fail on it", file=sys.stderr)
