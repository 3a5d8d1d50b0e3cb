"""Know your data: what the frozen base's features and the parity set say about the photos, for seconds.

Stage 1 computes the pooled features of every photo once (train.stage1); ``on_features`` looks at them
before the head is trained:

- **Near-duplicates**: pairs whose features are nearly the same direction (a re-encoded or resized copy, a
  crop of the same photo, a burst of one scene): cosine similarity at least ``NEAR_DUP``, and at least
  ``NEAR_DUP_CENTRED`` once the mean feature is taken away (so features that all look alike, as a random
  base gives, match nothing). A pair across train and test inflates the test accuracy: for a split edgetl
  made, each group of near-duplicates is moved into one split (data.keep_groups_together) before training;
  a given split is reported, not changed.
- **Likely label errors**: out-of-fold probabilities for every photo from k-fold heads on the features
  (``FOLDS`` logistic-regression heads, scikit-learn, averaged over ``REPEATS`` fold partitions), then
  confident learning (Northcutt et al., JAIR 2021) with cleanlab: the number of issues from the confident
  joint, the photos with the lowest probability of their given label. Nothing is moved or deleted; the report says how to move one.

After conversion (``after_parity``), the parity set's probabilities (Keras and every TFLite model) give the
**misclassified photos**, and with ``--unknown``/``--min-score`` the **unknown** figures: the threshold
calibrated on held-out unknown photos (``calibrate_min_score``), the false-accept rate and the in-class
accuracy with and without it. Thumbnails go under ``plots/``; ``report_lines`` is report.md's part.
"""

from __future__ import annotations

import io
import os
import shlex
import time
import warnings
from pathlib import Path

import numpy as np

from edge_runtime.classifier import UNKNOWN_LABEL, answers

from toolchain.core import data as data_mod
from toolchain.rundir import runfolder
from toolchain import ui

NEAR_DUP = 0.95  # cosine similarity of the pooled features (flowers10: 90%-size re-encodes 0.98-0.99)
NEAR_DUP_CENTRED = 0.90  # and once the mean feature is removed (0.96-0.98 for those copies)
MAX_PAIRS = 2000  # pairs listed in report.json (all are counted and regrouped)
FOLDS = 5
REPEATS = 3  # fold partitions averaged (out_of_fold)
SHOWN_ISSUES = 12  # label issues shown with thumbnails in report.md
GALLERY = 60  # misclassified photos shown in report.md (all are in report.json)
THUMB = 96  # thumbnail side, pixels
MAX_IN_CLASS_LOSS = 0.01  # calibration: at most this share of in-class validation photos answered "unknown"


# ------------------------------------------------------------------ the methods


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def near_duplicates(feats: np.ndarray, block: int = 1024) -> list:
    """[(i, j, similarity)] with i < j, most similar first: the pairs of near-duplicate feature vectors."""
    n = len(feats)
    if n < 2:
        return []
    u = _unit(feats)
    c = _unit(np.asarray(feats, np.float32) - np.asarray(feats, np.float32).mean(0))
    out = []
    for s in range(0, n, block):
        sim = u[s : s + block] @ u.T
        i, j = np.nonzero(sim >= NEAR_DUP)
        i = i + s
        keep = j > i
        i, j = i[keep], j[keep]
        if len(i):
            cen = np.einsum("ij,ij->i", c[i], c[j])
            ok = cen >= NEAR_DUP_CENTRED
            out += [(int(a), int(b), float(v)) for a, b, v in zip(i[ok], j[ok], sim[i[ok] - s, j[ok]])]
    out.sort(key=lambda t: (-t[2], t[0], t[1]))
    return out


def groups_of(pairs: list, n: int) -> list:
    """Connected groups (lists of indices, two or more) of the pair graph."""
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups = {}
    for a, b, _ in pairs:
        for x in (a, b):
            groups.setdefault(find(x), set()).add(x)
    return [sorted(g) for _, g in sorted(groups.items())]


