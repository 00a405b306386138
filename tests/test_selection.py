"""The label-free selection (cmmc.selection): graph, modularity and choice against brute force,
and proof that no label is read."""

import numpy as np
import pytest

from cmmc.config import Config, make_config
from cmmc.estimator import CMMC
from cmmc.selection import (
    agreement_scores,
    ensemble_partition,
    joint_graph,
    knn_graph,
    modularity,
    select,
    select_for,
    view_graphs,
)
from cmmc.synthetic import make_multiview_blobs
from cmmc.train import Trainer


def naive_modularity(a: np.ndarray, labels: np.ndarray) -> float:
    """Newman's Q by its definition: (1/2m) sum_ij [A_ij - k_i k_j / 2m] delta(c_i, c_j)."""
    k = a.sum(1)
    two_m = k.sum()
    q = 0.0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if labels[i] == labels[j]:
                q += a[i, j] - k[i] * k[j] / two_m
    return q / two_m


def test_knn_graph_matches_brute_force_neighbours():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    want = np.zeros((30, 30))
    for i in range(30):
        for j in np.argsort(d[i])[:5]:
            want[i, j] = want[j, i] = 1
    np.testing.assert_array_equal(knn_graph(x, 5).toarray(), want)


def test_joint_graph_neighbours_by_summed_cosine_distances():
    """The joint graph's neighbours are those of the sum over views of the cosine distance
    (1 - cos), found by brute force; a view scaled by any positive factor per row changes nothing."""
    rng = np.random.default_rng(5)
    views = [rng.normal(size=(25, 3)), rng.normal(size=(25, 7))]
    d = np.zeros((25, 25))
    for v in views:
        for i in range(25):
            for j in range(25):
                d[i, j] += 1 - v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
    np.fill_diagonal(d, np.inf)
    want = np.zeros((25, 25))
    for i in range(25):
        for j in np.argsort(d[i])[:4]:
            want[i, j] = want[j, i] = 1
    np.testing.assert_array_equal(joint_graph(views, 4).toarray(), want)
    scaled = [views[0] * rng.uniform(0.1, 10, size=(25, 1)), views[1]]
    np.testing.assert_array_equal(joint_graph(scaled, 4).toarray(), want)


def test_modularity_matches_its_definition_and_known_values():
    rng = np.random.default_rng(1)
    a = (rng.random((25, 25)) < 0.2).astype(float)
    a = np.triu(a, 1)
    a = a + a.T
    import scipy.sparse as sp

    for labels in (rng.integers(0, 3, 25), np.zeros(25, int), np.arange(25)):
        assert modularity(sp.csr_matrix(a), labels) == pytest.approx(naive_modularity(a, labels))
    # two disjoint triangles split along their components: Q = 1 - 2 (1/2)^2 = 0.5
    tri = np.ones((3, 3)) - np.eye(3)
    two = np.block([[tri, np.zeros((3, 3))], [np.zeros((3, 3)), tri]])
    assert modularity(sp.csr_matrix(two), np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(0.5)


def naive_nmi(a: np.ndarray, b: np.ndarray) -> float:
    """NMI from counts: I(a; b) / ((H(a) + H(b)) / 2), natural logarithms."""
    n = len(a)
    pa = {x: np.mean(a == x) for x in set(a)}
    pb = {y: np.mean(b == y) for y in set(b)}
    mi = 0.0
    for x in pa:
        for y in pb:
            pxy = np.mean((a == x) & (b == y))
            if pxy > 0:
                mi += pxy * np.log(pxy / (pa[x] * pb[y]))
    h = lambda p: -sum(v * np.log(v) for v in p.values())  # noqa: E731
    assert n == len(b)
    return mi / ((h(pa) + h(pb)) / 2)


def test_agreement_is_the_mean_nmi_with_the_other_candidates():
    rng = np.random.default_rng(3)
    cands = {"x": rng.integers(0, 4, 80), "y": rng.integers(0, 3, 80)}
    cands["z"] = np.where(rng.random(80) < 0.8, cands["x"], 0)  # mostly x
    got = agreement_scores(cands)
    for c in cands:
        others = [naive_nmi(cands[c], cands[o]) for o in cands if o != c]
        assert got[c] == pytest.approx(np.mean(others), abs=1e-9), c
    # the same partition under other names agrees fully
    same = agreement_scores({"p": np.array([0, 0, 1, 1]), "q": np.array([5, 5, 2, 2])})
    assert same == pytest.approx({"p": 1.0, "q": 1.0})
    assert agreement_scores({"only": np.zeros(4, int)}) == {"only": 0.0}


def same_partition(a: np.ndarray, b: np.ndarray) -> float:
    """Share of sample pairs on which two partitions agree (together in both or apart in both)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    return float(np.mean([(a[i] == a[j]) == (b[i] == b[j]) for i, j in pairs]))


def naive_coassociation(labels: list[np.ndarray]) -> np.ndarray:
    """W_ij = sum over partitions of [i, j in one cluster] / that cluster's size, pair by pair."""
    n = len(labels[0])
    w = np.zeros((n, n))
    for lab in labels:
        size = {c: int((lab == c).sum()) for c in set(lab.tolist())}
        for i in range(n):
            for j in range(n):
                if lab[i] == lab[j]:
                    w[i, j] += 1.0 / size[lab[i]]
    return w


def test_ensemble_embeds_the_coassociation_and_recovers_a_shared_partition():
    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(4), 15)
    noisy = [np.where(rng.random(60) < 0.8, truth, rng.integers(0, 4, 60)) for _ in range(3)]
    cands = {f"c{i}": lab for i, lab in enumerate([truth, *noisy])}
    # its top-4 eigenvectors span the space the ensemble clusters (projections equal)
    w = naive_coassociation(list(cands.values()))
    top = np.linalg.eigh(w)[1][:, -4:]
    b = np.concatenate([np.eye(4)[lab] for lab in cands.values()], 1)
    u = np.linalg.svd(b / np.sqrt(b.sum(0)), full_matrices=False)[0][:, :4]
    np.testing.assert_allclose(u @ u.T, top @ top.T, atol=1e-8)
    got = ensemble_partition(cands, 4, seed=0)
    # the majority's partition, closer to the truth than any noisy candidate
    assert same_partition(got, truth) > max(same_partition(lab, truth) for lab in noisy)
    # candidates that all agree (under other names) give back their partition
    same = ensemble_partition({"p": truth, "q": 3 - truth}, 4, seed=1)
    assert same_partition(same, truth) == 1.0
    with pytest.raises(ValueError, match="different lengths"):
        ensemble_partition({"p": truth, "q": truth[:-1]}, 4, seed=0)


