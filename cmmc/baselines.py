"""Classic clustering baselines in one harness.

Every baseline is a function ``(views, n_clusters, seed) -> np.ndarray`` registered by name in
:data:`BASELINES`. They return labels of shape ``(N,)``, except ``"kmeans_best_view"`` which
returns one row of labels per view, shape ``(V, N)``: :func:`run_baselines` scores every row
and reports the best one.

Preprocessing shared by all baselines: every view is standardised column-wise (zero mean, unit
variance; zero-variance columns become 0, never NaN) — see :func:`standardize`.

Baselines
---------
- ``kmeans_best_view``: k-means on each view alone. "Best view" is an ORACLE choice made with
  the ground-truth labels (highest ACC), so it is an upper bound for single-view k-means, not
  an unsupervised method.
- ``kmeans_concat``: k-means on the concatenation of the standardised views.
- ``spectral_concat``: scikit-learn spectral clustering (symmetric kNN graph) on the
  standardised concatenation.
- ``coreg_spectral``: pairwise co-regularised multi-view spectral clustering (Kumar, Rai &
  Daumé, NIPS 2011), implemented here with numpy/scipy (:func:`coreg_embeddings`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.neighbors import NearestNeighbors

from cmmc.metrics import evaluate
from cmmc.scaling import standardize
from cmmc.validation import check_labels, check_n_clusters, check_views

__all__ = [
    "BASELINES",
    "CoregResult",
    "coreg_embeddings",
    "coreg_objective",
    "coreg_spectral",
    "kmeans_best_view",
    "kmeans_concat",
    "kmeans_per_view",
    "normalized_affinity",
    "run_baselines",
    "spectral_concat",
    "standardize",
    "validate_views",
]

#: Co-regularisation weight. Kumar et al. (2011) report lambda in [0.01, 0.1] working well;
#: 0.025 is a fixed value inside that range (not tuned on any data set here).
DEFAULT_LAMBDA = 0.025
#: Above this many samples co-reg uses a sparse kNN affinity instead of the dense kernel.
DENSE_MAX_N = 3000


# --------------------------------------------------------------------------- validation / prep


def validate_views(views: Sequence[ArrayLike], n_clusters: int | None = None) -> list[np.ndarray]:
    """The views as float64 2-D arrays (:func:`cmmc.validation.check_views`, one view or more),
    and ``n_clusters`` checked against N (:func:`cmmc.validation.check_n_clusters`)."""
    out = check_views(views, min_views=1, dtype=np.float64)
    if n_clusters is not None:
        check_n_clusters(n_clusters, out[0].shape[0])
    return out


def _concat(views: list[np.ndarray]) -> np.ndarray:
    return np.hstack([standardize(v) for v in views])


def _kmeans(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


# --------------------------------------------------------------------------- k-means baselines


def kmeans_per_view(views: Sequence[ArrayLike], n_clusters: int, seed: int) -> list[np.ndarray]:
    """k-means (n_init=10, random_state=seed) on each standardised view; one label array each."""
    vs = validate_views(views, n_clusters)
    return [_kmeans(standardize(v), n_clusters, seed) for v in vs]


def kmeans_best_view(views: Sequence[ArrayLike], n_clusters: int, seed: int) -> np.ndarray:
    """Per-view k-means labels stacked as shape (V, N).

    The "best view" is chosen afterwards by :func:`run_baselines` using the ground truth
    (highest ACC): an oracle choice, hence an upper bound for single-view k-means.
    """
    return np.stack(kmeans_per_view(views, n_clusters, seed))


def kmeans_concat(views: Sequence[ArrayLike], n_clusters: int, seed: int) -> np.ndarray:
    """k-means (n_init=10) on the concatenation of the per-view standardised views."""
    vs = validate_views(views, n_clusters)
    return _kmeans(_concat(vs), n_clusters, seed)


def spectral_concat(
    views: Sequence[ArrayLike],
    n_clusters: int,
    seed: int,
    n_neighbors: int = 10,
    assign_labels: str = "kmeans",
    eigen_solver: str = "arpack",
) -> np.ndarray:
    """scikit-learn SpectralClustering on the standardised concatenation.

    Affinity: symmetrised kNN connectivity graph (sparse, ``n_neighbors``); eigenvectors by
    ARPACK (shift-invert on the sparse normalised Laplacian; "amg" needs pyamg, not used);
    labels by k-means on the spectral embedding (``assign_labels``), all seeded by ``seed``.
    """
    vs = validate_views(views, n_clusters)
    x = _concat(vs)
    n_neighbors = int(min(n_neighbors, x.shape[0] - 1))
    sc = SpectralClustering(
        n_clusters=n_clusters,
        affinity="nearest_neighbors",
        n_neighbors=n_neighbors,
        assign_labels=assign_labels,
        eigen_solver=eigen_solver,
        random_state=seed,
        n_jobs=1,
    )
    return sc.fit_predict(x).astype(np.int64)


# --------------------------------------------------------------------------- co-regularised


def _median_distance(x: np.ndarray, rng: np.random.Generator, max_points: int = 2000) -> float:
    """Median off-diagonal Euclidean distance (on a seeded subsample of ``max_points``)."""
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], size=max_points, replace=False)]
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    iu = np.triu_indices(x.shape[0], k=1)
    med = float(np.sqrt(np.median(d2[iu]))) if iu[0].size else 0.0
    return med if med > 0 else 1.0


def normalized_affinity(
    x: np.ndarray,
    sigma: float | None = None,
    dense: bool = True,
    n_neighbors: int = 10,
    seed: int = 0,
) -> np.ndarray | sp.csr_matrix:
    """``D^-1/2 K D^-1/2`` of a Gaussian kernel ``K = exp(-||xi - xj||^2 / (2 sigma^2))``.

    ``sigma`` defaults to the median pairwise distance. Dense: the full kernel (diagonal 1, as
    a kernel matrix). Sparse: the kernel restricted to a symmetrised kNN graph (no self-loops),
    with the median estimated on a seeded subsample of 2000 points.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if sigma is None:
        sigma = _median_distance(x, np.random.default_rng(seed))
    if dense:
        sq = (x * x).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
        np.fill_diagonal(d2, 0.0)
        k = np.exp(-d2 / (2.0 * sigma**2))
        dinv = 1.0 / np.sqrt(k.sum(axis=1))
        return k * dinv[:, None] * dinv[None, :]
    k_nn = int(min(n_neighbors, n - 1))
    nn = NearestNeighbors(n_neighbors=k_nn + 1).fit(x)
    dist, idx = nn.kneighbors(x)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop self
    w = np.exp(-(dist**2) / (2.0 * sigma**2)).ravel()
    rows = np.repeat(np.arange(n), k_nn)
    a = sp.csr_matrix((w, (rows, idx.ravel())), shape=(n, n))
    a = a.maximum(a.T).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    deg[deg <= 0] = 1.0
    dinv = sp.diags(1.0 / np.sqrt(deg))
    return (dinv @ a @ dinv).tocsr()


