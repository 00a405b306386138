"""Analyses of a fitted model: the multi-level read-outs and t-SNE snapshots."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from cmmc.metrics import evaluate

KMEANS_RESTARTS = 10  # k-means restarts (n_init) of the multi-level read-outs


def multilevel(
    embedding: dict[str, list[np.ndarray]], y: np.ndarray, n_clusters: int, seed: int
) -> list[dict[str, dict[str, float]]]:
    """Per view: metrics of k-means on z, k-means on h, and argmax of q (plus the consensus)."""
    out = []
    for z, h, q in zip(embedding["z"], embedding["h"], embedding["q"], strict=True):
        row = {}
        for name, feats in (("z", z), ("h", h)):
            km = KMeans(n_clusters, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(feats)
            row[f"kmeans_{name}"] = evaluate(y, km)
        row["argmax_q"] = evaluate(y, q.argmax(1))
        out.append(row)
    return out


def tsne_2d(x: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init, seeded)."""
    from sklearn.manifold import TSNE

    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