def test_select_takes_the_best_eligible_candidate_by_brute_force():
    views, y = make_multiview_blobs(n_samples=120, n_clusters=4, seed=2)
    rng = np.random.default_rng(3)
    cands = {
        "truth": y,
        "noise": rng.integers(0, 4, 120),
        "three_clusters": np.minimum(y, 2),  # 3 of 4 clusters: below 90 % of K
    }
    sel = select(views, cands, 4)
    graphs = view_graphs(views)
    scores = {
        c: np.mean([naive_modularity(g.toarray(), lab) for g in graphs]) for c, lab in cands.items()
    }
    eligible = [c for c in cands if len(np.unique(cands[c])) >= 0.9 * 4]
    assert sel.chosen == max(eligible, key=scores.get)
    assert sel.eligible == {"truth": True, "noise": True, "three_clusters": False}
    for c in cands:
        assert sel.scores[c] == pytest.approx(scores[c])
        want = [naive_modularity(g.toarray(), cands[c]) for g in graphs]
        assert sel.view_scores[c] == pytest.approx(want)
    np.testing.assert_array_equal(sel.labels, cands[sel.chosen])
    # a candidate of higher score but too few clusters is passed over
    only = select(views, {"three_clusters": cands["three_clusters"], "noise": cands["noise"]}, 4)
    assert only.chosen == "noise"
    with pytest.raises(ValueError, match="candidate 'short'"):
        select(views, {"short": y[:10]}, 4)


