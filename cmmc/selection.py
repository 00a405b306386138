"""A label-free choice between CMMC's clustering and the simple baselines' (``Config.selection``).

CMMC wins on some data (deep features help: digits, BDGP, Fashion) and loses to a spectral
baseline on other data (few samples, many clusters, hand-made features). Which one wins can be
told without labels: a good partition keeps each sample with its nearest neighbours. The score
of a candidate partition is its modularity (Newman 2006) on kNN graphs of the data; the candidate
with the highest score is chosen among those that use at least ``min_share`` of the K clusters.
Three criteria (``Config.selection``):

- ``"graph"``: one graph per standardised view (Euclidean), the scores averaged over the views;
- ``"joint"``: one graph of all views at once, each view's rows scaled to unit length and the
  views concatenated (cosine neighbours, every view weighing the same). Standardising sparse
  count data (text) blows up rare words, and averaging over views lets a weak view outvote the
  others; the joint graph does neither.
- ``"consensus"``: the joint graph's modularity plus the candidate's agreement with the other
  candidates (mean NMI, :func:`agreement_scores`). Where the candidates' modularities are close
  (a spectral cut of a kNN graph scores well on a kNN graph whether right or not), the
  partition the others agree with is taken.

Nothing here reads labels: :func:`select` takes views and candidate partitions only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from cmmc.baselines import coreg_spectral, kmeans_concat, spectral_concat, validate_views
from cmmc.scaling import standardize

__all__ = [
    "BASELINE_CANDIDATES",
    "Selection",
    "CRITERIA",
    "GRAPHS",
    "agreement_scores",
    "candidate_partitions",
    "ensemble_partition",
    "joint_graph",
    "knn_graph",
    "modularity",
    "select",
    "select_for",
    "view_graphs",
]

#: The baselines a "graph" selection weighs against CMMC (each ``(views, K, seed) -> labels``).
BASELINE_CANDIDATES: dict[str, Callable[[list[np.ndarray], int, int], np.ndarray]] = {
    "spectral_concat": spectral_concat,
    "coreg_spectral": coreg_spectral,
    "kmeans_concat": kmeans_concat,
}
N_NEIGHBORS = 10  # as spectral_concat's graph
MIN_SHARE = 0.9  # a candidate must use at least this share of the K clusters


def knn_graph(x: np.ndarray, n_neighbors: int = N_NEIGHBORS) -> sp.csr_matrix:
    """Symmetrised kNN connectivity graph of the rows of ``x`` (Euclidean; 1 where either row is
    among the other's ``n_neighbors`` nearest, 0 elsewhere and on the diagonal)."""
    n = x.shape[0]
    k = int(min(n_neighbors, n - 1))
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    rows, cols = np.repeat(np.arange(n), k), idx[:, 1:].ravel()  # column 0: the row itself
    a = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64)
    a.setdiag(0)  # duplicate rows can put a sample among its own neighbours
    a.eliminate_zeros()
    return a


def view_graphs(views: Sequence[np.ndarray], n_neighbors: int = N_NEIGHBORS) -> list[sp.csr_matrix]:
    """One :func:`knn_graph` per standardised view."""
    return [knn_graph(standardize(v), n_neighbors) for v in validate_views(views)]


def joint_graph(views: Sequence[np.ndarray], n_neighbors: int = N_NEIGHBORS) -> sp.csr_matrix:
    """:func:`knn_graph` of the views side by side, each row of each view scaled to unit length
    (an all-zero row stays zero): the squared distance is a sum of one cosine distance per view."""
    vs = validate_views(views)
    unit = [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in vs]
    return knn_graph(np.concatenate(unit, axis=1), n_neighbors)


#: The kNN graphs a criterion can score on, each built from the views.
GRAPHS: dict[str, Callable[[Sequence[np.ndarray]], list[sp.csr_matrix]]] = {
    "graph": view_graphs,
    "joint": lambda views: [joint_graph(views)],
}
#: Each criterion: the :data:`GRAPHS` it scores on (a candidate's score: its mean modularity on
#: them) and whether the candidate's :func:`agreement_scores` is added to that score.
CRITERIA: dict[str, tuple[str, bool]] = {
    "graph": ("graph", False),
    "joint": ("joint", False),
    "consensus": ("joint", True),
}


