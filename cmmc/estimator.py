"""scikit-learn style estimator around the CMMC network and :class:`~cmmc.train.Trainer`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from cmmc.config import Config, config_fields, one_preset, preset_fields
from cmmc.device import resolve_device
from cmmc.phases import embed
from cmmc.selection import Selection, select_for
from cmmc.train import Trainer
from cmmc.validation import check_same_dims, check_views

__all__ = ["CMMC", "resolve_device"]


class CMMC(ClusterMixin, BaseEstimator):
    """Contrastive Multi-Modal Clustering.

    Parameters
    ----------
    n_clusters : number of clusters K.
    random_state : integer seed of the network's initialisation, the shuffles and k-means (the
        same seed on the same CPU gives the same labels); no global generator is used or changed.
    device : "cpu" (default), "cuda" or "auto". On a GPU, call
        :func:`cmmc.device.use_deterministic_cuda` once first for run-to-run identical results.
    config : a base :class:`~cmmc.config.Config` (default: ``Config()``, the official code's
        settings and schedule).
    preset : a named configuration applied over ``config`` (:data:`cmmc.config.PRESETS`):
        None or "faithful" (the official code), "fast" (bf16 where the hardware has it, fused
        Adam), "robust" (for small sets with many clusters, not with a few clusters), "select"
        (robust with at most four times the code's pre-training batches per epoch, then a
        label-free choice between its labels and the simple baselines'); see the book's
        "Beyond the paper".
    variant : the former name of ``preset`` (still read).
    progress : show tqdm progress bars.
    pretrain_epochs, contrastive_epochs, ..., precision, fused_adam : every
        :class:`~cmmc.config.Config` field; ``None`` (the default) keeps the base config's value.
        The fast path: ``precision="auto"`` (bf16 where the CPU or GPU has it natively, else
        fp32) and ``fused_adam=True``; the defaults are the official code's (fp32, Adam's loop).

    After ``fit``: ``labels_``, ``history_`` (one dict per epoch), ``phase_seconds_``,
    ``pseudo_labels_``, ``network_``, ``config_``, ``device_``, ``dims_``; with
    a ``selection`` other than ``"none"`` also ``selection_`` (:class:`~cmmc.selection.Selection`: the chosen
    candidate and every candidate's score) and ``cmmc_labels_`` (CMMC's own). To train several seeds
    or temperatures at once, or to stop and resume between phases, drive a
    :class:`~cmmc.train.Trainer` and read each member with :meth:`from_trainer`.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        random_state: int = 0,
        device: str = "cpu",
        config: Config | None = None,
        preset: str | None = None,
        variant: str | None = None,
        progress: bool = True,
        pretrain_epochs: int | None = None,
        contrastive_epochs: int | None = None,
        finetune_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        tau_f: float | None = None,
        tau_l: float | None = None,
        low_dim: int | None = None,
        high_dim: int | None = None,
        hidden: Sequence[int] | None = None,
        losses: Sequence[str] | None = None,
        recon_form: str | None = None,
        entropy_form: str | None = None,
        finetune_form: str | None = None,
        kmeans_restarts: int | None = None,
        eval_every: int | None = None,
        precision: str | None = None,
        fused_adam: bool | None = None,
        min_batches: int | None = None,
        min_batches_pretrain: bool | None = None,
        pretrain_batch_factor: int | None = None,
        entropy_weight: float | None = None,
        pseudo_labels: str | None = None,
        selection: str | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.device = device
        self.config = config
        self.preset = preset
        self.variant = variant
        self.progress = progress
        self.pretrain_epochs = pretrain_epochs
        self.contrastive_epochs = contrastive_epochs
        self.finetune_epochs = finetune_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.tau_f = tau_f
        self.tau_l = tau_l
        self.low_dim = low_dim
        self.high_dim = high_dim
        self.hidden = hidden
        self.losses = losses
        self.recon_form = recon_form
        self.entropy_form = entropy_form
        self.finetune_form = finetune_form
        self.kmeans_restarts = kmeans_restarts
        self.eval_every = eval_every
        self.precision = precision
        self.fused_adam = fused_adam
        self.min_batches = min_batches
        self.min_batches_pretrain = min_batches_pretrain
        self.pretrain_batch_factor = pretrain_batch_factor
        self.entropy_weight = entropy_weight
        self.pseudo_labels = pseudo_labels
        self.selection = selection

    def _resolved_config(self) -> Config:
        """The base config with every field given as a keyword replaced (validated by Config)."""
        base = Config() if self.config is None else self.config
        if not isinstance(base, Config):
            raise ValueError(f"config must be a cmmc Config or None, got {type(base).__name__}")
        changes = {f: getattr(self, f) for f in config_fields() if getattr(self, f) is not None}
        preset = preset_fields(one_preset(self.preset, self.variant))
        return base.replace(**{**preset, **changes})

    def fit(self, views: Sequence, y: Sequence | None = None) -> CMMC:
        """Train on ``views`` (list of N x D_m arrays). ``y`` only feeds the metric history."""
        seed = self.random_state
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"random_state must be an integer seed, got {seed!r}")
        trainer = Trainer.for_data(
            views, y, self.n_clusters, self._resolved_config(), int(seed), self.device,
            self.progress,
        )  # fmt: skip
        self._set_fitted(trainer.fit(), 0)
        return self

    def _set_fitted(self, trainer: Trainer, member: int) -> None:
        state = trainer.state_of(member)
        labels = trainer.read_out()
        self.config_ = trainer.configs[member]
        self.device_ = trainer.device
        self.dims_ = list(trainer.dims)
        self.network_ = trainer.network(member)
        self.history_ = list(state.history)
        self.phase_seconds_ = dict(state.phase_seconds)
        self.pseudo_labels_ = state.pseudo_labels
        self.labels_ = labels[member] if trainer.stacked else labels
        self.selection_: Selection | None = None
        if self.config_.selection != "none":  # chosen without labels: trainer.y is not passed
            self.cmmc_labels_ = self.labels_
            self.selection_, seconds = select_for(trainer, member, self.labels_)
            self.labels_ = self.selection_.labels
            self.phase_seconds_["selection"] = seconds

    @classmethod
    def from_trainer(cls, trainer: Trainer, member: int = 0) -> CMMC:
        """A fitted estimator holding one member of ``trainer`` as it stands (its own copy of
        the network): ``labels_``, ``history_`` (epoch ``seconds`` and ``phase_seconds_`` are the
        whole trainer's), ``pseudo_labels_``, ``network_``, as after :meth:`fit`."""
        model = cls(
            trainer.k,
            random_state=trainer.seeds[member],
            device=str(trainer.device),
            config=trainer.configs[member],
            progress=trainer.progress,
        )
        model._set_fitted(trainer, member)
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise ValueError("this CMMC instance is not fitted yet: call fit(views) first")

    def embed(self, views: Sequence) -> dict[str, list[np.ndarray]]:
        """Per-view low-level z, high-level h and soft assignments q as numpy arrays."""
        self._check_fitted()
        views = check_views(views)
        check_same_dims(views, self.dims_)
        out = embed(self.network_, [torch.from_numpy(v).to(self.device_) for v in views])
        return {k: [t.float().cpu().numpy() for t in v] for k, v in out.items()}

    def predict(self, views: Sequence) -> np.ndarray:
        """Cluster of each sample: argmax of the view-averaged soft assignment. Where a selection
        chose a baseline (which clusters only the samples it saw), an error: use ``labels_``."""
        if getattr(self, "selection_", None) is not None and self.selection_.chosen != "cmmc":
            raise ValueError(
                f"the selection chose {self.selection_.chosen!r}, which cannot label new samples: "
                "read labels_ (or fit_predict) for the training samples"
            )
        q = self.embed(views)["q"]
        return np.mean(q, axis=0).argmax(1)

    def fit_predict(self, views: Sequence, y: Sequence | None = None) -> np.ndarray:
        """Fit, then return ``labels_``."""
        return self.fit(views, y).labels_

    def transform(self, views: Sequence) -> np.ndarray:
        """High-level features: the per-view h concatenated (N x 128M)."""
        return np.concatenate(self.embed(views)["h"], axis=1)