class Unreadable:
    """Stands in for the labels: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the selection read the labels ({name})")

    def __array__(self, *a, **k):
        raise AssertionError("the selection read the labels (as an array)")

    def __len__(self):
        raise AssertionError("the selection read the labels (len)")


def test_the_selection_reads_no_labels(one_thread):
    views, y = make_multiview_blobs(n_samples=90, n_clusters=3, seed=4)
    cfg = make_config(
        profile="quick", preset="select", precision="fp32", eval_every=0, hidden=(32, 32, 64)
    )
    trainer = Trainer.for_data(views, y, 3, cfg, 0, progress=False).fit()
    own = trainer.read_out()
    trainer.y = Unreadable()
    sel, _ = select_for(trainer, 0, own)
    # with other labels given to fit, the same choice and labels
    a = CMMC(3, config=cfg, progress=False).fit(views, y)
    b = CMMC(3, config=cfg, progress=False).fit(views, np.random.default_rng(0).permutation(y))
    c = CMMC(3, config=cfg, progress=False).fit(views)
    assert a.selection_.chosen == b.selection_.chosen == c.selection_.chosen == sel.chosen
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.labels_, c.labels_)
    np.testing.assert_array_equal(a.labels_, sel.labels)
    assert set(a.selection_.scores) == {
        "cmmc",
        "spectral_concat",
        "coreg_spectral",
        "kmeans_concat",
    }
    assert "selection" in a.phase_seconds_
    assert set(a.selection_.h_scores) == set(a.selection_.scores)
    # the preset's criterion: the joint graph's modularity plus the agreement; the joint
    # graph's alone, the first form's (mean over each view's graph) and the agreement ride
    # along; all computed here from the candidates' labels
    g, gs = joint_graph(views), view_graphs(views)
    for name, lab in a.selection_.candidates.items():
        others = [naive_nmi(lab, o) for n, o in a.selection_.candidates.items() if n != name]
        want = modularity(g, lab) + np.mean(others)
        assert a.selection_.scores[name] == pytest.approx(want)
        assert a.selection_.other_scores["joint"][name] == pytest.approx(modularity(g, lab))
        views_mean = np.mean([modularity(x, lab) for x in gs])
        assert a.selection_.other_scores["graph"][name] == pytest.approx(views_mean)
        assert a.selection_.other_scores["agreement"][name] == pytest.approx(np.mean(others))


def test_the_graph_criterion_scores_on_each_views_graph(one_thread):
    views, y = make_multiview_blobs(n_samples=90, n_clusters=3, seed=4)
    cfg = make_config(profile="quick", preset="select", selection="graph", precision="fp32",
                      eval_every=0, hidden=(32, 32, 64))  # fmt: skip
    model = CMMC(3, config=cfg, progress=False).fit(views)
    sel, gs = model.selection_, view_graphs(views)
    want = {name: np.mean([modularity(g, lab) for g in gs]) for name, lab in sel.candidates.items()}
    assert sel.scores == pytest.approx(want)
    assert sel.chosen == max(want, key=want.get)  # all use the 3 clusters of these blobs
    assert set(sel.other_scores) == {"joint", "agreement"}


def test_the_consensus_criterion_adds_each_candidates_agreement(one_thread):
    views, y = make_multiview_blobs(n_samples=90, n_clusters=3, seed=4)
    cfg = make_config(profile="quick", preset="select", selection="consensus", precision="fp32",
                      eval_every=0, hidden=(32, 32, 64))  # fmt: skip
    sel = CMMC(3, config=cfg, progress=False).fit(views).selection_
    g, cands = joint_graph(views), sel.candidates
    q = {n: modularity(g, lab) for n, lab in cands.items()}
    agree = {n: np.mean([naive_nmi(lab, o) for m, o in cands.items() if m != n])
             for n, lab in cands.items()}  # fmt: skip
    want = {n: q[n] + agree[n] for n in cands}
    assert sel.scores == pytest.approx(want)
    # eligible: at least 90 % of K = 3 clusters used, i.e. all three
    assert sel.eligible == {n: len(np.unique(lab)) == 3 for n, lab in cands.items()}
    best = max(want[n] for n in cands if sel.eligible[n])
    assert want[sel.chosen] == pytest.approx(best)  # equal partitions tie
    assert sel.other_scores["joint"] == pytest.approx(q)  # the modularity alone rides along
    assert sel.other_scores["agreement"] == pytest.approx(agree)
    assert set(sel.other_scores) == {"joint", "graph", "agreement"}


def test_predict_refuses_when_a_baseline_was_chosen():
    views, y = make_multiview_blobs(n_samples=90, n_clusters=3, seed=4)
    model = CMMC(
        3,
        config=make_config(profile="quick", preset="select", eval_every=0, hidden=(32,)),
        progress=False,
    )
    model.fit(views)
    if model.selection_.chosen == "cmmc":
        assert model.predict(views).shape == (90,)
    else:
        with pytest.raises(ValueError, match="cannot label new samples"):
            model.predict(views)
    assert Config().selection == "none"


def test_records_keep_every_candidates_labels_packed():
    """pack_labels/unpack_labels round-trip against the labels themselves (one and two bytes per
    label), and a record's selection rows decode to the candidates' own labels."""
    import base64
    from types import SimpleNamespace

    from cmmc.experiments.kinds import fitted_body, pack_labels, unpack_labels

    rng = np.random.default_rng(0)
    for k in (1, 7, 256, 300, 65536):
        lab = rng.integers(0, k, 1000)
        text = pack_labels(lab)
        assert text[:3] == ("u2:" if lab.max() >= 256 else "u1:")
        width = 2 if lab.max() >= 256 else 1
        assert len(base64.b64decode(text[3:])) == width * lab.size
        np.testing.assert_array_equal(unpack_labels(text), lab)
    with pytest.raises(ValueError, match="0..65535"):
        pack_labels(np.array([0, -1]))
    with pytest.raises(ValueError, match="'u1:'"):
        unpack_labels("x3:AAAA")

    y = np.repeat(np.arange(3), 5)
    cands = {"cmmc": y, "kmeans_concat": np.zeros_like(y)}
    sel = select([y[:, None].astype(float)], cands, 3)
    model = SimpleNamespace(
        labels_=sel.labels, history_=[], phase_seconds_={}, pseudo_labels_=None, selection_=sel
    )
    ds = SimpleNamespace(labels=y, n_clusters=3, views=None)
    rows = fitted_body({"options": {}, "seed": 0}, ds, model)["selection"]
    assert [r["candidate"] for r in rows] == ["cmmc", "kmeans_concat"]
    for r in rows:
        np.testing.assert_array_equal(unpack_labels(r["labels"]), cands[r["candidate"]])
