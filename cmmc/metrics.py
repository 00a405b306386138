"""Clustering metrics: ACC (Hungarian), NMI (arithmetic), purity and ARI.

All metrics are computed from one contingency matrix built with ``np.bincount`` (no
per-sample Python loops). Labels may be any integer-like values (e.g. 1-based, negative,
non-contiguous); the number of predicted clusters may differ from the number of classes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from cmmc.validation import check_labels

__all__ = [
    "check_metrics",
    "cluster_acc",
    "contingency_matrix",
    "ari",
    "evaluate",
    "nmi",
    "pair_counts",
    "purity",
]

METRIC_KEYS: tuple[str, ...] = ("ACC", "NMI", "PUR", "ARI")


def _prepare(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = check_labels(y_true, name="y_true")
    p = check_labels(y_pred, name="y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {t.shape[0]} and {p.shape[0]}"
        )
    return t, p


def contingency_matrix(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Counts ``C[i, j]`` = #samples of class i (rows) put in cluster j (columns), int64."""
    t, p = _prepare(y_true, y_pred)
    return _contingency(t, p)


def pair_counts(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """``C[i, j]`` = #{k : a_k = i and b_k = j} for indices a in [0, n_a), b in [0, n_b): the one
    count behind the metrics' contingency and the pseudo labels' co-occurrence."""
    flat = np.asarray(a, dtype=np.int64).reshape(-1) * n_b + np.asarray(b, dtype=np.int64).reshape(
        -1
    )
    return np.bincount(flat, minlength=n_a * n_b).reshape(n_a, n_b).astype(np.int64)


def _contingency(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    return pair_counts(ti, pi, int(ti.max()) + 1, int(pi.max()) + 1)


def _acc_from_c(c: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(c, maximize=True)
    return float(c[rows, cols].sum() / c.sum())


def _pur_from_c(c: np.ndarray) -> float:
    return float(c.max(axis=0).sum() / c.sum())


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def _nmi_from_c(c: np.ndarray) -> float:
    n_t, n_p = c.shape
    if n_t == n_p == 1:  # both partitions trivial: sklearn convention
        return 1.0
    n = c.sum()
    a = c.sum(axis=1)
    b = c.sum(axis=0)
    nz = c > 0
    pij = c[nz] / n
    outer = np.outer(a, b)[nz] / (n * n)
    mi = float((pij * np.log(pij / outer)).sum())
    if mi <= 0.0:
        return 0.0
    denom = 0.5 * (_entropy(a) + _entropy(b))
    return float(min(mi / max(denom, np.finfo(np.float64).eps), 1.0))


def _ari_from_c(c: np.ndarray) -> float:
    n = float(c.sum())
    cf = c.astype(np.float64)
    sum_ij = float((cf * (cf - 1.0)).sum() / 2.0)
    a = cf.sum(axis=1)
    b = cf.sum(axis=0)
    sum_a = float((a * (a - 1.0)).sum() / 2.0)
    sum_b = float((b * (b - 1.0)).sum() / 2.0)
    total = n * (n - 1.0) / 2.0
    expected = sum_a * sum_b / total if total > 0 else 0.0
    max_index = 0.5 * (sum_a + sum_b)
    denom = max_index - expected
    if denom == 0.0:  # both partitions all-singletons or both one cluster: identical
        return 1.0
    return float((sum_ij - expected) / denom)


def cluster_acc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Clustering accuracy: best one-to-one cluster→class mapping (Hungarian), in [0, 1].

    With more clusters than classes the unmatched clusters count as errors (and vice versa).
    """
    t, p = _prepare(y_true, y_pred)
    return _acc_from_c(_contingency(t, p))


def nmi(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn default)."""
    t, p = _prepare(y_true, y_pred)
    return _nmi_from_c(_contingency(t, p))


def purity(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Purity: each predicted cluster votes for its majority class; fraction of agreeing samples."""
    t, p = _prepare(y_true, y_pred)
    return _pur_from_c(_contingency(t, p))


def ari(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Adjusted Rand index (Hubert & Arabie), in [-1, 1]; 1.0 for identical partitions."""
    t, p = _prepare(y_true, y_pred)
    return _ari_from_c(_contingency(t, p))


def evaluate(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """All four metrics from one contingency matrix: keys "ACC", "NMI", "PUR", "ARI"."""
    t, p = _prepare(y_true, y_pred)
    c = _contingency(t, p)
    return {
        "ACC": _acc_from_c(c),
        "NMI": _nmi_from_c(c),
        "PUR": _pur_from_c(c),
        "ARI": _ari_from_c(c),
    }


def check_metrics(m: Mapping[str, float]) -> list[str]:
    """Sanity problems of a metrics dict (missing/non-finite values, ranges, PUR >= ACC).

    Returns an empty list when everything is consistent.
    """
    problems: list[str] = []
    vals: dict[str, float] = {}
    for k in METRIC_KEYS:
        if k not in m:
            problems.append(f"missing key {k!r}")
            continue
        try:
            v = float(m[k])
        except (TypeError, ValueError):
            problems.append(f"{k} is not a number: {m[k]!r}")
            continue
        if not np.isfinite(v):
            problems.append(f"{k} is not finite: {v}")
            continue
        vals[k] = v
    for k in ("ACC", "NMI", "PUR"):
        if k in vals and not (0.0 <= vals[k] <= 1.0):
            problems.append(f"{k}={vals[k]:.6g} outside [0, 1]")
    if "ARI" in vals and not (-1.0 <= vals["ARI"] <= 1.0):
        problems.append(f"ARI={vals['ARI']:.6g} outside [-1, 1]")
    if "ACC" in vals and "PUR" in vals and vals["PUR"] < vals["ACC"] - 1e-9:
        problems.append(f"PUR={vals['PUR']:.6g} < ACC={vals['ACC']:.6g} (impossible)")
    return problems