def _blas_one_thread():
    """A context limiting BLAS to one thread (on a busy machine two BLAS threads next to TensorFlow's
    are several times slower than one), or nothing when threadpoolctl is absent."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except Exception:  # noqa: BLE001 (threadpoolctl missing or unable: run as is)
        import contextlib

        return contextlib.nullcontext()


def _deal(y: np.ndarray, n_classes: int, folds: int, rng) -> np.ndarray:
    """The fold of each photo: each class dealt round the folds in ``rng``'s order (stratified)."""
    fold = np.zeros(len(y), np.int64)
    for c in range(n_classes):
        idx = np.nonzero(y == c)[0]
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + c) % folds
    return fold


def out_of_fold(feats: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, folds: int = FOLDS,
                repeats: int = REPEATS) -> np.ndarray:
    """Out-of-fold probabilities (N, n_classes): each photo scored by a logistic-regression head trained on
    the other folds (stratified: each class dealt round the folds in a seeded order), averaged over
    ``repeats`` such partitions (repeated k-fold; partition r seeded ``[seed, r]``). Features are scaled to
    unit length (times 30). The heads are strongly regularised (C=0.3): a few mislabelled photos that look
    alike (a burst moved into the wrong folder) then cannot vouch for each other across folds. One partition
    leaves the outcome to the luck of the deal: on flowers10 with 5 crocus photos moved into lily_valley
    (MediaPipe's fit), one partition finds 4 of the 5 for 12 of 20 fold seeds, three partitions for 16 of 20
    (5: 17; `benchmarks/bench_knowdata.py --part flips`), at three times the cost (about 1.3 s for 800 photos)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from concurrent.futures import ThreadPoolExecutor

    x = _unit(feats) * 30.0
    y = np.asarray(labels, np.int64)
    out = np.zeros((len(y), n_classes), np.float64)
    jobs = []
    for r in range(repeats):
        fold = _deal(y, n_classes, folds, np.random.default_rng([seed, r]))
        jobs += [(fold != k, fold == k) for k in range(folds) if (fold == k).any()]

    def fit(job):
        tr, te = job
        present = np.unique(y[tr])
        if len(present) < 2:
            return present, np.ones((int(te.sum()), len(present)))
        head = LogisticRegression(C=0.3, max_iter=100).fit(x[tr], y[tr])
        return head.classes_, head.predict_proba(x[te])

    # the heads are independent: two at a time (each on one BLAS thread, which releases the GIL), the same
    # figures in the same order (1.3 s against 1.8 s for 800 photos; TensorFlow is idle meanwhile)
    with _blas_one_thread(), warnings.catch_warnings(), ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", ConvergenceWarning)
        for (_, te), (classes, p) in zip(jobs, pool.map(fit, jobs)):
            out[np.ix_(te, classes)] += p
    out /= repeats
    return out


def label_issues(feats, labels, n_classes: int, seed: int, repeats: int = REPEATS) -> tuple:
    """(ranked [(index, suggested, score)], method note). Confident learning (cleanlab) on out-of-fold
    probabilities: the photos the confident joint counts as mislabelled, pruned by the estimated noise rate of
    each class pair (cleanlab's default, the paper's method), ranked by the out-of-fold probability of the
    given label (the score, from 0 to 1), worst first. ([], reason) when it cannot run."""
    try:
        import cleanlab.filter
    except ImportError:
        return [], "cleanlab is not installed (pip install \"edgetl[train]\"): no label check"
    y = np.asarray(labels, np.int64)
    counts = np.bincount(y, minlength=n_classes)
    if len(y) < 2 * FOLDS or (counts > 0).sum() < 2:
        return [], "too few photos for a label check"
    p = out_of_fold(feats, y, n_classes, seed, repeats=repeats)
    try:
        # n_jobs=1: cleanlab's default (one process per core) forks a multiprocessing.Pool, and a fork of a
        # process running TensorFlow's threads can deadlock in the child (a lock held at the fork): the build
        # then hung for ever, and the stuck child outlived a kill of its parent (tests/test_diagnose.py)
        idx = cleanlab.filter.find_label_issues(y, p, filter_by="prune_by_noise_rate",
                                                return_indices_ranked_by="self_confidence", n_jobs=1)
    except Exception as e:  # noqa: BLE001 (a degenerate dataset: no label check, said why)
        return [], f"cleanlab could not run ({str(e)[:200]})"
    found = [(int(i), int(np.argmax(p[i])), float(p[i, y[i]])) for i in idx]
    return found, (f"confident learning (cleanlab {getattr(cleanlab, '__version__', '?')}) on out-of-fold "
                   f"probabilities of {FOLDS} logistic-regression heads on the base's features, averaged over "
                   f"{repeats} fold partition(s)")


# ------------------------------------------------------------------ thumbnails


def _thumb_bytes(px: np.ndarray) -> bytes:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(px, np.uint8))
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_thumbs(run: Path, folder: str, pixels: list) -> list:
    """``plots/<folder>/NNN.jpg`` for each image of ``pixels`` (None: no thumbnail); their paths (relative
    to the run) or None."""
    out = []
    for k, px in enumerate(pixels):
        if px is None:
            out.append(None)
            continue
        rel = f"plots/{folder}/{k + 1:03d}.jpg"
        runfolder.write_bytes(Path(run) / rel, _thumb_bytes(px))
        out.append(rel)
    return out


def _pixels(ds, row: int, rel: str):
    """A photo as the model saw it (the cache), or decoded again (sharded photos: not on this worker)."""
    try:
        if not getattr(ds.images, "distributed", False):
            return np.asarray(ds.images[row])
        from edge_runtime import preprocess

        return preprocess.load_image(ds.data_dir / rel, ds.image_size, ds.resize)
    except Exception:  # noqa: BLE001 (a thumbnail is never worth a failed build)
        return None


# ------------------------------------------------------------------ stage 1: the features


def _index(ds) -> dict:
    """cache row -> (relpath, label, split)."""
    return {int(r): (rel, lab, s) for s, items in ds.files.items() for rel, lab, r in items}


def move_command(ds, rel: str, suggested: int, unknown_dir: str = "") -> str:
    """The shell command that moves a photo into the folder of the suggested class (``unknown_dir``: the
    --unknown folder, for the ``unknown`` class it adds)."""
    src = Path(ds.data_dir) / rel
    name = ds.classes[suggested]
    if name == UNKNOWN_LABEL and unknown_dir:
        dest = Path(unknown_dir).resolve()
    elif Path(rel).is_absolute():  # an --unknown photo that looks like a class
        dest = Path(ds.data_dir) / name if ds.layout == "folders" else Path(ds.data_dir) / "train" / name
    else:
        parts = Path(rel).parts
        dest = Path(ds.data_dir) / (Path(parts[0]) / name if ds.layout == "splits" else Path(name))
    return f"mv {shlex.quote(str(src))} {shlex.quote(str(dest))}/"


def on_features(ds, run: Path, cfg, rows, feats, ctx, extra_seconds: float = 0.0) -> dict:
    """The diagnostics of stage 1's features (every worker calls it; the chief decides and writes).
    Regroups near-duplicates of a split edgetl made (``ds.files`` changes on every worker, split.json is
    written again). ``extra_seconds``: what stage 1 spent for the diagnostics alone (the test split's
    features), counted in ``seconds``. Returns report.json's ``data`` section (the chief's; {} on the others)."""
    t0 = time.perf_counter() - extra_seconds
    rows = np.asarray(rows, np.int64)

    def decide_groups():
        before = _index(ds)
        pairs = near_duplicates(feats)
        groups = [[int(rows[i]) for i in g] for g in groups_of(pairs, len(rows))]
        moves = data_mod.keep_groups_together(ds, groups)
        return {"pairs": [[int(rows[a]), int(rows[b]), round(s, 4)] for a, b, s in pairs],
                "files": ds.files, "moves": moves, "before": {str(r): v[2] for r, v in before.items()}}

    decided = ctx.chief_decides(decide_groups)
    ds.files = {s: [list(e) for e in items] for s, items in decided["files"].items()}
    if not ctx.chief:
        return {}
    idx = _index(ds)
    moves = decided["moves"]
    pairs = [{"a": idx[a][0], "b": idx[b][0], "similarity": s, "splits": [idx[a][2], idx[b][2]],
              **({"moved": True} if decided["before"][str(a)] != decided["before"][str(b)] else {})}
             for a, b, s in decided["pairs"]]
    if moves:
        note = (f"{len(moves)} photo(s) moved between splits so that each group of near-duplicates is in one "
                f"split ({len(pairs)} near-duplicate pair(s) found)")
        ds.notes = [n for n in ds.notes if "appear in more than one split" not in n] + [note]
        data_mod.write_split(ds, run, cfg, index=False)
        ui.info(note + "; the split is now:")
        data_mod.print_counts(ds)
    elif pairs:
        across = sum(1 for p in pairs if p["splits"][0] != p["splits"][1])
        ui.info(f"{len(pairs)} near-duplicate pair(s) found" + (f", {across} across splits (a given split is "
                                                                "kept as it is: test figures are optimistic)"
                                                                if across else ""))
    y = np.asarray([idx[int(r)][1] for r in rows], np.int64)
    found, method = label_issues(feats, y, len(ds.classes), cfg.seed)
    issues = []
    for i, sug, score in found:
        rel, lab, split = idx[int(rows[i])]
        issues.append({"path": rel, "given": ds.classes[lab], "suggested": ds.classes[sug], "score": round(score, 4),
                       "split": split, "command": move_command(ds, rel, sug, cfg.unknown)})
    thumbs = write_thumbs(run, "label_issues",
                          [_pixels(ds, int(rows[i]), idx[int(rows[i])][0]) for i, _, _ in found[:SHOWN_ISSUES]])
    for e, t in zip(issues, thumbs):
        if t:
            e["thumbnail"] = t
    if issues:
        ui.info(f"{len(issues)} photo(s) may be mislabelled (report.md lists them; nothing is moved), e.g. "
                f"{data_mod.printable(issues[0]['path'])}: {issues[0]['given']} -> {issues[0]['suggested']}?")
    return {"near_duplicates": pairs[:MAX_PAIRS], "near_duplicate_pairs": len(pairs),
            "regrouped": [{"path": rel, "from": a, "to": b} for rel, a, b in moves],
            "label_issues": issues, "label_issues_method": method, "photos_checked": len(rows),
            "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------ after conversion: the parity set


def _evalset_index(ds, evalset) -> list:
    """(relpath, split) of each photo of the parity set."""
    idx = _index(ds)
    return [(idx[int(r)][0], idx[int(r)][2]) for r in evalset.rows]


def calibrate_min_score(ds, evalset) -> dict:
    """The threshold the best score must reach, from the held-out (validation) photos: halfway between the
    highest score of an unknown photo it can turn away and the lowest score of a correctly classified
    in-class photo it keeps (at most MAX_IN_CLASS_LOSS of them answered unknown); 0 when the unknown class
    already turns every such photo away. Uses the Keras model's probabilities (``evalset.p_keras``)."""
    k_unknown = ds.classes.index(UNKNOWN_LABEL)
    where = _evalset_index(ds, evalset)
    val = np.asarray([s == "val" for _, s in where])
    p, y = np.asarray(evalset.p_keras)[val], np.asarray(evalset.labels)[val]
    top, best = p.max(1), p.argmax(1)
    unk, inc = y == k_unknown, y != k_unknown
    accepted = top[unk & (best != k_unknown)]  # unknown photos the class alone lets through
    kept = np.sort(top[inc & (best == y)])  # in-class photos answered right
    allowed = int(np.floor(MAX_IN_CLASS_LOSS * max(int(inc.sum()), 1)))
    ceiling = float(kept[allowed]) if len(kept) > allowed else 1.0
    below = accepted[accepted < ceiling]
    t = 0.0 if not len(below) else float((below.max() + ceiling) / 2)
    return {"min_score": round(t, 4), "source": "calibrated", "val_unknown": int(unk.sum()),
            "val_in_class": int(inc.sum()), "rule": f"halfway between the best-scoring unknown validation photo it "
                                                     f"turns away and the lowest-scoring correct in-class one it "
                                                     f"keeps (at most {MAX_IN_CLASS_LOSS:.0%} of them lost)"}


