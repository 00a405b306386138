"""Input checks run before any work starts, so bad input fails early with a clear message."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_views(
    views: Sequence,
    min_views: int = 2,
    dtype: type = np.float32,
    names: Sequence[str] | None = None,
    where: str | None = None,
) -> list[np.ndarray]:
    """The views as C-contiguous 2-D arrays of ``dtype``, or a ValueError naming the problem and
    the view (by ``names`` where given, after ``where``: a file or data set). The one view
    checker of the estimator, the Trainer, the baselines, the data loaders and the CLI (CMMC
    needs ``min_views`` = 2 and float32; the baselines 1 and float64)."""
    if isinstance(views, np.ndarray) or not isinstance(views, Sequence):
        raise ValueError(
            "views must be a list of 2-D arrays, one per view "
            f"(got {type(views).__name__}; wrap a single array as [X] only if it is one view)"
        )
    pre = f"{where}: " if where else ""
    if len(views) < min_views:
        plural = "s" if min_views > 1 else ""
        raise ValueError(f"{pre}need at least {min_views} view{plural}, got {len(views)}")

    def view(m: int) -> str:
        return f"view {names[m]!r}" if names is not None else f"view {m}"

    out = []
    for m, v in enumerate(views):
        if hasattr(v, "detach"):  # torch tensor
            v = v.detach().cpu().numpy()
        a = np.asarray(v)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{pre}{view(m)} has non-numeric dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
        if a.ndim != 2:
            raise ValueError(
                f"{pre}{view(m)} must be 2-D (samples x features), got shape {a.shape}"
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{pre}{view(m)} is empty (shape {a.shape})")
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise ValueError(f"{pre}{view(m)} holds {bad} NaN/Inf values")
        if out and a.shape[0] != out[0].shape[0]:
            raise ValueError(
                f"{pre}{view(m)} has {a.shape[0]} samples, {view(0)} has {out[0].shape[0]}"
            )
        out.append(np.ascontiguousarray(a))
    return out


def check_n_clusters(n_clusters: int, n_samples: int) -> int:
    """K must be an integer with 2 <= K <= N."""
    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters:
        raise ValueError(f"n_clusters must be an integer, got {n_clusters!r}")
    k = int(n_clusters)
    if k < 2 or k > n_samples:
        raise ValueError(f"n_clusters must satisfy 2 <= K <= N={n_samples}, got {k}")
    return k


def check_labels(labels, n_samples: int | None = None, name: str = "labels") -> np.ndarray:
    """Integer labels as a 1-D int64 array (a column of ``n_samples`` is raveled), or a
    ValueError naming ``name`` and the problem: not 1-D, empty, another length than
    ``n_samples``, NaN/Inf, non-integer floats, a non-numeric dtype. The one label coercion of
    the Trainer, the metrics and the registry's data loader."""
    y = np.asarray(labels)
    if y.ndim != 1 and n_samples is not None and y.size == n_samples:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape} (ravel .mat labels first)")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(f"{name} must have length N={n_samples}, got shape {np.shape(labels)}")
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"{name} must hold integer labels, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(y)).sum())} NaN/Inf values")
    if not np.all(y == np.round(y)):
        raise ValueError(f"{name} must hold integer labels, got non-integer floats")
    return y.astype(np.int64)


def check_same_dims(views: list[np.ndarray], dims: Sequence[int]) -> None:
    """Views passed to predict/transform must match those seen in fit."""
    if len(views) != len(dims):
        raise ValueError(f"model was fitted on {len(dims)} views, got {len(views)}")
    for m, (a, d) in enumerate(zip(views, dims, strict=True)):
        if a.shape[1] != d:
            raise ValueError(f"view {m} has {a.shape[1]} features, the model was fitted on {d}")