def modularity(graph: sp.spmatrix, labels: np.ndarray) -> float:
    """Newman's modularity of the partition ``labels`` on an undirected graph: the share of edge
    weight inside clusters minus the share expected if edges were drawn at random with the same
    degrees, sum_c [e_c / 2m - (d_c / 2m)^2]. 0 for one cluster; at most 1."""
    labels = np.unique(np.asarray(labels), return_inverse=True)[1]
    n = graph.shape[0]
    member = sp.csr_matrix((np.ones(n), (np.arange(n), labels)))  # N x C indicator
    deg = np.asarray(graph.sum(axis=1)).ravel()
    two_m = deg.sum()
    if two_m == 0:
        return 0.0
    inside = (member.T @ graph @ member).diagonal() / two_m
    expected = (member.T @ deg / two_m) ** 2
    return float((inside - expected).sum())


def agreement_scores(candidates: dict[str, np.ndarray]) -> dict[str, float]:
    """Each candidate's mean normalised mutual information (arithmetic mean of the entropies, as
    scikit-learn's default) with the other candidates: how central it is among them, the
    "average NMI" of cluster ensembles (Strehl and Ghosh 2002). A diagnostic beside the graph
    criteria; with one candidate, 0. Reads no labels of the data."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    names = list(candidates)
    if len(names) < 2:
        return {c: 0.0 for c in names}
    pair = {(a, b): nmi(candidates[a], candidates[b]) for i, a in enumerate(names)
            for b in names[i + 1:]}  # fmt: skip
    return {
        c: float(np.mean([pair.get((c, o), pair.get((o, c))) for o in names if o != c]))
        for c in names
    }


def ensemble_partition(candidates: dict[str, np.ndarray], n_clusters: int, seed: int) -> np.ndarray:
    """A cluster ensemble of the candidate partitions (Fern and Brodley 2004, "HBGF"): the
    bipartite graph of samples and the candidates' clusters, each cluster's column scaled by
    one over the root of its size, so that the samples' Gram matrix is the co-association
    (the number of candidates putting two samples together, each vote divided by the root of
    its cluster's size); its top ``n_clusters`` left singular vectors, rows scaled to unit
    length, then k-means (n_init=10, ``seed``). A candidate built from the others, not a
    choice among them: it agrees with every candidate by construction. Reads no labels."""
    from sklearn.cluster import KMeans

    labs = [np.unique(np.asarray(lab), return_inverse=True)[1] for lab in candidates.values()]
    if not labs:
        raise ValueError("ensemble_partition needs at least one candidate partition")
    n = labs[0].size
    if any(lab.size != n for lab in labs):
        raise ValueError(f"candidates of different lengths: {[lab.size for lab in labs]}")
    b = np.concatenate([np.eye(lab.max() + 1)[lab] for lab in labs], axis=1)  # N x (sum of K)
    b /= np.sqrt(b.sum(axis=0))
    u = np.linalg.svd(b, full_matrices=False)[0][:, :n_clusters]
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(u).astype(np.int64)


@dataclass(frozen=True)
class Selection:
    """What a selection chose: ``chosen`` (a candidate's name), its ``labels``, and per candidate
    its ``scores`` (mean modularity over the criterion's graphs), ``clusters_used`` and whether it
    was ``eligible`` (used at least ``min_share`` of K); ``candidates``: every candidate's labels;
    ``view_scores``: the modularity on each of the criterion's graphs (one per view for
    ``"graph"``, one for ``"joint"``); ``h_scores``: on the kNN graph of CMMC's h (a diagnostic:
    it favours CMMC's own labels, so it takes no part in the choice); ``other_scores``: each
    candidate's score under the criteria not used and its ``"agreement"``
    (:func:`agreement_scores`): diagnostics, for comparing rules on the same runs."""

    chosen: str
    labels: np.ndarray
    scores: dict[str, float]
    clusters_used: dict[str, int]
    eligible: dict[str, bool]
    candidates: dict[str, np.ndarray]
    view_scores: dict[str, list[float]]
    h_scores: dict[str, float] | None = None  # on CMMC's own h graph: reported, never used
    other_scores: dict[str, dict[str, float]] | None = None  # criterion -> candidate -> score

    def labels_of(self, candidate: str) -> np.ndarray:
        """One candidate's labels."""
        return self.candidates[candidate]

    def table(self) -> list[dict]:
        """One plain dict per candidate (a record's ``selection`` field)."""
        return [
            {"candidate": c, "score": round(self.scores[c], 6),
             "view_scores": [round(v, 6) for v in self.view_scores[c]],
             **({"h_score": round(self.h_scores[c], 6)} if self.h_scores else {}),
             **{f"{k}_score": round(v[c], 6) for k, v in (self.other_scores or {}).items()},
             "clusters_used": self.clusters_used[c], "eligible": self.eligible[c],
             "chosen": c == self.chosen}
            for c in self.scores
        ]  # fmt: skip


def candidate_partitions(
    views: Sequence[np.ndarray], n_clusters: int, seed: int, own: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``own`` (e.g. ``{"cmmc": labels}``) and the :data:`BASELINE_CANDIDATES`' labels, seeded."""
    vs = validate_views(views, n_clusters)
    out = {name: np.asarray(lab, dtype=np.int64) for name, lab in own.items()}
    for name, fn in BASELINE_CANDIDATES.items():
        out[name] = np.asarray(fn(vs, n_clusters, seed), dtype=np.int64)
    return out


def select(
    views: Sequence[np.ndarray],
    candidates: dict[str, np.ndarray],
    n_clusters: int,
    min_share: float = MIN_SHARE,
    graphs: list[sp.spmatrix] | None = None,
    agreement: dict[str, float] | None = None,
) -> Selection:
    """The candidate partition with the highest mean modularity over ``graphs`` (default: the
    views' kNN graphs, criterion ``"graph"``), plus its ``agreement`` where given (criterion
    ``"consensus"``), among those using at least ``min_share`` of the ``n_clusters`` clusters
    (all of them, if none does). Ties go to the candidate listed first. Reads no labels."""
    if not candidates:
        raise ValueError("select needs at least one candidate partition")
    graphs = view_graphs(views) if graphs is None else graphs
    n = graphs[0].shape[0]
    scores, per_view, used = {}, {}, {}
    for name, lab in candidates.items():
        lab = np.asarray(lab)
        if lab.shape != (n,):
            raise ValueError(f"candidate {name!r}: labels of shape {lab.shape}, expected ({n},)")
        per_view[name] = [modularity(g, lab) for g in graphs]
        scores[name] = float(np.mean(per_view[name])) + (agreement[name] if agreement else 0.0)
        used[name] = int(len(np.unique(lab)))
    eligible = {c: used[c] >= min_share * n_clusters for c in candidates}
    pool = [c for c in candidates if eligible[c]] or list(candidates)
    chosen = max(pool, key=lambda c: scores[c])  # max keeps the first of equal scores
    labels = np.asarray(candidates[chosen])
    return Selection(chosen, labels, scores, used, eligible, dict(candidates), per_view)


def select_for(trainer: Any, member: int, own: np.ndarray) -> tuple[Selection, float]:
    """The selection (criterion ``selection`` of the member's config) for one member of a fitted
    :class:`~cmmc.train.Trainer`: its labels ``own`` ("cmmc") against the baselines seeded with
    the member's seed, on the training views (never ``trainer.y``); the other criteria's scores
    and each candidate's :func:`agreement_scores` ride along as diagnostics. Returns the
    selection and its seconds. Every criterion's graphs and every member's h are computed once
    per trained state (the members share the views). The baselines run on one OpenMP and BLAS
    thread, so that a seed's labels do not depend on how many threads the machine gave it (as
    the pseudo labels')."""
    t0 = time.perf_counter()
    views = [x.float().cpu().numpy() for x in trainer.xs]
    cache = trainer.__dict__.setdefault("_selection_cache", {})
    state = (tuple(trainer.phases_done), trainer.epoch)
    if cache.get("state") != state:
        cache["state"], cache["graphs"] = state, {g: fn(views) for g, fn in GRAPHS.items()}
        cache["h"] = [v.float().cpu().numpy() for v in trainer.embed()["h"]]  # (M x) N x d
    seed = trainer.seeds[member]
    with threadpool_limits(1):  # BLAS too: ARPACK's sums alike
        cands = candidate_partitions(views, trainer.k, seed, {"cmmc": own})
    graph, adds_agreement = CRITERIA[trainer.configs[member].selection]
    agreement = agreement_scores(cands)
    chosen = select(views, cands, trainer.k, graphs=cache["graphs"][graph],
                    agreement=agreement if adds_agreement else None)  # fmt: skip
    other = {g: select(views, cands, trainer.k, graphs=gs).scores
             for g, gs in cache["graphs"].items() if g != graph or adds_agreement}  # fmt: skip
    other["agreement"] = agreement
    h_graph = knn_graph(
        np.concatenate([v[member] if trainer.stacked else v for v in cache["h"]], 1)
    )
    h_scores = {c: modularity(h_graph, lab) for c, lab in cands.items()}
    return (
        dataclasses.replace(chosen, h_scores=h_scores, other_scores=other),
        time.perf_counter() - t0,
    )