def unknown_figures(ds, evalset, min_score: float) -> dict:
    """In-class accuracy and false-accept rate on the test split, per model, with and without the unknown
    handling: the best in-class label alone, the unknown class (if any), and with the threshold."""
    k_unknown = ds.classes.index(UNKNOWN_LABEL) if UNKNOWN_LABEL in ds.classes else None
    where = _evalset_index(ds, evalset)
    test = np.asarray([s == ("val" if ds.test_is_val else "test") for _, s in where])
    y = np.asarray(evalset.labels)[test]
    inc = y != k_unknown if k_unknown is not None else np.ones(len(y), bool)
    out = {}
    for name, probs in [("keras", evalset.p_keras)] + list(evalset.p_tflite.items()):
        p = np.asarray(probs, np.float32)[test]
        rows = {}
        variants = [("best class", None, 0.0)]
        if k_unknown is not None:
            variants.append(("unknown class", k_unknown, 0.0))
        if min_score:
            variants.append(("unknown class + min score" if k_unknown is not None else "min score", k_unknown,
                             min_score))
        for label, ku, t in variants:
            q = p.copy()
            if label == "best class" and k_unknown is not None:
                q[:, k_unknown] = -1.0  # never answers unknown
            a = answers(q, t)
            said_unknown = (a == -1) | ((a == ku) if ku is not None else False)
            r = {"in_class_accuracy": round(float((a[inc] == y[inc]).mean()), 4) if inc.any() else None,
                 "in_class_unknown": int(said_unknown[inc].sum())}
            if k_unknown is not None and (~inc).any():
                r["false_accept_rate"] = round(float((~said_unknown[~inc]).mean()), 4)
            rows[label] = r
        out[name] = rows
    return {"test_in_class": int(inc.sum()), "test_unknown": int((~inc).sum()), "models": out}


