"""The three training phases of CMMC, as in the official code, on tensors kept on the device.

1. reconstruction pre-training (mini-batches),
2. contrastive training: feature + label contrast + entropy + reconstruction (mini-batches),
3. pseudo labels by k-means on min-max scaled h, then full-batch fine-tuning against them,
   renamed each step by maximum matching.
One Adam optimiser is kept across all phases. Batches are index slices of a permutation.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from cmmc import losses as L
from cmmc.config import Config
from cmmc.matching import match_pseudo_labels
from cmmc.metrics import evaluate
from cmmc.model import CMMCNetwork

EVAL_CHUNK = 8192  # samples per forward pass when the whole set is embedded


@dataclass
class TrainState:
    """What a training run leaves behind besides the weights."""

    history: list[dict] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    pseudo_labels: list[np.ndarray] | None = None


def set_seed(seed: int) -> None:
    """Fix torch's and numpy's global generators (k-means gets the seed explicitly)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def use_deterministic_cuda() -> None:
    """Ask CUDA for run-to-run identical results (cuBLAS workspace, deterministic kernels).

    The cuBLAS variable must be set before the process's first CUDA matrix product; the
    runner's workers call this at start. Kernels without a deterministic version warn.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def autocast(device: torch.device, config: Config):
    """bf16 autocast when asked for, else a no-op context."""
    if config.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed(net: CMMCNetwork, xs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Full-set forward pass in chunks (eval mode): per-view z, h, q on the device."""
    was_training = net.training
    net.eval()
    n = xs[0].shape[0]
    parts: dict[str, list[list[torch.Tensor]]] = {"z": [], "h": [], "q": []}
    for start in range(0, n, EVAL_CHUNK):
        out = net([x[start : start + EVAL_CHUNK] for x in xs], decode=False)
        for key in parts:
            parts[key].append(out[key])
    net.train(was_training)
    return {k: [torch.cat(chunk, 0) for chunk in zip(*v, strict=True)] for k, v in parts.items()}


def read_out(qs: list[torch.Tensor]) -> np.ndarray:
    """Final clusters: argmax of the mean over views of the soft assignments."""
    return torch.stack(qs).mean(0).argmax(1).cpu().numpy()


