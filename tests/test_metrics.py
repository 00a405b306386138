"""Tests of cmmc.metrics against independent, naive computations."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from cmmc.metrics import ari, check_metrics, cluster_acc, evaluate, nmi, purity

# ----------------------------------------------------------------- independent naive versions


def naive_contingency(t, p):
    ct = sorted(set(t.tolist()))
    cp = sorted(set(p.tolist()))
    c = [[0] * len(cp) for _ in ct]
    for a, b in zip(t.tolist(), p.tolist(), strict=True):
        c[ct.index(a)][cp.index(b)] += 1
    return c


def brute_force_acc(t, p):
    """Max over all one-to-one maps (square-padded contingency, every permutation)."""
    c = naive_contingency(t, p)
    m = max(len(c), len(c[0]))
    pad = [[c[i][j] if i < len(c) and j < len(c[0]) else 0 for j in range(m)] for i in range(m)]
    best = max(sum(pad[i][s[i]] for i in range(m)) for s in itertools.permutations(range(m)))
    return best / len(t)


def naive_nmi(t, p):
    """MI / arithmetic mean of entropies, explicit loops, natural log."""
    n = len(t)
    ct = sorted(set(t.tolist()))
    cp = sorted(set(p.tolist()))
    if len(ct) == 1 and len(cp) == 1:
        return 1.0
    mi = 0.0
    for a in ct:
        for b in cp:
            nab = sum(1 for i in range(n) if t[i] == a and p[i] == b)
            if nab == 0:
                continue
            na = sum(1 for i in range(n) if t[i] == a)
            nb = sum(1 for i in range(n) if p[i] == b)
            mi += nab / n * math.log(n * nab / (na * nb))

    def ent(lab, classes):
        h = 0.0
        for a in classes:
            q = sum(1 for x in lab if x == a) / n
            h -= q * math.log(q)
        return h

    if mi <= 1e-15:
        return 0.0
    return mi / ((ent(t, ct) + ent(p, cp)) / 2)


def naive_ari(t, p):
    """ARI from pair counting over all pairs i < j."""
    n = len(t)
    tp = fp = fn = tn = 0
    for i in range(n):
        for j in range(i + 1, n):
            st, sp_ = t[i] == t[j], p[i] == p[j]
            if st and sp_:
                tp += 1
            elif sp_:
                fp += 1
            elif st:
                fn += 1
            else:
                tn += 1
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def naive_purity(t, p):
    c = naive_contingency(t, p)
    return sum(max(c[i][j] for i in range(len(c))) for j in range(len(c[0]))) / len(t)


# ----------------------------------------------------------------- ACC


@pytest.mark.parametrize("seed", range(8))
def test_acc_matches_brute_force_k4(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, 40)
    p = np.where(rng.random(40) < 0.5, t, rng.integers(0, 4, 40))
    p = rng.permutation(4)[p]
    assert cluster_acc(t, p) == pytest.approx(brute_force_acc(t, p), abs=1e-12)


@pytest.mark.parametrize("kt,kp", [(3, 5), (5, 3), (2, 6), (6, 2)])
def test_acc_brute_force_unequal_cluster_counts(kt, kp):
    rng = np.random.default_rng(kt * 10 + kp)
    t = rng.integers(0, kt, 30)
    p = rng.integers(0, kp, 30)
    got = cluster_acc(t, p)
    assert got == pytest.approx(brute_force_acc(t, p), abs=1e-12)
    assert got <= purity(t, p) + 1e-12


def test_acc_purity_hand_computed():
    # classes 0: {0,1,2}, 1: {3,4,5}; clusters 1: {0,1}, 0: {2,3,4,5}
    t = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([1, 1, 0, 0, 0, 0])
    assert cluster_acc(t, p) == pytest.approx(5 / 6)  # 1->0 (2) + 0->1 (3)
    assert purity(t, p) == pytest.approx(5 / 6)
    # every sample its own cluster: purity 1, but only 2 clusters can be matched
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 2, 3])
    assert cluster_acc(t, p) == pytest.approx(2 / 4)
    assert purity(t, p) == pytest.approx(1.0)
    # one cluster for everything: majority class
    t = np.array([0, 0, 0, 1, 1])
    p = np.zeros(5, dtype=int)
    assert cluster_acc(t, p) == pytest.approx(3 / 5)
    assert purity(t, p) == pytest.approx(3 / 5)


def test_acc_with_one_based_and_negative_labels():
    t = np.array([1, 1, 2, 2, 3, 3])
    p = np.array([-5, -5, 7, 7, 7, 0])
    assert cluster_acc(t, p) == pytest.approx(5 / 6)


# ----------------------------------------------------------------- NMI / ARI / purity


def test_nmi_hand_computed():
    assert nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    # t = [0,0,1,1], p = [0,0,0,1]: H(t) = ln 2, H(p) = -(3/4 ln 3/4 + 1/4 ln 1/4),
    # MI = 1/2 ln(2*4/(2*3)) ... computed by hand term by term:
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
    mi += 0.25 * math.log(0.25 / (0.5 * 0.25))
    ht = math.log(2)
    hp = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(mi / ((ht + hp) / 2), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_nmi_ari_purity_vs_naive(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 50))
    t = rng.integers(0, int(rng.integers(1, 6)), n)
    p = np.where(rng.random(n) < 0.6, t, rng.integers(0, int(rng.integers(1, 7)), n))
    assert nmi(t, p) == pytest.approx(naive_nmi(t, p), abs=1e-10)
    assert ari(t, p) == pytest.approx(naive_ari(t, p), abs=1e-10)
    assert purity(t, p) == pytest.approx(naive_purity(t, p), abs=1e-12)
    # and scikit-learn agrees too
    assert nmi(t, p) == pytest.approx(skm.normalized_mutual_info_score(t, p), abs=1e-10)
    assert ari(t, p) == pytest.approx(skm.adjusted_rand_score(t, p), abs=1e-10)


def test_ari_hand_computed():
    # t = [0,0,1,1], p = [0,0,0,1]: pairs (6): tp=1 {01}, fp=2 {02,12}, fn=1 {23}, tn=2
    expected = 2.0 * (1 * 2 - 1 * 2) / ((1 + 1) * (1 + 2) + (1 + 2) * (2 + 2))
    assert ari([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected)
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_degenerate_partitions():
    one = np.zeros(5, dtype=int)
    sing = np.arange(5)
    assert nmi(one, one) == 1.0 and ari(one, one) == 1.0
    assert ari(sing, sing) == 1.0 and nmi(sing, sing) == pytest.approx(1.0)
    assert nmi(one, sing) == 0.0 and ari(one, sing) == pytest.approx(0.0)
    assert evaluate([3], [7]) == {"ACC": 1.0, "NMI": 1.0, "PUR": 1.0, "ARI": 1.0}


# ----------------------------------------------------------------- invariances / evaluate


def test_perfect_clustering_is_one_and_permutation_invariant():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 7, 300)
    relabel = rng.permutation(7) + 10
    m = evaluate(t, relabel[t])
    assert m == {"ACC": 1.0, "NMI": pytest.approx(1.0), "PUR": 1.0, "ARI": pytest.approx(1.0)}

    p = np.where(rng.random(300) < 0.7, t, rng.integers(0, 9, 300))
    base = evaluate(t, p)
    relabelled = evaluate(t, (rng.permutation(9) * 3)[p])  # rename clusters
    order = rng.permutation(300)
    shuffled = evaluate(t[order], p[order])  # reorder samples
    swapped = evaluate(p, t)  # NMI and ARI are symmetric
    for k in base:
        assert relabelled[k] == pytest.approx(base[k], abs=1e-12)
        assert shuffled[k] == pytest.approx(base[k], abs=1e-12)
    assert swapped["NMI"] == pytest.approx(base["NMI"], abs=1e-12)
    assert swapped["ARI"] == pytest.approx(base["ARI"], abs=1e-12)
    assert swapped["ACC"] == pytest.approx(base["ACC"], abs=1e-12)


def test_evaluate_keys_and_types():
    m = evaluate(np.array([0, 1, 1, 2]), np.array([1.0, 0.0, 0.0, 0.0]))
    assert list(m) == ["ACC", "NMI", "PUR", "ARI"]
    assert all(type(v) is float for v in m.values())
    assert check_metrics(m) == []


def test_large_input_is_fast():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 10, 1_000_000)
    p = rng.integers(0, 12, 1_000_000)
    t0 = time.perf_counter()
    m = evaluate(t, p)
    assert time.perf_counter() - t0 < 5.0
    assert check_metrics(m) == []


# ----------------------------------------------------------------- errors


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"5.*4"):
        cluster_acc(np.zeros(5, int), np.zeros(4, int))


@pytest.mark.parametrize("fn", [cluster_acc, nmi, purity, ari, evaluate])
@pytest.mark.parametrize(
    "t,p,msg",
    [
        (np.zeros((3, 2), int), np.zeros((3, 2), int), "1-D"),
        (np.array([], dtype=int), np.array([], dtype=int), "empty"),
        (np.array([0.0, 1.5]), np.array([0, 1]), "integer"),
        (np.array([0, 1]), np.array([0.0, np.nan]), "NaN"),
        (np.array(["a", "b"]), np.array([0, 1]), "integer"),
    ],
)
def test_bad_inputs(fn, t, p, msg):
    with pytest.raises(ValueError, match=msg):
        fn(t, p)


# ----------------------------------------------------------------- check_metrics


def test_check_metrics():
    good = {"ACC": 0.5, "NMI": 0.4, "PUR": 0.6, "ARI": -0.1}
    assert check_metrics(good) == []
    assert check_metrics({**good, "PUR": 0.5 - 1e-12}) == []  # within tolerance
    assert any("PUR" in s for s in check_metrics({**good, "PUR": 0.4}))
    assert any("NMI" in s for s in check_metrics({**good, "NMI": 1.2}))
    assert any("ARI" in s for s in check_metrics({**good, "ARI": -1.5}))
    assert any("ACC" in s for s in check_metrics({**good, "ACC": 1.1, "PUR": 1.1}))
    assert any("ACC" in s for s in check_metrics({**good, "ACC": -0.1}))
    assert any("NMI" in s for s in check_metrics({**good, "NMI": float("nan")}))
    missing = {k: v for k, v in good.items() if k != "ARI"}
    assert any("ARI" in s for s in check_metrics(missing))