def misclassified(ds, evalset, run: Path, min_score: float = 0.0) -> list:
    """Every photo of the parity set that the Keras model or a TFLite model gets wrong (with ``min_score``
    applied, as the devices apply it), test split first, with thumbnails of the first GALLERY."""
    where = _evalset_index(ds, evalset)
    y = np.asarray(evalset.labels)
    models = [("keras", np.asarray(evalset.p_keras, np.float32))] + \
        [(m, np.asarray(p, np.float32)) for m, p in evalset.p_tflite.items()]
    answers_of = {m: answers(p, min_score) for m, p in models}
    order = {"test": 0, "val": 1, "train": 2}
    out = []
    for i in sorted(range(len(y)), key=lambda i: (order.get(where[i][1], 3), i)):
        wrong = [m for m, _ in models if answers_of[m][i] != y[i]]
        if not wrong:
            continue
        m = wrong[0]
        a = int(answers_of[m][i])
        p = dict(models)[m][i]
        out.append({"path": where[i][0], "split": where[i][1], "truth": ds.classes[int(y[i])],
                    "predicted": UNKNOWN_LABEL if a < 0 else ds.classes[a], "score": round(float(p.max()), 4),
                    "models": wrong, "quantization_flip": "keras" not in wrong, "_i": i})
    thumbs = write_thumbs(run, "misclassified", [evalset.tensors[e["_i"]] for e in out[:GALLERY]])
    for e, t in zip(out, thumbs + [None] * len(out)):
        e.pop("_i")
        if t:
            e["thumbnail"] = t
    return out


