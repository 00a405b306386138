"""Feature scalings, one rule each: the data loaders' ``scaling`` options, the baselines'
standardisation and the min-max scaling of h before k-means pseudo labels use these."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def minmax(x: np.ndarray) -> np.ndarray:
    """Per feature to [0, 1], as sklearn's MinMaxScaler: a constant feature becomes 0. Keeps
    the input's float type (the pseudo labels scale float32 h, the loaders float64 views)."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0).astype(x.dtype)


def minmax_view(x: np.ndarray) -> np.ndarray:
    """The whole view to [0, 1] by its overall minimum and maximum (a constant view becomes 0)."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else x - lo


def standardize(x: np.ndarray) -> np.ndarray:
    """Per feature z-score in float64; a feature whose spread is zero up to rounding
    (sd <= 1e-12 max(1, |mean|)) becomes 0 rather than rounding noise blown up."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd <= 1e-12 * np.maximum(1.0, np.abs(mu)), 1.0, sd)
    return (x - mu) / sd


SCALINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "div255": lambda x: x / 255.0,
    "minmax": minmax,
    "minmax_view": minmax_view,
    "standardize": standardize,
}


def scale(x: np.ndarray, how: str, where: str) -> np.ndarray:
    """``x`` scaled by the rule named ``how`` (:data:`SCALINGS`); ``where`` names the view in
    the error for an unknown rule."""
    if how not in SCALINGS:
        raise ValueError(f"{where}: unknown scaling {how!r}; known: {', '.join(SCALINGS)}")
    return SCALINGS[how](x)
