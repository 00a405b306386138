"""The one set of scaling rules against scikit-learn's scalers and hand-made edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from cmmc.scaling import minmax, minmax_view, scale, standardize


def test_minmax_equals_sklearn_and_keeps_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    x[:, 2] = 3.0  # constant feature
    np.testing.assert_allclose(minmax(x), MinMaxScaler().fit_transform(x), atol=1e-12)
    assert (minmax(x)[:, 2] == 0).all()
    x32 = x.astype(np.float32)
    assert minmax(x32).dtype == np.float32


def test_standardize_equals_sklearn_and_zeroes_near_constant_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    np.testing.assert_allclose(standardize(x), StandardScaler().fit_transform(x), atol=1e-12)
    x[:, 1] = 1e6 + 1e-9 * rng.normal(size=40)  # rounding noise around a constant
    assert np.abs(standardize(x)[:, 1]).max() < 1e-3


def test_minmax_view_and_unknown_rule():
    x = np.array([[1.0, 3.0], [2.0, 5.0]])
    np.testing.assert_allclose(minmax_view(x), (x - 1.0) / 4.0)
    assert (minmax_view(np.full((2, 2), 7.0)) == 0).all()
    with pytest.raises(ValueError, match="mine.npz view 'B': unknown scaling 'zscore'"):
        scale(x, "zscore", "mine.npz view 'B'")