def after_parity(ds, evalset, run: Path, min_score: float | None, calibrated: dict | None = None) -> dict:
    """report.json's ``misclassified`` (and ``unknown``, when the models can answer it) after conversion and
    parity. ``calibrated``: what calibrate_min_score said (None: the threshold was set by hand)."""
    t0 = time.perf_counter()
    t = float(min_score or 0.0)
    out = {"misclassified": misclassified(ds, evalset, run, t)}
    if t or UNKNOWN_LABEL in ds.classes:
        how = calibrated or {"source": "--min-score" if t else "none"}
        out["unknown"] = {**how, "min_score": round(t, 6), **unknown_figures(ds, evalset, t)}
    out["diagnostics"] = {"seconds": round(time.perf_counter() - t0, 2)}  # this part's (stage 1's: data.seconds)
    return out


# ------------------------------------------------------------------ report.md


def _gallery(entries: list, caption) -> list:
    cells = [f"![{data_mod.printable(e['path'])}]({e['thumbnail']})<br>{caption(e)}" for e in entries if e.get("thumbnail")]
    if not cells:
        return []
    cols = 6
    lines = ["| " + " | ".join([" "] * cols) + " |", "|" + "---|" * cols]
    for s in range(0, len(cells), cols):
        row = cells[s : s + cols] + [" "] * (cols - len(cells[s : s + cols]))
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def report_lines(rep: dict) -> list:
    """report.md's part: misclassified photos, likely label errors, near-duplicates, unknown photos."""
    lines = []
    mis = rep.get("misclassified")
    if isinstance(mis, list):
        flips = sum(1 for e in mis if e.get("quantization_flip"))
        lines += ["## Misclassified photos", "",
                  (f"{len(mis)} photo(s) of the parity set are answered wrong by at least one model "
                   f"({flips} only by TFLite models: quantization flips); test split first, truth → predicted "
                   "(all of them in report.json `misclassified`)."), ""]
        lines += _gallery(mis[:GALLERY], lambda e: (f"{e.get('split')}: {e['truth']} → {e['predicted']} "
                                                    f"{e['score']:.2f}<br>{', '.join(e['models'])}"
                                                    + (" (flip)" if e.get("quantization_flip") else "")))
    d = rep.get("data") or {}
    if "label_issues" in d:
        issues = d.get("label_issues") or []
        lines += ["## Likely label errors", "",
                  (f"{len(issues)} photo(s) whose label the other photos contradict "
                   f"({d.get('label_issues_method')}); score: the out-of-fold probability of the given label. "
                   "Nothing was moved; check each photo, and move it if its label is wrong (command below), then "
                   "build again."), ""]
        lines += _gallery(issues[:SHOWN_ISSUES], lambda e: f"{e['given']} → {e['suggested']}? {e['score']:.2f}")
        if issues:
            lines += ["| photo | given | suggested | score | move it |", "|---|---|---|---|---|"]
            for e in issues[:50]:
                lines.append(f"| `{data_mod.printable(e['path'])}` | {e['given']} | {e['suggested']} | "
                             f"{e['score']:.3f} | `{e.get('command', '')}` |")
            lines.append("")
    if "near_duplicates" in d:
        pairs, moved = d.get("near_duplicates") or [], d.get("regrouped") or []
        n = d.get("near_duplicate_pairs", len(pairs))
        across = sum(1 for p in pairs if p["splits"][0] != p["splits"][1])
        lines += ["## Near-duplicates", "",
                  f"{n} pair(s) of photos with nearly identical features (a resized or re-encoded copy, a crop, "
                  f"a burst). {len(moved)} photo(s) were moved so that each group is in one split"
                  + (f"; {across} pair(s) remain across splits (a given split is not changed: test figures "
                     "are optimistic)" if across else "") + ".", ""]
        if pairs:
            lines += ["| photo | near-duplicate | similarity | splits |", "|---|---|---|---|"]
            for p in pairs[:30]:
                lines.append(f"| `{data_mod.printable(p['a'])}` | `{data_mod.printable(p['b'])}` | "
                             f"{p['similarity']:.3f} | {' / '.join(p['splits'])}"
                             + (" (regrouped)" if p.get("moved") else "") + " |")
            lines.append("")
    u = rep.get("unknown")
    if isinstance(u, dict) and u.get("models"):
        t = u.get("min_score") or 0.0
        lines += ["## Unknown photos", "",
                  (f"Models answer `unknown` when no class scores at least **{t:g}** "
                   f"({'calibrated: ' + u['rule'] if u.get('source') == 'calibrated' else 'set by --min-score'})"
                   if t else "No threshold: only the `unknown` class answers `unknown`")
                  + f". Test split: {u.get('test_in_class')} in-class photos, {u.get('test_unknown')} unknown "
                  "photos.", "",
                  "| model | answer | in-class accuracy | in-class answered unknown | false-accept rate |",
                  "|---|---|---|---|---|"]
        for m, rows in u["models"].items():
            for how, r in rows.items():
                far = r.get("false_accept_rate")
                lines.append(f"| {m} | {how} | {r.get('in_class_accuracy')} | {r.get('in_class_unknown')} | "
                             f"{'-' if far is None else f'{far:.3f}'} |")
        lines.append("")
    return lines
