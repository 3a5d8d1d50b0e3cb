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
    pred = np.asarray(probs).argmax(axis=1)
    n = len(classes)
    cm = confusion(y_true, pred, n)
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


def parity(p_ref: np.ndarray, p_new: np.ndarray, y_true=None) -> dict:
    """How closely ``p_new`` (TFLite) follows ``p_ref`` (Keras) on the same inputs."""
    eps = 1e-7
    a = np.clip(np.asarray(p_ref, np.float64), eps, 1.0)
    b = np.clip(np.asarray(p_new, np.float64), eps, 1.0)
    a /= a.sum(axis=1, keepdims=True)
    b /= b.sum(axis=1, keepdims=True)
    top_a, top_b = a.argmax(1), b.argmax(1)
    kl = (a * (np.log(a) - np.log(b))).sum(axis=1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out = {
        "n": int(a.shape[0]),
        "agreement": round(float((top_a == top_b).mean()), 4),
        "kl_mean": round(float(kl.mean()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "max_prob_diff": round(float(np.abs(np.asarray(p_ref) - np.asarray(p_new)).max()), 4),
    }
    if y_true is not None:
        y = np.asarray(y_true, np.int64)
        ka, ta = float((top_a == y).mean()), float((top_b == y).mean())
        out.update({
            "keras_accuracy": round(ka, 4),
            "tflite_accuracy": round(ta, 4),
            "accuracy_drop_pt": round((ka - ta) * 100.0, 2),
        })
    return out
