"""Generated multi-view data whose clusters only the agreement between views reveals."""

from __future__ import annotations

import numpy as np


def make_multiview_blobs(
    n_samples: int = 1000,
    n_clusters: int = 4,
    n_views: int = 2,
    dim: int = 10,
    separation: float = 3.0,
    distractor: float = 6.0,
    noise: float = 1.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Gaussian clusters seen through views that each carry a view-specific distractor.

    Every view has ``dim`` signal features (the shared clusters, centres drawn with scale
    ``separation``) and ``dim`` distractor features: an independent random grouping of the
    samples into K groups, private to that view, with larger centres (``distractor``). The
    distractor dominates distances, so k-means on any single view (or on the concatenation)
    finds the private grouping; only what the views agree on identifies the true clusters.
    Returns (views as float32 N x 2*dim arrays, balanced int64 labels in 0..K-1).
    """
    if n_clusters < 2 or n_views < 2:
        raise ValueError("need n_clusters >= 2 and n_views >= 2")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % n_clusters)
    views = []
    for _ in range(n_views):
        centres = rng.normal(0.0, separation, (n_clusters, dim))
        private = rng.permutation(np.arange(n_samples) % n_clusters)
        dcentres = rng.normal(0.0, distractor, (n_clusters, dim))
        x = np.hstack([centres[labels], dcentres[private]])
        x += rng.normal(0.0, noise, x.shape)
        views.append((x / x.std()).astype(np.float32))  # unit overall scale, like [0, 1] data
    return views, labels.astype(np.int64)
