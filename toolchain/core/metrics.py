"""Classification and parity metrics, in plain NumPy."""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def classification(y_true, probs, classes) -> dict:
    """accuracy, per-class precision/recall/support and the confusion matrix (rows: true, cols: predicted)."""
    y_true = np.asarray(y_true, np.int64)
    pred = top1(probs)
    n = len(classes)
    ok = pred >= 0  # rows with non-finite scores predict nothing: wrong, and outside the confusion matrix
    cm = confusion(y_true[ok], pred[ok], n)
    per = {}
    for i, c in enumerate(classes):
        tp = int(cm[i, i])
        col, row = int(cm[:, i].sum()), int(cm[i, :].sum())
        per[c] = {
            "precision": round(tp / col, 4) if col else None,
            "recall": round(tp / row, 4) if row else None,
            "support": row,
        }
    return {
        "n": len(y_true),
        "accuracy": round(float((pred == y_true).mean()), 4) if len(y_true) else None,
        "per_class": per,
        "confusion": cm.tolist(),
    }


def top1(probs) -> np.ndarray:
    """Top-1 class per row (ties: the lower index); -1 for a row holding NaN or infinity."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return np.zeros(0, np.int64)
    bad = ~np.isfinite(p).all(axis=1)
    pred = np.where(np.isfinite(p), p, -np.inf).argmax(axis=1)
    pred[bad] = -1
    return pred


def parity(p_ref: np.ndarray, p_new: np.ndarray, y_true=None) -> dict:
    """How closely ``p_new`` (TFLite) follows ``p_ref`` (Keras) on the same inputs. A row with a NaN or
    infinite score counts as a disagreement (and a wrong answer) and is counted in ``nonfinite_*``."""
    eps = 1e-7
    ra, rb = np.asarray(p_ref, np.float64), np.asarray(p_new, np.float64)
    top_a, top_b = top1(ra), top1(rb)
    bad = (top_a < 0) | (top_b < 0)
    a = np.clip(np.where(np.isfinite(ra), ra, 0.0), eps, 1.0)
    b = np.clip(np.where(np.isfinite(rb), rb, 0.0), eps, 1.0)
    a /= a.sum(axis=1, keepdims=True)
    b /= b.sum(axis=1, keepdims=True)
    kl = (a * (np.log(a) - np.log(b))).sum(axis=1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    diff = np.abs(ra - rb)
    out = {
        "n": int(a.shape[0]),
        "agreement": round(float(((top_a == top_b) & ~bad).mean()), 4) if len(a) else 0.0,
        "kl_mean": round(float(kl[~bad].mean()), 6) if (~bad).any() else None,
        "cosine_mean": round(float(cos[~bad].mean()), 6) if (~bad).any() else None,
        "max_prob_diff": round(float(diff[np.isfinite(diff)].max()), 4) if np.isfinite(diff).any() else None,
        "nonfinite_keras": int((top_a < 0).sum()),
        "nonfinite_tflite": int((top_b < 0).sum()),
    }
    if y_true is not None:
        y = np.asarray(y_true, np.int64)
        ka, ta = float(((top_a == y) & (top_a >= 0)).mean()), float(((top_b == y) & (top_b >= 0)).mean())
        k_ok, t_ok = (top_a == y) & (top_a >= 0), (top_b == y) & (top_b >= 0)
        lo, hi = paired_drop_interval(int((k_ok & t_ok).sum()), int((k_ok & ~t_ok).sum()),
                                      int((~k_ok & t_ok).sum()), int((~k_ok & ~t_ok).sum()))
        out.update({
            "keras_accuracy": round(ka, 4),
            "tflite_accuracy": round(ta, 4),
            "accuracy_drop_pt": round((ka - ta) * 100.0, 2),
            "accuracy_drop_ci95_pt": [round(lo * 100.0, 2), round(hi * 100.0, 2)] if len(y) else None,
        })
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple:
    """Wilson score interval (95 % by default) of a proportion of ``k`` in ``n``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


DROP_INTERVAL = "Newcombe's 1998 score interval for paired proportions"


def paired_drop_interval(both: int, only_ref: int, only_new: int, neither: int, z: float = 1.959964) -> tuple:
    """95 % interval of the accuracy drop (reference accuracy minus new accuracy, as a fraction) of two
    models scored on the same photos: ``both`` right, right by the reference model ``only_ref``, by the new
    one ``only_new``, by ``neither``. Newcombe's hybrid score interval for the difference of paired
    proportions (Statistics in Medicine 17, 2635-2650, 1998, method 10): the Wilson interval of each
    model's accuracy, combined with their correlation over the photos. It stays inside [-1, 1] and is
    sensible for few disagreements, where the Wald interval is not."""
    n = both + only_ref + only_new + neither
    if n <= 0:
        return -1.0, 1.0
    p1, p2 = (both + only_ref) / n, (both + only_new) / n
    d = p1 - p2
    l1, u1 = wilson(both + only_ref, n, z)
    l2, u2 = wilson(both + only_new, n, z)
    margins = float(both + only_ref) * (only_new + neither) * (both + only_new) * (only_ref + neither)
    phi = 0.0
    if margins > 0:
        b = float(both) * neither - float(only_ref) * only_new
        phi = (max(b - n / 2.0, 0.0) if b > 0 else b) / np.sqrt(margins)  # Newcombe's continuity-corrected phi
    lo = d - np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + np.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return float(max(-1.0, lo)), float(min(1.0, hi))