def _top_eigvecs(
    m: np.ndarray | spla.LinearOperator, k: int, solver: str, v0: np.ndarray
) -> np.ndarray:
    """Orthonormal eigenvectors of the k largest eigenvalues of symmetric ``m`` (exact solve)."""
    if solver == "eigh":
        n = m.shape[0]
        _, vec = scipy.linalg.eigh(m, subset_by_index=[n - k, n - 1], driver="evx")
        return vec
    _, vec = spla.eigsh(m, k=k, which="LA", v0=v0, tol=1e-10, maxiter=100 * m.shape[0])
    return vec


def _block_trace(m, u: np.ndarray) -> float:
    return float(np.sum(u * (m @ u)))


def _update_eigvecs(m, u_prev: np.ndarray, solver: str, v0: np.ndarray) -> np.ndarray:
    """Top-k eigenvectors of ``m``, warm-started from ``u_prev``.

    ``solver="lobpcg"``: block LOBPCG started at ``u_prev`` (fast: consecutive co-reg matrices
    differ little). Safeguard: the result is kept only if ``tr(U^T m U)`` is not below that of
    ``u_prev``; otherwise (or on failure) the exact solver is used. The block objective, hence
    the co-reg objective, therefore never decreases. Other solvers: exact solve.
    """
    k = u_prev.shape[1]
    if solver != "lobpcg" or m.shape[0] < 5 * k + 1:
        return _top_eigvecs(m, k, "eigh" if solver == "eigh" else "arpack", v0)
    base = _block_trace(m, u_prev)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, x = spla.lobpcg(m, u_prev.copy(), largest=True, tol=1e-8, maxiter=200)
        x, _ = np.linalg.qr(x)
        if np.all(np.isfinite(x)) and _block_trace(m, x) >= base - 1e-12 * max(1.0, abs(base)):
            return x
    except (np.linalg.LinAlgError, ValueError):
        pass
    return _top_eigvecs(m, k, "arpack", v0)


