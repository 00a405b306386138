"""Pseudo labels by maximum matching: rename k-means labels into the label head's index space."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from cmmc.metrics import pair_counts


def cooccurrence(pred: np.ndarray, pseudo: np.ndarray, n_clusters: int) -> np.ndarray:
    """K x K matrix C[a, b] = #{i : pred_i = a and pseudo_i = b}."""
    return pair_counts(pred, pseudo, n_clusters, n_clusters)


def match_pseudo_labels(pred: np.ndarray, pseudo: np.ndarray, n_clusters: int) -> np.ndarray:
    """Return ``pseudo`` relabelled so that its overlap with ``pred`` is maximal.

    Solves max_sigma sum_b C[sigma(b), b] over permutations sigma (Hungarian, on max(C) - C, as
    the official code does) and maps every pseudo label b to sigma(b).
    """
    c = cooccurrence(pred, pseudo, n_clusters)
    rows, cols = linear_sum_assignment(c.max() - c)
    rename = np.empty(n_clusters, dtype=np.int64)
    rename[cols] = rows
    return rename[np.asarray(pseudo, dtype=np.int64)]
