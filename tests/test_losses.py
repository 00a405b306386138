"""Each loss term against a naive loop implementation: values and gradients."""

import itertools
import math

import numpy as np
import pytest
import torch

from cmmc import losses as L
from cmmc.matching import cooccurrence, match_pseudo_labels
from cmmc.model import CMMCNetwork


def naive_pair_contrast(a, b, tau, cosine):
    """Loop form of the official code: [positive, 2n-2 negatives] per row, summed, / 2n.

    The feature loss uses plain dot products of the (already normalised) h, as the code does;
    the label loss uses cosine similarity of the columns.
    """
    rows = list(a) + list(b)
    n = len(a)
    total = 0.0
    for i, r in enumerate(rows):
        pos = i + n if i < n else i - n
        cos = [torch.dot(r, s) / ((r.norm() * s.norm()) if cosine else 1) / tau for s in rows]
        neg = [cos[j] for j in range(2 * n) if j not in (i, pos)]
        logits = torch.stack([cos[pos], *neg])
        total = total - (logits[0] - torch.logsumexp(logits, 0))
    return total / (2 * n)


def naive_entropy(q):
    k = q.shape[1]
    p = [sum(q[i, c] for i in range(q.shape[0])) for c in range(k)]
    s = sum(p)
    p = [x / s for x in p]
    return math.log(k) + sum(x * torch.log(x) for x in p)


def _pair(shape, seed, normalise):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    b = torch.randn(*shape, generator=g, dtype=torch.float64)
    if normalise == "rows":
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    elif normalise == "softmax":
        a, b = a.softmax(1), b.softmax(1)
    return a.requires_grad_(), b.requires_grad_()


def _check_value_and_grad(fast, slow, inputs):
    v_fast = fast(*inputs)
    g_fast = torch.autograd.grad(v_fast, inputs)
    v_slow = slow(*inputs)
    g_slow = torch.autograd.grad(v_slow, inputs)
    assert v_fast.item() == pytest.approx(v_slow.item(), rel=1e-10, abs=1e-10)
    for gf, gs in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("tau", [0.5, 1.0, 0.2])
def test_feature_contrastive_matches_loop(tau):
    a, b = _pair((6, 5), 0, "rows")
    _check_value_and_grad(
        lambda x, y: L.feature_contrastive(x, y, tau),
        lambda x, y: naive_pair_contrast(x, y, tau, cosine=False),
        (a, b),
    )


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_label_contrastive_matches_loop_on_columns(tau):
    q_m, q_n = _pair((7, 4), 1, "softmax")
    _check_value_and_grad(
        lambda x, y: L.label_contrastive(x, y, tau),
        lambda x, y: naive_pair_contrast(x.T, y.T, tau, cosine=True),
        (q_m, q_n),
    )


def test_entropy_regulariser_matches_loop_and_closed_forms():
    q, _ = _pair((9, 5), 2, "softmax")
    v = L.entropy_regulariser(q)
    assert v.item() == pytest.approx(naive_entropy(q).item(), rel=1e-12)
    g1 = torch.autograd.grad(v, q)[0]
    g2 = torch.autograd.grad(naive_entropy(q), q)[0]
    torch.testing.assert_close(g1, g2)
    uniform = torch.full((8, 4), 0.25, dtype=torch.float64)
    assert L.entropy_regulariser(uniform).item() == pytest.approx(0.0, abs=1e-12)
    collapsed = torch.tensor([[1 - 3e-9, 1e-9, 1e-9, 1e-9]] * 8, dtype=torch.float64)
    assert L.entropy_regulariser(collapsed).item() == pytest.approx(math.log(4), abs=1e-6)