def _modified(lmat, others: list[np.ndarray], lam: float, as_matrix: bool):
    """``L_v + lam * sum_w U_w U_w^T``: an explicit dense matrix (for LAPACK) or a matrix-free
    operator (the co-regularisation term is low rank; never formed as N x N)."""
    if lam == 0.0 or not others:
        return lmat
    ucat = np.hstack(others)
    if as_matrix:
        return lmat + lam * (ucat @ ucat.T)
    n = lmat.shape[0]

    def mv(x: np.ndarray) -> np.ndarray:
        return lmat @ x + lam * (ucat @ (ucat.T @ x))

    return spla.LinearOperator((n, n), matvec=mv, matmat=mv, dtype=np.float64)


def coreg_objective(lmats: Sequence, us: Sequence[np.ndarray], lam: float) -> float:
    """``sum_v tr(U_v^T L_v U_v) + lam * sum_{v<w} tr(U_v U_v^T U_w U_w^T)``."""
    obj = sum(float(np.sum(u * (lm @ u))) for lm, u in zip(lmats, us, strict=True))
    for v in range(len(us)):
        for w in range(v + 1, len(us)):
            obj += lam * float(np.sum((us[v].T @ us[w]) ** 2))  # ||U_v^T U_w||_F^2
    return obj


@dataclass
class CoregResult:
    """Output of :func:`coreg_embeddings`."""

    us: list[np.ndarray]  # per-view embeddings, N x K, orthonormal columns
    lmats: list  # per-view normalised affinities (dense arrays or CSR)
    objective: list[float]  # objective after initialisation and after each sweep
    n_iter: int  # sweeps performed
    history: list[list[np.ndarray]] = field(default_factory=list)  # U's per sweep (optional)


def coreg_embeddings(
    views: Sequence[ArrayLike],
    n_clusters: int,
    lam: float = DEFAULT_LAMBDA,
    n_iter: int = 10,
    tol: float = 1e-6,
    seed: int = 0,
    dense: bool | None = None,
    n_neighbors: int = 10,
    solver: str = "lobpcg",
    return_history: bool = False,
) -> CoregResult:
    """Pairwise co-regularised spectral embeddings (Kumar, Rai & Daumé 2011).

    Per view: standardise, Gaussian kernel (sigma = median pairwise distance), normalised
    affinity ``L_v = D^-1/2 K D^-1/2`` (:func:`normalized_affinity`); initialise ``U_v`` with
    its top-K eigenvectors; then sweep over views, setting ``U_v`` to the top-K eigenvectors of
    ``L_v + lam * sum_{w != v} U_w U_w^T`` (Gauss-Seidel, latest ``U_w``). Each update maximises
    :func:`coreg_objective` exactly in ``U_v``, so the objective never decreases. Stops after
    ``n_iter`` sweeps or when the relative objective change is below ``tol``.

    ``dense`` (default: N <= 3000) uses dense kernels; larger N uses sparse kNN affinities and a
    matrix-free operator (the co-regularisation term is low rank, never formed as N x N).
    Eigen-solvers: the initial ``U_v`` are exact (ARPACK ``eigsh`` with a seeded start vector;
    LAPACK ``eigh`` if ``solver="eigh"``). Updates: ``solver="lobpcg"`` (default) warm-starts
    block LOBPCG from the current ``U_v`` with a monotonicity safeguard (falls back to ARPACK),
    ``"arpack"``/``"eigh"`` solve every update from scratch (exact, several times slower).
    """
    vs = validate_views(views, n_clusters)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    n = vs[0].shape[0]
    if dense is None:
        dense = n <= DENSE_MAX_N
    if solver not in ("lobpcg", "arpack", "eigh"):
        raise ValueError(f"solver must be 'lobpcg', 'arpack' or 'eigh', got {solver!r}")
    if solver == "eigh" and not dense:
        raise ValueError("solver 'eigh' needs dense=True")
    rng = np.random.default_rng(seed)
    v0 = rng.uniform(-1.0, 1.0, size=n)
    lmats = [
        normalized_affinity(standardize(x), dense=dense, n_neighbors=n_neighbors, seed=seed)
        for x in vs
    ]
    init_solver = "eigh" if solver == "eigh" else "arpack"
    us = [_top_eigvecs(lm, n_clusters, init_solver, v0) for lm in lmats]
    objective = [coreg_objective(lmats, us, lam)]
    history = [[u.copy() for u in us]] if return_history else []
    it = 0
    for it in range(1, n_iter + 1):  # noqa: B007
        for v in range(len(vs)):
            others = [us[w] for w in range(len(vs)) if w != v]
            m = _modified(lmats[v], others, lam, as_matrix=solver == "eigh")
            us[v] = _update_eigvecs(m, us[v], solver, v0)
        objective.append(coreg_objective(lmats, us, lam))
        if return_history:
            history.append([u.copy() for u in us])
        prev, cur = objective[-2], objective[-1]
        if abs(cur - prev) <= tol * max(1.0, abs(prev)):
            break
    return CoregResult(us=us, lmats=lmats, objective=objective, n_iter=it, history=history)


