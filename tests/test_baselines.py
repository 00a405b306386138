"""Tests of cmmc.baselines: accuracy on easy data, co-reg against its definition, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from cmmc.baselines import (
    BASELINES,
    coreg_embeddings,
    coreg_spectral,
    kmeans_per_view,
    run_baselines,
    standardize,
    validate_views,
)
from cmmc.metrics import check_metrics, cluster_acc

K = 3

# well-separated blobs give a disconnected kNN graph: sklearn warns, the result is still right
pytestmark = pytest.mark.filterwarnings("ignore:Graph is not fully connected")


def blobs(n_per: int = 60, seed: int = 0, sep: float = 8.0, noise_view: bool = False):
    """Two (or three) views of K well-separated Gaussian blobs sharing the labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    c1 = rng.normal(size=(K, 5)) * sep
    c2 = rng.normal(size=(K, 8)) * sep
    x1 = c1[y] + rng.normal(size=(y.size, 5))
    x2 = c2[y] + rng.normal(size=(y.size, 8)) * 1.5
    x2 = np.hstack([x2, np.full((y.size, 1), 3.0)])  # a zero-variance column
    views = [x1, x2]
    if noise_view:
        views.append(rng.normal(size=(y.size, 4)))
    order = rng.permutation(y.size)
    return [v[order] for v in views], y[order]


# ----------------------------------------------------------------- reference (independent) code


def ref_affinity(x: np.ndarray) -> np.ndarray:
    """D^-1/2 K D^-1/2 of a Gaussian kernel with sigma = median pairwise distance."""
    z = (x - x.mean(0)) / x.std(0)
    d = pdist(z)
    sigma = np.median(d)
    k = np.exp(-(squareform(d) ** 2) / (2 * sigma**2))
    deg = k.sum(1)
    return k / np.sqrt(np.outer(deg, deg))


def ref_top_subspace(lmat: np.ndarray, k: int) -> np.ndarray:
    w, v = np.linalg.eigh(lmat)
    u = v[:, np.argsort(w)[::-1][:k]]
    return u @ u.T


def ref_objective(lmats, us, lam) -> float:
    obj = 0.0
    for lm, u in zip(lmats, us, strict=True):
        obj += np.trace(u.T @ lm @ u)
    for v in range(len(us)):
        for w in range(v + 1, len(us)):
            obj += lam * np.trace(us[v] @ us[v].T @ us[w] @ us[w].T)
    return float(obj)


# ----------------------------------------------------------------- accuracy on easy data


def test_all_baselines_solve_easy_blobs():
    views, y = blobs()
    res = run_baselines(views, y, K, seed=0)
    assert set(res) == set(BASELINES)
    for name, m in res.items():
        assert m["ACC"] > 0.95, (name, m)
        assert check_metrics(m) == [], name
        assert m["seconds"] >= 0.0
    bv = res["kmeans_best_view"]
    assert len(bv["per_view"]) == 2
    assert bv["best_view"] == int(np.argmax([m["ACC"] for m in bv["per_view"]]))


def test_best_view_is_oracle_choice():
    views, y = blobs(noise_view=True)
    views = [views[2], views[0], views[1]]  # noise first
    res = run_baselines(views, y, K, seed=1, names=["kmeans_best_view"])["kmeans_best_view"]
    accs = [m["ACC"] for m in res["per_view"]]
    assert accs[0] < 0.7  # the pure-noise view
    assert res["best_view"] in (1, 2)
    assert res["ACC"] == max(accs)


def test_kmeans_per_view_returns_one_labelling_per_view():
    views, y = blobs()
    labs = kmeans_per_view(views, K, seed=0)
    assert len(labs) == 2 and all(lab.shape == y.shape for lab in labs)
    assert all(cluster_acc(y, lab) > 0.95 for lab in labs)


def test_coreg_sparse_path_and_single_view_choice():
    views, y = blobs(n_per=50, seed=3)
    lab = coreg_spectral(views, K, seed=0, dense=False, n_neighbors=8)
    assert cluster_acc(y, lab) > 0.95
    lab0 = coreg_spectral(views, K, seed=0, use=0)
    assert cluster_acc(y, lab0) > 0.95


