"""Loss terms of CMMC, vectorised; each one is checked against a naive loop in tests/test_losses.py.

All pairwise contrastive losses follow the official MFLVC code: for two views the 2B (or 2K)
vectors are stacked, the positive of row i is the same sample (cluster) in the other view, the
negatives are every other row except i itself, and the cross-entropy is summed over rows and
divided by the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

import torch
import torch.nn.functional as F


def _paired_contrast(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent between the rows of ``a`` and ``b`` (both already L2-normalised, n x d)."""
    n = a.shape[0]
    stacked = torch.cat([a, b], dim=0)
    sim = stacked @ stacked.T / temperature
    # A row is never its own negative: mask the diagonal out of the softmax denominator.
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, target, reduction="sum") / (2 * n)


def feature_contrastive(h_m: torch.Tensor, h_n: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Feature contrastive loss between the high-level features of two views (rows = samples).

    ``h_m`` and ``h_n`` are B x d and L2-normalised by the model; at initialisation the loss is
    close to log(2B - 1) because all similarities are alike.
    """
    return _paired_contrast(h_m, h_n, tau)


def label_contrastive(q_m: torch.Tensor, q_n: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Label contrastive loss between the cluster columns of two assignment matrices (B x K).

    Each cluster k is the length-B vector q[:, k]; columns are compared by cosine similarity.
    The entropy regulariser is a separate term (:func:`entropy_regulariser`).
    """
    cols_m = F.normalize(q_m.T, dim=1, eps=1e-8)
    cols_n = F.normalize(q_n.T, dim=1, eps=1e-8)
    return _paired_contrast(cols_m, cols_n, tau)


def entropy_regulariser(q: torch.Tensor) -> torch.Tensor:
    """log K - H(p) with p the batch mean of the assignments: 0 when clusters are used evenly.

    A cluster whose probabilities all underflow to 0 in a batch contributes 0 (the limit of
    p log p) and no gradient; the official code's ``p * log(p)`` gives NaN there, and is
    otherwise computed the same, to the bit.
    """
    p = q.sum(0)
    p = p / p.sum()
    return math.log(p.shape[0]) + (p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum()


def reconstruction(x: torch.Tensor, x_rec: torch.Tensor, form: str = "mean") -> torch.Tensor:
    """Reconstruction error of one view.

    ``form="mean"`` is the official code (MSE averaged over all B x D entries);
    ``form="sum"`` is the paper's form, sum of squared norms averaged over the batch.
    """
    if form == "mean":
        return F.mse_loss(x_rec, x)
    if form == "sum":
        return ((x_rec - x) ** 2).sum(dim=1).mean()
    raise ValueError(f"reconstruction form must be 'mean' or 'sum', got {form!r}")


def finetune_cross_entropy(
    q: torch.Tensor, targets: torch.Tensor, form: str = "double_softmax"
) -> torch.Tensor:
    """Cross-entropy between soft assignments ``q`` (rows sum to 1) and matched pseudo labels.

    ``form="double_softmax"`` reproduces the official code, which feeds the already-softmaxed q
    into ``nn.CrossEntropyLoss`` (a second log-softmax); ``form="ce"`` is the paper's
    ``-mean(log q[i, target_i])``.
    """
    if form == "double_softmax":
        return F.cross_entropy(q, targets)
    if form == "ce":
        return F.nll_loss(torch.log(q.clamp_min(1e-12)), targets)
    raise ValueError(f"finetune loss form must be 'double_softmax' or 'ce', got {form!r}")


# -- the terms of the composed objective, by name ------------------------------------------------
# Each takes the network's output on a batch, the batch itself, the run's config (for the forms)
# and the two temperatures, and sums over view pairs or views. ``Config.losses`` is checked
# against this table; its order is the order in which the terms are added up.


def _pairs(xs: list[torch.Tensor]) -> list[tuple[int, int]]:
    return list(combinations(range(len(xs)), 2))


def _feature_term(out, xs, config, tau_f, tau_l) -> torch.Tensor:
    return sum(feature_contrastive(out["h"][m], out["h"][n], tau_f) for m, n in _pairs(xs))


def _label_term(out, xs, config, tau_f, tau_l) -> torch.Tensor:
    return sum(label_contrastive(out["q"][m], out["q"][n], tau_l) for m, n in _pairs(xs))


def _entropy_term(out, xs, config, tau_f, tau_l) -> torch.Tensor:
    per_view = [entropy_regulariser(q) for q in out["q"]]
    # The code adds both views' regulariser inside every pair: view m counts M-1 times.
    weight = len(xs) - 1 if config.entropy_form == "pair" else 1
    if config.entropy_weight != 1.0:  # the official code's runs keep their exact arithmetic
        weight = weight * config.entropy_weight
    return weight * sum(per_view)


def _reconstruction_term(out, xs, config, tau_f, tau_l) -> torch.Tensor:
    return sum(
        reconstruction(x, xr, config.recon_form) for x, xr in zip(xs, out["xr"], strict=True)
    )


TERMS: dict[str, Callable[..., torch.Tensor]] = {
    "feature": _feature_term,
    "label": _label_term,
    "entropy": _entropy_term,
    "reconstruction": _reconstruction_term,
}
