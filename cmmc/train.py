"""The Trainer: CMMC's three phases for one run, or for M stacked members, in one loop.

One Adam optimiser is kept across all phases (as in the official code). Batches are index
slices of a permutation. Each phase is an (epochs, batches, terms) triple fed to the same loop
(:meth:`Trainer._run_phase`); what the phases are made of lives in :mod:`cmmc.phases`. The terms
of a phase are written once, for one member's weights, over ``functional_call``: a single run
calls them directly, and M members (seeds, temperatures) call them through ``vmap`` over stacked
weights, so each kernel launch does M runs' work. Every member follows its single run step for
step (the same initial weights, shuffles, Adam update and seeded k-means); only the batched matrix
products may sum in another order (``tests/test_batched.py`` compares them).

Around it: :mod:`cmmc.device` (device, precision), :mod:`cmmc.pseudo_labels`,
:mod:`cmmc.members` (what M members share) and :mod:`cmmc.checkpoint` (state and caches).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from cmmc import losses as L
from cmmc.checkpoint import Checkpoints
from cmmc.config import Config
from cmmc.device import adam, autocast, map_threads, resolve_device, resolve_precision
from cmmc.members import (
    MemberConfigs,
    build_members,
    check_members,
    member_generator,
    pretrain_groups,
)
from cmmc.metrics import evaluate
from cmmc.model import CMMCNetwork
from cmmc.phases import (
    PHASES,
    _embed_chunks,
    check_finite,
    contrastive_terms,
    matched_targets,
    phases_to_run,
    read_out,
)
from cmmc.pseudo_labels import pseudo_labels
from cmmc.validation import check_labels, check_n_clusters, check_views


class Trainer(MemberConfigs, Checkpoints):
    """Runs the three phases for one network, or for M stacked member networks at once.

    One run: ``nets`` is a network, ``configs`` a Config, ``seeds`` an int; ``trainer.net`` is that
    network, trained in place. M members: lists of M networks, Configs (differing only in
    :data:`BATCHABLE`) and seeds; their weights are stacked and the same loop maps over them.
    ``generators``: each member's shuffle generator (default: as a single run's would be now).
    ``share_pretraining``: members with the same seed pre-train once
    (:func:`~cmmc.members.pretrain_groups`).
    Build one with :meth:`for_data` / :meth:`for_members`, then :meth:`fit`.
    """

    def __init__(
        self,
        nets: CMMCNetwork | Sequence[CMMCNetwork],
        xs: list[torch.Tensor],
        n_clusters: int,
        configs: Config | Sequence[Config],
        seeds: int | Sequence[int],
        y: np.ndarray | None = None,
        progress: bool = True,
        generators: Sequence[torch.Generator] | None = None,
        share_pretraining: bool = True,
    ) -> None:
        self.stacked = not isinstance(nets, CMMCNetwork)
        members = list(nets) if self.stacked else [nets]
        device = next(members[0].parameters()).device
        # "auto" is settled here: the configs (and records) name the precision actually used.
        configs = list(configs) if self.stacked else [configs]
        self.configs = [
            c.replace(precision=resolve_precision(c.precision, device)) for c in configs
        ]
        self.seeds = [int(s) for s in seeds] if self.stacked else [int(seeds)]
        check_members(self.seeds, self.configs)
        self.xs, self.k, self.y, self.progress = xs, n_clusters, y, progress
        self.share_pretraining = share_pretraining
        self.device = xs[0].device
        self.n = xs[0].shape[0]
        self.dims = [x.shape[1] for x in xs]
        # The template holds no weights: functional_call sees only self.params.
        self.template = copy.deepcopy(members[0]).to("meta")
        if self.stacked:
            self.net = None
            self.params, _ = stack_module_state(members)  # fresh leaves, M x ...
        else:
            self.net = members[0]  # one run trains its network's own parameters
            self.params = dict(self.net.named_parameters())
        self.opt = adam(self.params.values(), self.config)
        if generators is None:
            generators = [member_generator(s, self.device) for s in self.seeds]
        self.gens = list(generators)
        self._derive()
        self.histories: list[list[dict]] = [[] for _ in self.seeds]
        self.phase_seconds: dict[str, float] = {}
        self.pseudo_labels: list[list[np.ndarray]] | None = None  # per member, per view
        self.epoch = 0
        self.phases_done: list[str] = []
        self.loaded_stage: str | None = None  # the cached stage end the last fit continued from
        self.on_phase_end: Callable[[str, Trainer], None] | None = None  # e.g. t-SNE snapshots
        self._data_sha256: str | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def for_data(
        cls,
        views: Sequence,
        y: Sequence | None,
        n_clusters: int,
        config: Config,
        seed: int,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> Trainer:
        """One run: validates the views, builds the network from ``seed`` (global RNG untouched)."""
        return cls._build(views, y, n_clusters, [seed], [config], device, progress, False, True)

    @classmethod
    def for_members(
        cls,
        views: Sequence,
        y: Sequence | None,
        n_clusters: int,
        seeds: Sequence[int],
        configs: Sequence[Config],
        device: str | torch.device = "cpu",
        progress: bool = True,
        share_pretraining: bool = True,
    ) -> Trainer:
        """M stacked members, each built exactly as its single run (:meth:`for_data`) would be."""
        seeds, configs = list(seeds), list(configs)
        return cls._build(views, y, n_clusters, seeds, configs, device, progress, True,
                          share_pretraining)  # fmt: skip

    @classmethod
    def _build(cls, views, y, n_clusters, seeds, configs, device, progress, stacked, share):
        views = check_views(views)
        n = views[0].shape[0]
        k = check_n_clusters(n_clusters, n)
        labels = None if y is None else check_labels(y, n)
        dev = resolve_device(device)
        nets, gens = build_members([v.shape[1] for v in views], k, seeds, configs, dev)
        xs = [torch.from_numpy(v).to(dev) for v in views]
        if not stacked:
            return cls(nets[0], xs, k, configs[0], seeds[0], labels, progress, gens)
        return cls(nets, xs, k, configs, seeds, labels, progress, gens, share)

    # -- one member's computations, mapped over the stack for M members ------------------------
    def _map(self, fn: Callable, in_dims: tuple) -> Callable:
        """``fn`` itself for one run; ``vmap(fn, in_dims)`` over the members' stacked weights."""
        return vmap(fn, in_dims=in_dims) if self.stacked else fn

    def _forward(self, params, xs, decode: bool, heads: bool = True) -> dict[str, list]:
        return functional_call(self.template, params, (xs,), {"decode": decode, "heads": heads})

    def _terms(self, names: tuple[str, ...], taus: tuple) -> Callable:
        """Batch -> the named terms of every member (M-vectors, or scalars for one run)."""
        decode, heads = "reconstruction" in names, names != ("reconstruction",)

        def member(params, xb, tau_f, tau_l):
            out = self._forward(params, xb, decode, heads)
            return contrastive_terms(out, xb, self.config, tau_f, tau_l, names)

        mapped = self._map(member, (0, 0, *(None if t is None else 0 for t in taus)))
        return lambda xb: mapped(self.params, xb, *taus)

    def _finetune_terms(self, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Phase 3's loss: cross-entropy to the pseudo labels, renamed to the current argmax."""
        forward = self._map(lambda p, x: self._forward(p, x, decode=False)["q"], (0, None))
        form = self.config.finetune_form
        cross_entropy = self._map(lambda q, t: L.finetune_cross_entropy(q, t, form), (0, 0))
        loss = 0.0
        for m, q in enumerate(forward(self.params, xs)):  # q: (M x) N x C
            target = matched_targets(q, [member[m] for member in self.pseudo_labels], self.k)
            loss = loss + cross_entropy(q.float(), target)
        return {"finetune": loss}

    def embed(self) -> dict[str, list[torch.Tensor]]:
        """Whole-set z, h, q per view: N x d for one run, M x N x d for M members."""
        forward = self._map(lambda p, c: self._forward(p, c, decode=False), (0, None))
        return _embed_chunks(lambda chunk: forward(self.params, chunk), self.xs)

    def read_out(self) -> np.ndarray:
        """Clusters of every sample: N labels for one run, M x N for M members."""
        return read_out(self.embed()["q"])

    # -- the loop ------------------------------------------------------------------------------
    def _shuffled(self, batch: int) -> Iterator[list[torch.Tensor]]:
        """Mini-batches of ``batch`` samples of a fresh permutation per member (drop_last, as the
        official DataLoader); (M x) B x D per view."""
        perms = torch.stack(
            [torch.randperm(self.n, generator=g, device=self.device) for g in self.gens]
        )
        if not self.stacked:
            perms = perms[0]
        for b in range(self.n // batch):
            idx = perms[..., b * batch : (b + 1) * batch]
            yield [x[idx] for x in self.xs]

    def _whole_set(self) -> Iterator[list[torch.Tensor]]:
        yield self.xs  # one full batch, shared by all members

    def _phase(self, name: str) -> tuple[int, Callable, Callable]:
        """(epochs, batches, terms) of a phase: every phase is fed to the same loop."""
        cfg = self.config
        if name == "pretrain":
            terms = self._terms(("reconstruction",), (None, None))
            return cfg.pretrain_epochs, partial(self._shuffled, self.pretrain_batch), terms
        if name == "contrastive":
            epochs = cfg.contrastive_epochs if cfg.losses else 0
            return (
                epochs,
                partial(self._shuffled, self.batch),
                self._terms(tuple(cfg.losses), self.taus),
            )
        if name == "finetune":
            return cfg.finetune_epochs, self._whole_set, self._finetune_terms
        raise ValueError(f"unknown phase {name!r}; known: {list(PHASES)}")

    def _step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def epoch_losses(self, name: str) -> list[dict[str, float]]:
        """One epoch of phase ``name`` (no record): each member's mean loss terms."""
        _, batches, terms_fn = self._phase(name)
        # Sums stay on the device: a float() per batch would make the CPU wait for the GPU.
        totals: dict[str, torch.Tensor] = {}
        n_batches = 0
        for xb in batches():
            with autocast(self.device, self.config):
                terms = terms_fn(xb)
            # Each member's loss depends on its own weights only: the sum's gradient is theirs.
            self._step(sum(terms.values()).sum())
            for key, v in terms.items():
                v = v.detach().double()
                totals[key] = totals[key] + v if key in totals else v
            n_batches += 1
        # The epoch's one CPU-GPU sync: the members' mean terms as Python floats.
        means = {key: (v / max(n_batches, 1)).reshape(-1).tolist() for key, v in totals.items()}
        return [{key: means[key][i] for key in means} for i in range(len(self.gens))]

    def _record(self, phase: str, terms: list[dict[str, float]], seconds: float) -> None:
        self.epoch += 1
        every = self.config.eval_every
        labels = None
        if self.y is not None and every and (self.epoch % every == 0 or phase == "finetune"):
            labels = self.read_out().reshape(len(terms), -1)
        for i, t in enumerate(terms):
            row = {"epoch": self.epoch, "phase": phase, "loss": sum(t.values()), **t}
            row["seconds"] = seconds  # a batch's wall time is shared by its members
            if labels is not None:
                row.update(evaluate(self.y, labels[i]), clusters_used=len(np.unique(labels[i])))
            self.histories[i].append(row)

    def _pseudo_label(self) -> None:
        """Each member's seeded pseudo labels from its h (members in parallel threads)."""
        t0 = time.perf_counter()
        hs = self.embed()["h"]

        def one(i: int) -> list[np.ndarray]:
            own = [h[i] for h in hs] if self.stacked else hs
            return pseudo_labels(own, self.k, self.config, self.seeds[i])

        # One run keeps k-means' own thread pool, as it always has.
        members = range(len(self.seeds))
        self.pseudo_labels = map_threads(one, members) if self.stacked else [one(0)]
        self.phase_seconds["pseudo_labels"] = time.perf_counter() - t0

    def _run_phase(self, name: str) -> bool:
        """All epochs of one phase; False when it has none (then it leaves no time entry)."""
        epochs = self._phase(name)[0]
        if epochs == 0:
            return False
        if name == "finetune":
            self._pseudo_label()
        start = time.perf_counter()
        desc = f"{name} x{len(self.gens)}" if self.stacked else name
        bar = tqdm(range(epochs), desc=desc, disable=not self.progress, leave=False)
        for _ in bar:
            t0 = time.perf_counter()
            terms = self.epoch_losses(name)
            # shared pre-training trains one member per distinct seed, in order of appearance
            seeds = self.seeds if len(terms) == len(self.seeds) else list(dict.fromkeys(self.seeds))
            check_finite(seeds, name, self.epoch + 1, terms)
            self._record(name, terms, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{sum(terms[0].values()):.4f}")
        self.phase_seconds[name] = time.perf_counter() - start
        return True

    def _run(self, name: str) -> None:
        # members with the same seed pre-train once (cmmc.members.pretrain_groups)
        share = self.stacked and self.share_pretraining and self.config.pretrain_epochs
        groups = pretrain_groups(self.seeds) if name == "pretrain" and share else None
        if groups is not None:
            self._select_members(groups[0])
        ran = self._run_phase(name)
        if groups is not None:
            self._select_members(groups[1])
        self.phases_done.append(name)
        if ran and self.on_phase_end is not None:
            self.on_phase_end(name, self)

    def fit(
        self,
        until: str | None = None,
        cache_dir: str | Path | None = None,
        cache_identity: dict[str, Any] | None = None,
        cache_stages: Sequence[str] = ("pretrain",),
        refresh_cache: bool = False,
    ) -> Trainer:
        """Run the phases not yet run, up to and including ``until`` (default: all).

        With ``cache_dir``, the end state of each stage in ``cache_stages`` is read from
        :meth:`stage_path` when there (training continues exactly as an uninterrupted run), else
        computed and saved there; ``refresh_cache`` recomputes and overwrites. ``cache_identity``:
        what else the state depends on (data set name, data options, ...), added to the key
        besides what the trainer knows (seeds, members, K, device, a hash of the data).
        """
        todo = phases_to_run(until, self.phases_done, cache_stages)
        cached = [p for p in todo if cache_dir is not None and p in cache_stages]
        self.loaded_stage = (
            None if refresh_cache else self._resume(cached, cache_dir, cache_identity)
        )
        for p in todo:
            if p in self.phases_done:  # read from the cache
                continue
            self._run(p)
            if p in cached:
                self.save(self.stage_path(cache_dir, p, cache_identity))
        return self