def test_standardize_zero_variance_no_nan():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    z = standardize(x)
    assert np.all(np.isfinite(z))
    assert np.allclose(z[:, 1], 0.0)
    assert np.allclose(z[:, 0], (x[:, 0] - 2.0) / np.std(x[:, 0]))


# ----------------------------------------------------------------- co-reg against its definition


def test_coreg_lambda0_equals_per_view_spectral_embeddings():
    views, _ = blobs(n_per=40, seed=5, sep=3.0, noise_view=True)
    res = coreg_embeddings(views, K, lam=0.0, n_iter=3, seed=0)
    for v, x in enumerate(views):
        lm = ref_affinity(x) if v != 1 else None
        if v == 1:  # view 1 has a zero-variance column: drop it for the reference
            lm = ref_affinity(x[:, :-1])
        assert np.allclose(res.lmats[v], lm, atol=1e-10)
        p_ref = ref_top_subspace(lm, K)
        p_got = res.us[v] @ res.us[v].T
        assert np.abs(p_got - p_ref).max() < 1e-6, v
        assert np.allclose(res.us[v].T @ res.us[v], np.eye(K), atol=1e-8)


@pytest.mark.parametrize("solver", ["lobpcg", "eigh"])
def test_coreg_objective_never_decreases(solver):
    views, _ = blobs(n_per=40, seed=7, sep=2.0, noise_view=True)
    lam = 0.5
    res = coreg_embeddings(
        views, K, lam=lam, n_iter=6, tol=0.0, seed=0, solver=solver, return_history=True
    )
    lmats = [ref_affinity(views[0]), ref_affinity(views[1][:, :-1]), ref_affinity(views[2])]
    objs = [ref_objective(lmats, us, lam) for us in res.history]
    assert len(objs) == 7
    assert np.allclose(objs, res.objective, atol=1e-8)
    assert all(b >= a - 1e-9 for a, b in zip(objs, objs[1:], strict=False)), objs
    assert objs[-1] > objs[0] + 1e-3  # co-regularisation actually does something
    # each U_v after a sweep is the exact top-K eigenspace of L_v + lam * sum_{w != v} U_w U_w^T
    # given the latest other views (Gauss-Seidel): check the last view of the last sweep
    us = res.history[-1]
    m = lmats[2] + lam * sum(u @ u.T for u in us[:2])
    assert np.abs(us[2] @ us[2].T - ref_top_subspace(m, K)).max() < 1e-4


# ----------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_same_seed_same_labels(name):
    views, _ = blobs(n_per=30, seed=11, sep=2.5)
    a = BASELINES[name](views, K, 3)
    b = BASELINES[name](views, K, 3)
    assert np.array_equal(a, b)


# ----------------------------------------------------------------- errors


def test_bad_inputs():
    views, y = blobs(n_per=10)
    with pytest.raises(ValueError, match="at least 1 view"):
        validate_views([], K)
    with pytest.raises(ValueError, match="view 1 has 29 samples, view 0 has 30"):
        validate_views([views[0], views[1][:-1]], K)
    bad = views[1].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="view 1 holds 1 NaN/Inf"):
        run_baselines([views[0], bad], y, K, 0)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="view 1 holds 1 NaN/Inf values"):
        BASELINES["kmeans_concat"]([views[0], bad], K, 0)
    with pytest.raises(ValueError, match="n_clusters"):
        BASELINES["spectral_concat"](views, 1, 0)
    with pytest.raises(ValueError, match="n_clusters"):
        BASELINES["coreg_spectral"](views, 31, 0)
    with pytest.raises(ValueError, match="2-D"):
        BASELINES["kmeans_best_view"]([views[0][:, 0]], K, 0)
    with pytest.raises(ValueError, match="view 0 has non-numeric dtype"):
        validate_views([np.array([["a", "b"]] * 30), views[1]], K)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(views, y, K, 0, names=["nope"])
    with pytest.raises(ValueError, match="labels"):
        run_baselines(views, y[:-1], K, 0)
    with pytest.raises(ValueError, match="lam"):
        coreg_embeddings(views, K, lam=-1.0)
