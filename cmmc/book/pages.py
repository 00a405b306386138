"""Code shared by the component pages: the run stopped at the end of the contrastive phase
(cached between pages), fine-tuning from there, the soft assignments of a run, and how a data
set's views are drawn as images.

Used by: the pages with a ``results_dir`` parameter (:func:`locate`); pseudo_labels.md,
finetuning.md, quirks.md (training); data.md, autoencoders.md (images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmmc.config import Config
from cmmc.data import Dataset, get_spec
from cmmc.phases import embed
from cmmc.train import Trainer


def locate(results_dir: str | Path, data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(the checkout's root, the records' folder) of a page: ``results_dir`` relative to
    ``book/`` unless absolute; a ``data_dir`` given becomes ``$CMMC_DATA_DIR`` for the page.

    Used by: every page with a ``results_dir`` parameter.
    """
    from cmmc.book.report import find_root, resolve_results

    root = find_root()
    if data_dir:
        os.environ["CMMC_DATA_DIR"] = str(Path(data_dir).resolve())
    return root, resolve_results(results_dir, root)


@dataclass
class Stages:
    """One page's run set-up: its data, seed and device, and the cache of the ends of
    pre-training and of the contrastive phase that the three pages share (``cache_dir``, keyed
    by the data set's ``name`` and everything the state depends on); ``rerun`` recomputes."""

    ds: Dataset
    seed: int
    device: str | torch.device
    cache_dir: Path
    name: str
    rerun: bool = False

    def trainer(self, config: Config) -> Trainer:
        """A fresh single run of ``config`` on the page's data (what ``CMMC.fit`` builds)."""
        ds = self.ds
        return Trainer.for_data(ds.views, ds.labels, ds.n_clusters, config, self.seed,
                                device=self.device, progress=False)  # fmt: skip

    def to_contrastive_end(self, config: Config) -> Trainer:
        """Exactly what ``CMMC(random_state=seed).fit`` does, stopped after the contrastive phase:
        the Trainer (network, the one Adam optimiser, shuffle generators) goes on from there. A
        restored cache continues exactly as an uninterrupted run."""
        return self.trainer(config).fit(
            until="contrastive", cache_dir=self.cache_dir, cache_identity={"dataset": self.name},
            cache_stages=("pretrain", "contrastive"), refresh_cache=self.rerun,
        )  # fmt: skip

    def pretrain_cache(self, config: Config) -> Path:
        """The cache file of the end of pre-training under ``config``."""
        return self.trainer(config).stage_path(self.cache_dir, "pretrain", {"dataset": self.name})


def finetune(tr: Trainer, config: Config) -> list[dict]:
    """The fine-tuning phase alone (pseudo labels, then ``finetune_epochs`` full-batch steps),
    with ``config``'s settings of that phase, from where ``tr`` stands; its history rows."""
    tr.set_config(config)
    tr.fit()
    return [r for r in tr.state.history if r["phase"] == "finetune"]


def soft_assignments(tr: Trainer) -> list[np.ndarray]:
    """Each view's soft assignments q of the whole set (evaluation mode), as float arrays."""
    return [t.float().cpu().numpy() for t in embed(tr.net, tr.xs)["q"]]


def image_layout(name: str) -> list[tuple[int, int, bool]] | None:
    """(height, width, column-major) of each view of a registry data set whose views are
    images (registry keys ``image_shape``, ``image_column_major``); None for other data.

    Used by: book/data.md, autoencoders.md.
    """
    spec = get_spec(name)
    if "image_shape" not in spec:
        return None
    height, width = spec["image_shape"]
    return [(int(height), int(width), bool(spec["image_column_major"]))] * len(spec["dims"])
