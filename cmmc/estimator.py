"""scikit-learn style estimator around the CMMC network and trainer."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmmc.config import Config, make_config
from cmmc.model import CMMCNetwork
from cmmc.train import Trainer, embed, read_out, set_seed, use_deterministic_cuda
from cmmc.validation import check_labels, check_n_clusters, check_same_dims, check_views


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda[:i]', or 'auto' (CUDA when available, else CPU)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch finds no CUDA device")
    return dev


class CMMC:
    """Contrastive Multi-Modal Clustering.

    Parameters
    ----------
    n_clusters : number of clusters K.
    random_state : seed fixing torch, numpy and k-means (same seed on the CPU, same labels).
    device : "cpu" (default), "cuda" or "auto".
    config : a :class:`~cmmc.config.Config`; keyword arguments override its fields
        (e.g. ``pretrain_epochs=10, tau_f=0.3, losses=("feature", "label")``).
    progress : show tqdm progress bars.

    After ``fit``: ``labels_``, ``history_`` (one dict per epoch), ``phase_seconds_``,
    ``pseudo_labels_``, ``network_``, ``config_``.
    """

    def __init__(
        self,
        n_clusters: int,
        random_state: int = 0,
        device: str = "cpu",
        config: Config | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> None:
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.device = device
        self.config = config
        self.progress = progress
        self.overrides = overrides

    def _config(self) -> Config:
        if self.config is None:
            return make_config(None, "paper", **self.overrides)
        return self.config.replace(**self.overrides) if self.overrides else self.config

    def _tensors(self, views: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(v).to(self.device_) for v in views]

    def fit(
        self,
        views: Sequence,
        y: Sequence | None = None,
        *,
        pretrain_cache: str | None = None,
        on_phase_end: Callable[[str, dict], None] | None = None,
    ) -> CMMC:
        """Train on ``views`` (list of N x D_m arrays). ``y`` only feeds the metric history.

        ``pretrain_cache``: a file path; when it exists, training continues from the saved end of
        pre-training (weights, Adam state, RNG), else pre-training runs and is saved there. The
        caller must key the path by everything pre-training depends on (the runner does).
        ``on_phase_end(phase, embedding)`` is called after each phase with the per-view z, h, q.
        """
        views = check_views(views)
        n = views[0].shape[0]
        k = check_n_clusters(self.n_clusters, n)
        labels = None if y is None else check_labels(y, n)
        self.config_ = self._config()
        self.device_ = resolve_device(self.device)
        if self.device_.type == "cuda":
            use_deterministic_cuda()
        set_seed(self.random_state)
        self.dims_ = [v.shape[1] for v in views]
        self.network_ = CMMCNetwork(self.dims_, k, self.config_.low_dim, self.config_.high_dim).to(
            self.device_
        )
        xs = self._tensors(views)
        trainer = Trainer(
            self.network_, xs, k, self.config_, self.random_state, labels, self.progress
        )
        if on_phase_end is not None:
            trainer.on_phase_end = lambda phase, tr: on_phase_end(
                phase,
                {k: [t.float().cpu().numpy() for t in v] for k, v in embed(tr.net, xs).items()},
            )
        skip = False
        if pretrain_cache is not None:
            path = Path(pretrain_cache)
            if path.exists():
                trainer.restore(torch.load(path, weights_only=False))
                skip = True
            else:
                trainer.pretrain()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(trainer.checkpoint(), tmp)
                os.replace(tmp, path)  # atomic: a killed run never leaves half a checkpoint
                skip = True
        state = trainer.fit(skip_pretrain=skip)
        self.history_ = state.history
        self.phase_seconds_ = state.phase_seconds
        self.pseudo_labels_ = state.pseudo_labels
        self.labels_ = read_out(embed(self.network_, xs)["q"])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise ValueError("this CMMC instance is not fitted yet: call fit(views) first")

    def embed(self, views: Sequence) -> dict[str, list[np.ndarray]]:
        """Per-view low-level z, high-level h and soft assignments q as numpy arrays."""
        self._check_fitted()
        views = check_views(views)
        check_same_dims(views, self.dims_)
        out = embed(self.network_, self._tensors(views))
        return {k: [t.float().cpu().numpy() for t in v] for k, v in out.items()}

    def predict(self, views: Sequence) -> np.ndarray:
        """Cluster of each sample: argmax of the view-averaged soft assignment."""
        q = self.embed(views)["q"]
        return np.mean(q, axis=0).argmax(1)

    def fit_predict(self, views: Sequence, y: Sequence | None = None) -> np.ndarray:
        """Fit, then return ``labels_``."""
        return self.fit(views, y).labels_

    def transform(self, views: Sequence) -> np.ndarray:
        """High-level features: the per-view h concatenated (N x 128M)."""
        return np.concatenate(self.embed(views)["h"], axis=1)