def test_entropy_regulariser_is_the_official_form_to_the_bit_and_finite_on_an_empty_cluster():
    """Without empty clusters: the same bits as the official ``p * log(p)`` (value and gradient,
    fp32 as in training). With a cluster whose probabilities are all 0: the closed form over the
    other clusters (0 log 0 = 0), where the official form gives NaN, and a finite gradient."""
    torch.manual_seed(0)
    logits = torch.randn(68, 4, requires_grad=True)

    def official(q):
        p = q.sum(0)
        p = p / p.sum()
        return math.log(p.shape[0]) + (p * torch.log(p)).sum()

    q = torch.softmax(logits * 5, dim=1)
    ours, theirs = L.entropy_regulariser(q), official(q)
    assert torch.equal(ours, theirs)
    g_ours = torch.autograd.grad(ours, logits, retain_graph=True)[0]
    assert torch.equal(g_ours, torch.autograd.grad(theirs, logits)[0])
    dead = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], requires_grad=True)
    assert torch.isnan(official(dead))
    v = L.entropy_regulariser(dead)
    p = [0.75 / 2, 1.25 / 2]  # column sums over the total of 2
    assert v.item() == pytest.approx(math.log(3) + sum(x * math.log(x) for x in p), rel=1e-6)
    assert torch.isfinite(torch.autograd.grad(v, dead)[0]).all()


def test_reconstruction_forms():
    x = torch.arange(6.0).reshape(2, 3)
    r = torch.zeros(2, 3)
    sq = sum(float(v) ** 2 for v in range(6))
    assert L.reconstruction(x, r, "mean").item() == pytest.approx(sq / 6)
    assert L.reconstruction(x, r, "sum").item() == pytest.approx(sq / 2)
    with pytest.raises(ValueError, match="reconstruction form"):
        L.reconstruction(x, r, "median")


def test_finetune_cross_entropy_forms():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    t = torch.tensor([0, 2])
    paper = -(math.log(0.7) + math.log(0.8)) / 2
    assert L.finetune_cross_entropy(q, t, "ce").item() == pytest.approx(paper)
    # The code's double softmax: -log softmax(q)[target], q already a probability vector.
    row0 = -(0.7 - math.log(sum(math.exp(v) for v in (0.7, 0.2, 0.1))))
    row1 = -(0.8 - math.log(sum(math.exp(v) for v in (0.1, 0.1, 0.8))))
    code = (row0 + row1) / 2
    assert L.finetune_cross_entropy(q, t, "double_softmax").item() == pytest.approx(code)


def test_feature_loss_equals_log_2b_minus_1_when_all_similarities_are_equal():
    # Closed form: with every similarity equal, each row is a softmax over 2B-1 equal logits.
    b = 16
    h = torch.nn.functional.normalize(torch.ones(b, 8), dim=1)
    assert L.feature_contrastive(h, h.clone(), 0.5).item() == pytest.approx(math.log(2 * b - 1))


def test_initial_feature_loss_is_near_log_2b_minus_1():
    # A fresh network maps everything to nearly the same direction, so similarities are alike.
    torch.manual_seed(0)
    net = CMMCNetwork([30, 20], 5)
    b = 256
    xs = [torch.rand(b, 30), torch.rand(b, 20)]
    with torch.no_grad():
        out = net(xs, decode=False)
        loss = L.feature_contrastive(out["h"][0], out["h"][1], 0.5).item()
    assert abs(loss - math.log(2 * b - 1)) < 0.1 * math.log(2 * b - 1)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_matching_equals_brute_force(k):
    rng = np.random.default_rng(k)
    for _ in range(20):
        n = 40
        pred = rng.integers(0, k, n)
        pseudo = rng.integers(0, k, n)
        matched = match_pseudo_labels(pred, pseudo, k)
        best = max(
            sum(int(pred[i] == perm[pseudo[i]]) for i in range(n))
            for perm in itertools.permutations(range(k))
        )
        assert int((matched == pred).sum()) == best
        # matched is a renaming of pseudo: same partition
        pairs = {(int(a), int(b)) for a, b in zip(pseudo, matched, strict=True)}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_cooccurrence_against_loop():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    c = np.zeros((4, 4), int)
    for i in range(50):
        c[a[i], b[i]] += 1
    np.testing.assert_array_equal(cooccurrence(a, b, 4), c)


def test_matching_recovers_a_known_renaming():
    pred = np.array([0, 0, 1, 1, 2, 2, 2])
    pseudo = np.array([2, 2, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(match_pseudo_labels(pred, pseudo, 3), pred)
