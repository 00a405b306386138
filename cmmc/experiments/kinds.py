"""Experiment kinds: what a run of each kind computes, and how the engines must treat it.

A kind (``kind`` in ``cmmc/experiments.toml``) is a :class:`Kind`: the function that computes a
record's body from a task and its data, plus properties as data: whether its configuration
is part of its key, whether it needs a fresh process, whether its device is part of what it
measures, whether several of its runs may train stacked in one batch. The engines read these
properties; no code path names a kind.

:func:`fit_cmmc` is the only place that builds and trains networks.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmmc.analysis import multilevel, tsne_2d
from cmmc.baselines import run_baselines
from cmmc.config import Config
from cmmc.data import Dataset, get_spec, load_dataset
from cmmc.device import map_threads
from cmmc.estimator import CMMC
from cmmc.members import BATCHABLE
from cmmc.metrics import evaluate
from cmmc.phases import stage_key
from cmmc.train import Trainer

Task = dict[str, Any]
PhaseHook = Callable[[str, dict[str, list[np.ndarray]]], None]
MEMBER_FIELDS: tuple[str, ...] = tuple(BATCHABLE)  # Config fields batch members may differ in
STAGE_CACHE = Path(".cache") / "stages"  # under a results folder: trained stage ends, reusable


# --------------------------------------------------------------------------------------------
# Data and training
# --------------------------------------------------------------------------------------------
def task_data(task: Task) -> Dataset:
    """The data of a run: its registry set, views and size (a seeded subset of a set read from
    files, or a generated set drawn from the run's seed)."""
    opts = task["data"]
    return load_dataset(
        task["dataset"],
        views=opts.get("views"),
        n_samples=opts.get("n_samples"),
        seed=task["seed"],
    )


def data_depends_on_seed(task: Task) -> bool:
    """Whether a run's samples depend on its seed (a subset, or a generated set)."""
    return "n_samples" in task["data"] or bool(get_spec(task["dataset"]).get("generated"))


def pretrain_key(task: Task, version: int) -> str:
    """Hash of everything the end of a run's pre-training depends on: the pre-training fields
    of its Config (:func:`cmmc.phases.stage_fields`), its data, seed and device, and the record
    ``version``. Runs with equal keys can share one pre-training."""
    identity = {"dataset": task["dataset"], "data": task["data"], "seed": task["seed"]}
    identity.update(device=task["device"], v=version)
    return stage_key(Config(**task["config"]), "pretrain", identity)


def fit_cmmc(
    tasks: list[Task],
    ds: Dataset,
    device: torch.device,
    *,
    cache_dir: Path | None = None,
    on_phase_end: PhaseHook | None = None,
    share_pretraining: bool = True,
) -> tuple[list[CMMC], bool]:
    """Train one CMMC model per task on ``ds``; returns the fitted estimators and whether the
    training continued from a cached stage end.

    One task is one run (seeded as ``CMMC(random_state=seed).fit``); several are stacked members
    of one batch (they may differ only in seed and :data:`MEMBER_FIELDS`; with
    ``share_pretraining`` members with the same seed pre-train once). ``cache_dir``: the end of
    pre-training is loaded from there, or saved there. ``on_phase_end(phase, embedding)`` gets
    the per-view z, h, q after each phase that ran.
    """
    configs = [Config(**t["config"]) for t in tasks]
    seeds = [t["seed"] for t in tasks]
    if len(tasks) == 1:
        trainer = Trainer.for_data(
            ds.views, ds.labels, ds.n_clusters, configs[0], seeds[0], str(device), progress=False
        )
    else:
        trainer = Trainer.for_members(
            ds.views, ds.labels, ds.n_clusters, seeds, configs, str(device), progress=False,
            share_pretraining=share_pretraining,
        )  # fmt: skip
    if on_phase_end is not None:
        trainer.on_phase_end = lambda phase, tr: on_phase_end(
            phase, {k: [a.float().cpu().numpy() for a in v] for k, v in tr.embed().items()}
        )
    identity = {"dataset": tasks[0]["dataset"], "data": tasks[0]["data"]}
    trainer.fit(cache_dir=cache_dir, cache_identity=identity if cache_dir else None)
    models = [CMMC.from_trainer(trainer, member=i) for i in range(len(tasks))]
    return models, trainer.loaded_stage is not None


def pack_labels(labels: np.ndarray) -> str:
    """Cluster labels (0..K-1, K <= 65536) as a short string for a record: "u1:" or "u2:" and
    the base64 of their uint8 or uint16 little-endian bytes."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and (lab.min() < 0 or lab.max() >= 65536)):
        raise ValueError(f"pack_labels takes 1-d labels in 0..65535, got shape {lab.shape}")
    wide = bool(lab.size) and lab.max() >= 256
    raw = lab.astype("<u2" if wide else "u1").tobytes()
    return ("u2:" if wide else "u1:") + base64.b64encode(raw).decode("ascii")


def unpack_labels(text: str) -> np.ndarray:
    """The int64 labels of a :func:`pack_labels` string."""
    kind, _, body = text.partition(":")
    if kind not in ("u1", "u2"):
        raise ValueError(f"packed labels must start with 'u1:' or 'u2:', got {text[:8]!r}")
    return np.frombuffer(base64.b64decode(body), "u1" if kind == "u1" else "<u2").astype(np.int64)


# --------------------------------------------------------------------------------------------
# Record bodies, one function per kind
# --------------------------------------------------------------------------------------------
def fitted_body(task: Task, ds: Dataset, model: CMMC) -> dict[str, Any]:
    """The record fields of one fitted model: metrics, losses, history, analyses, label hash."""
    rec: dict[str, Any] = {"metrics": evaluate(ds.labels, model.labels_)}
    rec["clusters_used"] = int(len(np.unique(model.labels_)))
    contrastive = [r["loss"] for r in model.history_ if r["phase"] == "contrastive"]
    rec["final_contrastive_loss"] = contrastive[-1] if contrastive else None
    rec["final_loss"] = model.history_[-1]["loss"] if model.history_ else None
    rec["history"] = model.history_
    rec["phase_seconds"] = model.phase_seconds_
    if model.pseudo_labels_ is not None:  # phase 3's targets: how good they were, per view
        rec["pseudo_labels"] = [
            {**evaluate(ds.labels, p), "clusters_used": int(len(np.unique(p)))}
            for p in model.pseudo_labels_
        ]
    if task["options"].get("multilevel"):
        rec["multilevel"] = multilevel(
            model.embed(ds.views), ds.labels, ds.n_clusters, task["seed"]
        )
    if getattr(model, "selection_", None) is not None:  # chosen without labels; scored here
        rec["selection"] = [
            {**row, "metrics": evaluate(ds.labels, lab), "labels": pack_labels(lab)}
            for row in model.selection_.table()
            for lab in [model.selection_.labels_of(row["candidate"])]
        ]  # the labels let a later criterion be studied on these runs without training again
    rec["labels_sha256"] = hashlib.sha256(np.asarray(model.labels_, np.int64).tobytes()).hexdigest()
    return rec


def run_cmmc(task: Task, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """One CMMC run; the end of its pre-training is cached under ``<results>/.cache/stages``
    when the plan marked it as shared with other runs (``cache_pretrain``)."""
    cache_dir = None
    if task.get("cache_pretrain") and task.get("results") and task["config"]["pretrain_epochs"]:
        cache_dir = Path(task["results"]) / STAGE_CACHE
    (model,), cached = fit_cmmc([task], ds, device, cache_dir=cache_dir)
    body = fitted_body(task, ds, model)
    body["pretrain_from_cache"] = cached
    return body


def run_cmmc_batch(
    tasks: list[Task], ds: Dataset, device: torch.device, share_pretraining: bool
) -> list[dict[str, Any]]:
    """CMMC runs of one configuration trained at once (stacked); one body per task."""
    models, _ = fit_cmmc(tasks, ds, device, share_pretraining=share_pretraining)
    bodies = map_threads(lambda i: fitted_body(tasks[i], ds, models[i]), range(len(tasks)))
    for body in bodies:
        body["pretrain_from_cache"] = False
    return bodies


def run_tsne(task: Task, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """A CMMC run with 2-d t-SNE maps of z, h and q of ``tsne_points`` seeded samples at the end
    of each phase."""
    rng = np.random.default_rng(task["seed"])
    n_points = min(task["options"]["tsne_points"], ds.n_samples)
    pick = np.sort(rng.choice(ds.n_samples, n_points, replace=False))
    snapshots: dict[str, Any] = {"indices": pick.tolist(), "labels": ds.labels[pick].tolist()}

    def snapshot(phase: str, emb: dict[str, list[np.ndarray]]) -> None:
        snapshots[phase] = {
            k: [tsne_2d(v[pick], task["seed"]).round(3).tolist() for v in emb[k]]
            for k in ("z", "h", "q")
        }

    (model,), _ = fit_cmmc([task], ds, device, on_phase_end=snapshot)
    body = fitted_body(task, ds, model)
    body["pretrain_from_cache"] = False
    body["tsne"] = snapshots
    return body


def run_scalability(task: Task, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """A CMMC run timed per epoch: the median seconds of an epoch of each phase (the first
    epoch carries warm-up costs)."""
    (model,), _ = fit_cmmc([task], ds, device)
    body = fitted_body(task, ds, model)
    body["pretrain_from_cache"] = False
    per_epoch: dict[str, float] = {}
    for phase in ("pretrain", "contrastive", "finetune"):
        secs = [r["seconds"] for r in body["history"] if r["phase"] == phase]
        if secs:
            per_epoch[phase] = float(np.median(secs))
    body["seconds_per_epoch"] = per_epoch
    body["n_samples"] = ds.n_samples
    return body


def run_baseline_methods(task: Task, ds: Dataset, device: torch.device) -> dict[str, Any]:
    """The classic methods (:func:`cmmc.baselines.run_baselines`) on the CPU."""
    return {"baselines": run_baselines(ds.views, ds.labels, ds.n_clusters, task["seed"])}


# --------------------------------------------------------------------------------------------
# The kinds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """How the engines treat the runs of one kind.

    ``run(task, ds, device)`` returns the record's body. ``run_batch(tasks, ds, device,
    share_pretraining)``, where given, trains runs of one configuration at once (the kind is
    ``batchable``). ``uses_config``: the Config is part of the run's key (a kind that ignores it
    does not get a new key when a Config default changes). ``fresh_process``: each run needs a
    process of its own (it records its process's peak memory). ``device_in_identity``: the
    device is what the run measures, so the same run on another device is another run.
    """

    run: Callable[[Task, Dataset, torch.device], dict[str, Any]]
    run_batch: Callable[[list[Task], Dataset, torch.device, bool], list[dict[str, Any]]] | None = (
        None
    )
    uses_config: bool = True
    fresh_process: bool = False
    device_in_identity: bool = False

    @property
    def batchable(self) -> bool:
        """Whether runs of this kind may train stacked in one batch."""
        return self.run_batch is not None


KINDS: dict[str, Kind] = {
    "cmmc": Kind(run_cmmc, run_batch=run_cmmc_batch),
    "tsne": Kind(run_tsne),
    "scalability": Kind(run_scalability, fresh_process=True, device_in_identity=True),
    "baselines": Kind(run_baseline_methods, uses_config=False),
}


def kind_of(task: Task | dict[str, Any]) -> Kind:
    """The :class:`Kind` of a task or record."""
    try:
        return KINDS[task["kind"]]
    except KeyError:
        raise ValueError(
            f"unknown experiment kind {task.get('kind')!r}; known: {sorted(KINDS)}"
        ) from None