def _row_normalize(u: np.ndarray) -> np.ndarray:
    nrm = np.linalg.norm(u, axis=1, keepdims=True)
    nrm[nrm == 0] = 1.0
    return u / nrm


def coreg_spectral(
    views: Sequence[ArrayLike],
    n_clusters: int,
    seed: int,
    lam: float = DEFAULT_LAMBDA,
    n_iter: int = 10,
    use: str | int = "concat",
    **kwargs,
) -> np.ndarray:
    """Co-regularised spectral clustering: :func:`coreg_embeddings`, then k-means (n_init=10,
    seeded) on the row-normalised embedding — the column-wise concatenation of all ``U_v``
    (``use="concat"``, default) or one view's ``U_v`` (``use=v``)."""
    res = coreg_embeddings(views, n_clusters, lam=lam, n_iter=n_iter, seed=seed, **kwargs)
    if use == "concat":
        emb = np.hstack([_row_normalize(u) for u in res.us])
    elif isinstance(use, int | np.integer) and 0 <= use < len(res.us):
        emb = _row_normalize(res.us[int(use)])
    else:
        raise ValueError(f"use must be 'concat' or a view index, got {use!r}")
    return _kmeans(emb, n_clusters, seed)


# --------------------------------------------------------------------------- harness

BaselineFn = Callable[[Sequence[ArrayLike], int, int], np.ndarray]

#: name -> function(views, n_clusters, seed) -> labels (N,) ((V, N) for kmeans_best_view).
BASELINES: dict[str, BaselineFn] = {
    "kmeans_best_view": kmeans_best_view,
    "kmeans_concat": kmeans_concat,
    "spectral_concat": spectral_concat,
    "coreg_spectral": coreg_spectral,
}


def run_baselines(
    views: Sequence[ArrayLike],
    labels: ArrayLike,
    n_clusters: int,
    seed: int,
    names: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Run baselines and score them with :func:`cmmc.metrics.evaluate`.

    Returns ``{name: {"ACC", "NMI", "PUR", "ARI", "seconds", ...}}``. For
    ``kmeans_best_view`` the top-level metrics are those of the best view by ACC (an oracle
    choice using ``labels``), plus ``"best_view"`` (index) and ``"per_view"`` (list of metric
    dicts, one per view).
    """
    vs = validate_views(views, n_clusters)
    y = check_labels(labels, vs[0].shape[0])
    names = list(BASELINES) if names is None else list(names)
    unknown = [nm for nm in names if nm not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(BASELINES)}")
    out: dict[str, dict] = {}
    for nm in names:
        t0 = time.perf_counter()
        pred = np.asarray(BASELINES[nm](vs, n_clusters, seed))
        secs = time.perf_counter() - t0
        if pred.ndim == 2:  # per-view labels: oracle best view
            per_view = [evaluate(y, row) for row in pred]
            best = int(np.argmax([m["ACC"] for m in per_view]))
            out[nm] = {**per_view[best], "seconds": secs, "best_view": best, "per_view": per_view}
        else:
            out[nm] = {**evaluate(y, pred), "seconds": secs}
    return out
