"""Phase 3's pseudo labels: one seeded clustering of the embedded set per run, by k-means on each
view's min-max scaled h (the official code) or by one spectral clustering of all views' h.

:func:`pseudo_labels` is the one entry point: the Trainer and the book's pages call it, so a page
shows what ``config.pseudo_labels`` makes a run do.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans

from cmmc.config import Config
from cmmc.scaling import minmax


def pseudo_labels(
    hs: list[torch.Tensor], n_clusters: int, config: Config, seed: int
) -> list[np.ndarray]:
    """Pseudo labels of each view from the views' embeddings ``hs`` (N x d each), as
    ``config.pseudo_labels`` says: "kmeans" (seeded, ``config.kmeans_restarts`` restarts, per
    view) or "spectral" (one clustering, the same labels for every view)."""
    if config.pseudo_labels == "spectral":
        return spectral_pseudo_labels(hs, n_clusters, seed)
    return kmeans_pseudo_labels(hs, n_clusters, config.kmeans_restarts, seed)


def kmeans_pseudo_labels(
    hs: list[torch.Tensor], n_clusters: int, restarts: int, seed: int
) -> list[np.ndarray]:
    """Pseudo labels of each view: seeded k-means on its min-max scaled h."""
    labels = []
    for h in hs:
        scaled = minmax(h.float().cpu().numpy())  # float32, as sklearn's MinMaxScaler
        km = KMeans(n_clusters, n_init=restarts, random_state=seed)
        labels.append(km.fit_predict(scaled.astype(np.float64)))
    return labels


def spectral_pseudo_labels(hs: list[torch.Tensor], n_clusters: int, seed: int) -> list[np.ndarray]:
    """Pseudo labels of every view from one seeded spectral clustering (kNN graph) of the
    views' h side by side (:func:`cmmc.baselines.spectral_concat`)."""
    from cmmc.baselines import spectral_concat

    labels = spectral_concat([h.float().cpu().numpy() for h in hs], n_clusters, seed)
    return [labels.copy() for _ in hs]
