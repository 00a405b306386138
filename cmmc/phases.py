"""What the three phases are made of, shared by one run and M stacked members: which Config fields
each phase's end state depends on (the key of every cache), the loss terms of a mini-batch, the
whole-set forward pass and the read-out of clusters.

1. reconstruction pre-training (mini-batches),
2. contrastive training: feature + label contrast + entropy + reconstruction (mini-batches),
3. pseudo labels (:mod:`cmmc.pseudo_labels`), then full-batch fine-tuning against them, renamed
   each step by maximum matching.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cmmc import losses as L
from cmmc.config import Config, changed_fields
from cmmc.matching import match_pseudo_labels
from cmmc.model import CMMCNetwork

EVAL_CHUNK = 8192  # samples per forward pass when the whole set is embedded
PHASES = ("pretrain", "contrastive", "finetune")

# The Config fields each phase adds to what its end state depends on (besides the data, the
# seed and the device). Every Config field is named once (tests/test_batched.py checks it).
_PHASE_FIELDS = {
    "pretrain": ("pretrain_epochs", "batch_size", "lr", "low_dim", "high_dim", "hidden", "recon_form",
                 "precision", "fused_adam", "min_batches", "min_batches_pretrain",
                 "pretrain_batch_factor", "eval_every"),  # eval: history
    "contrastive": ("contrastive_epochs", "tau_f", "tau_l", "losses", "entropy_form",
                    "entropy_weight"),
    "finetune": ("finetune_epochs", "kmeans_restarts", "finetune_form", "pseudo_labels",
                 "selection"),  # the choice after training: part of a run's last stage
}  # fmt: skip


def phases_to_run(
    until: str | None, done: Iterable[str], cache_stages: Iterable[str] = ()
) -> list[str]:
    """The phases up to and including ``until`` (None: all) not in ``done``, in order; a clear
    error for an unknown phase in ``until`` or ``cache_stages``."""
    if until is not None and until not in PHASES:
        raise ValueError(f"unknown phase {until!r}; known: {list(PHASES)}")
    unknown = set(cache_stages) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(PHASES)}")
    last = PHASES.index(until) + 1 if until is not None else len(PHASES)
    return [p for p in PHASES[:last] if p not in set(done)]


def matched_targets(q: torch.Tensor, pseudo: list[np.ndarray], n_clusters: int) -> torch.Tensor:
    """Fine-tuning targets of one view: each member's pseudo labels renamed to best match its
    current argmax (maximum matching). ``q``: (M x) N x C; ``pseudo``: one label array per
    member. The matching is host work: one CPU-GPU sync per view and step."""
    preds = q.detach().float().argmax(-1).cpu().numpy().reshape(len(pseudo), -1)
    matched = [match_pseudo_labels(p, t, n_clusters) for p, t in zip(preds, pseudo, strict=True)]
    return torch.from_numpy(np.stack(matched).reshape(q.shape[:-1])).to(q.device)


def stage_fields(stage: str) -> tuple[str, ...]:
    """Config fields the training state at the end of ``stage`` depends on (cumulative)."""
    if stage not in PHASES:
        raise ValueError(f"unknown stage {stage!r}; known: {list(PHASES)}")
    return sum((_PHASE_FIELDS[p] for p in PHASES[: PHASES.index(stage) + 1]), ())


def stage_key(config: Config, stage: str, identity: dict[str, Any] | None = None) -> str:
    """16-hex hash of the fields of :func:`stage_fields` and ``identity`` (data set, data
    options, seed, device, ...: whatever else the caller's state depends on)."""
    fields = stage_fields(stage)
    clash = set(fields) & set(identity or {})
    if clash:
        raise ValueError(f"identity repeats config fields {sorted(clash)}")
    payload = changed_fields({f: getattr(config, f) for f in fields})
    payload.update(identity or {})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_finite(seeds: list[int], phase: str, epoch: int, terms: list[dict[str, float]]) -> None:
    """Stop at the first epoch whose mean loss is not finite, naming it, rather than fail later
    in k-means or return labels read from NaN weights (``terms``: one dict per member)."""
    for seed, t in zip(seeds, terms, strict=True):
        bad = {k: v for k, v in t.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(
                f"seed {seed}: {phase} epoch {epoch} (of the whole run): loss terms {bad} are "
                "not finite; weights and labels would be meaningless"
            )


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss: the message names the seed, phase and epoch."""


@dataclass
class TrainState:
    """What one run (or one member) leaves behind besides the weights."""

    history: list[dict] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    pseudo_labels: list[np.ndarray] | None = None


@torch.no_grad()
def _embed_chunks(forward: Callable, xs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """``forward`` over the whole set in chunks; per view z, h, q (samples on the next-to-last
    axis, so one run's N x d and M members' M x N x d are joined alike)."""
    parts: dict[str, list[list[torch.Tensor]]] = {"z": [], "h": [], "q": []}
    for start in range(0, xs[0].shape[0], EVAL_CHUNK):
        out = forward([x[start : start + EVAL_CHUNK] for x in xs])
        for key in parts:
            parts[key].append(out[key])
    return {k: [torch.cat(c, -2) for c in zip(*v, strict=True)] for k, v in parts.items()}


def embed(net: CMMCNetwork, xs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Full-set forward pass in chunks (eval mode): per-view z, h, q on the device."""
    was_training = net.training
    net.eval()
    try:
        return _embed_chunks(lambda chunk: net(chunk, decode=False), xs)
    finally:
        net.train(was_training)


def read_out(qs: list[torch.Tensor]) -> np.ndarray:
    """Final clusters: argmax of the mean over views of the soft assignments (per member when
    the assignments are stacked)."""
    return torch.stack(qs).mean(0).argmax(-1).cpu().numpy()


def contrastive_terms(
    out: dict[str, list[torch.Tensor]],
    xs: list[torch.Tensor],
    config: Config,
    tau_f: float | torch.Tensor | None = None,
    tau_l: float | torch.Tensor | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms of one mini-batch from :data:`cmmc.losses.TERMS`, in the table's order:
    those named in ``config.losses`` (the contrastive phase), or in ``names``.

    ``tau_f``/``tau_l`` replace the config's temperatures (stacked members pass one each).
    """
    tau_f = config.tau_f if tau_f is None else tau_f
    tau_l = config.tau_l if tau_l is None else tau_l
    names = set(config.losses if names is None else names)
    return {k: term(out, xs, config, tau_f, tau_l) for k, term in L.TERMS.items() if k in names}