def contrastive_terms(
    out: dict[str, list[torch.Tensor]],
    xs: list[torch.Tensor],
    config: Config,
    tau_f: float | torch.Tensor | None = None,
    tau_l: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The contrastive-phase loss terms of one mini-batch, each summed over pairs or views.

    ``tau_f``/``tau_l`` replace the config's temperatures (a batched run passes one per member).
    """
    use = set(config.losses)
    tau_f = config.tau_f if tau_f is None else tau_f
    tau_l = config.tau_l if tau_l is None else tau_l
    terms: dict[str, torch.Tensor] = {}
    pairs = list(combinations(range(len(xs)), 2))
    if "feature" in use:
        terms["feature"] = sum(
            L.feature_contrastive(out["h"][m], out["h"][n], tau_f) for m, n in pairs
        )
    if "label" in use:
        terms["label"] = sum(L.label_contrastive(out["q"][m], out["q"][n], tau_l) for m, n in pairs)
    if "entropy" in use:
        per_view = [L.entropy_regulariser(q) for q in out["q"]]
        # The code adds both views' regulariser inside every pair: view m counts M-1 times.
        weight = len(xs) - 1 if config.entropy_form == "pair" else 1
        terms["entropy"] = weight * sum(per_view)
    if "reconstruction" in use:
        terms["reconstruction"] = sum(
            L.reconstruction(x, xr, config.recon_form) for x, xr in zip(xs, out["xr"], strict=True)
        )
    return terms


def pseudo_labels(
    net: CMMCNetwork, xs: list[torch.Tensor], n_clusters: int, config: Config, seed: int
) -> list[np.ndarray]:
    """k-means (seeded, ``kmeans_restarts`` restarts) on each view's min-max scaled h."""
    return kmeans_pseudo_labels(embed(net, xs)["h"], n_clusters, config.kmeans_restarts, seed)


def kmeans_pseudo_labels(
    hs: list[torch.Tensor], n_clusters: int, restarts: int, seed: int
) -> list[np.ndarray]:
    """Pseudo labels of each view: seeded k-means on its min-max scaled h."""
    labels = []
    for h in hs:
        h = h.float().cpu().numpy()
        lo, hi = h.min(0), h.max(0)
        scaled = (h - lo) / np.where(hi > lo, hi - lo, 1.0)  # sklearn MinMaxScaler's rule
        km = KMeans(n_clusters, n_init=restarts, random_state=seed)
        labels.append(km.fit_predict(scaled.astype(np.float64)))
    return labels


class Trainer:
    """Runs the three phases on one network; records losses, metrics and times per epoch."""

    def __init__(
        self,
        net: CMMCNetwork,
        xs: list[torch.Tensor],
        n_clusters: int,
        config: Config,
        seed: int,
        y: np.ndarray | None = None,
        progress: bool = True,
    ) -> None:
        self.net, self.xs, self.k, self.config, self.seed = net, xs, n_clusters, config, seed
        self.y, self.progress = y, progress
        self.device = xs[0].device
        self.n = xs[0].shape[0]
        self.batch = min(config.batch_size, self.n)  # drop_last would leave no batch otherwise
        self.opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        self.state = TrainState()
        self.epoch = 0
        self.on_phase_end = None  # optional callable(phase, trainer), e.g. t-SNE snapshots

    def _batches(self):
        perm = torch.randperm(self.n, device=self.device)
        for b in range(self.n // self.batch):  # drop_last, as the official DataLoader
            idx = perm[b * self.batch : (b + 1) * self.batch]
            yield [x[idx] for x in self.xs]

    def _step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _record(self, phase: str, terms: dict[str, float], seconds: float) -> None:
        self.epoch += 1
        row = {"epoch": self.epoch, "phase": phase, "loss": sum(terms.values()), **terms}
        row["seconds"] = seconds
        every = self.config.eval_every
        if self.y is not None and every and (self.epoch % every == 0 or phase == "finetune"):
            row.update(evaluate(self.y, read_out(embed(self.net, self.xs)["q"])))
        self.state.history.append(row)

    def _run_phase(self, phase: str, epochs: int, epoch_fn) -> None:
        if epochs == 0:  # a skipped phase leaves no time entry
            return
        start = time.perf_counter()
        bar = tqdm(range(epochs), desc=phase, disable=not self.progress, leave=False)
        for _ in bar:
            t0 = time.perf_counter()
            terms = epoch_fn()
            self._record(phase, terms, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{sum(terms.values()):.4f}")
        self.state.phase_seconds[phase] = time.perf_counter() - start
        if self.on_phase_end is not None:
            self.on_phase_end(phase, self)

    def _minibatch_epoch(self, terms_fn) -> dict[str, float]:
        # Sums stay on the device: a float() per batch would make the CPU wait for the GPU.
        totals: dict[str, torch.Tensor] = {}
        n_batches = 0
        for xb in self._batches():
            with autocast(self.device, self.config):
                terms = terms_fn(xb)
            self._step(sum(terms.values()))
            for k, v in terms.items():
                v = v.detach().double()
                totals[k] = totals[k] + v if k in totals else v
            n_batches += 1
        return {k: float(v) / max(n_batches, 1) for k, v in totals.items()}

    def pretrain_terms(self, xb: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Phase 1: reconstruction only."""
        recs = self.net.reconstruct(xb)
        form = self.config.recon_form
        return {
            "reconstruction": sum(
                L.reconstruction(x, r, form) for x, r in zip(xb, recs, strict=True)
            )
        }

    def contrastive_batch_terms(self, xb: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Phase 2: the composed contrastive objective."""
        decode = "reconstruction" in self.config.losses
        return contrastive_terms(self.net(xb, decode=decode), xb, self.config)

    def finetune_step(self, targets: list[np.ndarray]) -> dict[str, float]:
        """Phase 3: one full-batch step against the pseudo labels, renamed by maximum matching."""
        with autocast(self.device, self.config):
            qs = [self.net.heads(z)[1] for z in self.net.encode(self.xs)]
            loss = 0.0
            for q, p in zip(qs, targets, strict=True):
                pred = q.detach().float().argmax(1).cpu().numpy()
                matched = torch.from_numpy(match_pseudo_labels(pred, p, self.k)).to(self.device)
                loss = loss + L.finetune_cross_entropy(
                    q.float(), matched, self.config.finetune_form
                )
        self._step(loss)
        return {"finetune": float(loss.detach())}

    def pretrain(self) -> None:
        """Phase 1 alone (reconstruction pre-training)."""
        self.net.train()
        self._run_phase(
            "pretrain",
            self.config.pretrain_epochs,
            lambda: self._minibatch_epoch(self.pretrain_terms),
        )

    def checkpoint(self) -> dict:
        """Everything needed to continue exactly where training stands (weights, Adam, RNG)."""
        return copy.deepcopy(
            {  # copies: later training must not change a kept checkpoint
                "net": self.net.state_dict(),
                "opt": self.opt.state_dict(),
                "rng": torch.get_rng_state(),
                "np_rng": np.random.get_state(),
                "epoch": self.epoch,
                "history": list(self.state.history),
                "phase_seconds": dict(self.state.phase_seconds),
            }
        )

    def restore(self, ckpt: dict) -> None:
        """Continue from :meth:`checkpoint` output; the result equals an uninterrupted run."""
        self.net.load_state_dict(ckpt["net"])
        self.opt.load_state_dict(ckpt["opt"])
        torch.set_rng_state(ckpt["rng"])
        np.random.set_state(ckpt["np_rng"])
        self.epoch = ckpt["epoch"]
        self.state.history = list(ckpt["history"])
        self.state.phase_seconds = dict(ckpt["phase_seconds"])

    def fit(self, skip_pretrain: bool = False) -> TrainState:
        """Run all phases (those with zero epochs are skipped)."""
        cfg = self.config
        if not skip_pretrain:
            self.pretrain()
        self.net.train()
        if cfg.losses:
            self._run_phase(
                "contrastive",
                cfg.contrastive_epochs,
                lambda: self._minibatch_epoch(self.contrastive_batch_terms),
            )
        if cfg.finetune_epochs > 0:
            t0 = time.perf_counter()
            targets = pseudo_labels(self.net, self.xs, self.k, cfg, self.seed)
            self.state.phase_seconds["pseudo_labels"] = time.perf_counter() - t0
            self.state.pseudo_labels = targets
            self._run_phase("finetune", cfg.finetune_epochs, lambda: self.finetune_step(targets))
        return self.state
