"""Several seeds (and temperatures) of one CMMC configuration, trained at once in one process.

A single run is a few thousand small steps: on a GPU it waits on kernel launches, not on
arithmetic. Here the members' weights are stacked (K x ...) and the unchanged single-run code
(:class:`~cmmc.model.CMMCNetwork`, :mod:`cmmc.losses`) is mapped over them with
``torch.func.vmap``, so each launch does K runs' work.

Every member follows the single-run path of :class:`cmmc.estimator.CMMC` step for step: the same
initial weights (built right after ``set_seed(seed)``), the same shuffles (a generator in the
state the single run's would have), the same Adam update (element-wise, so stacking changes
nothing), the same seeded k-means. Only the matrix products run batched, which can change the
floating-point summation order: ``tests/test_batched.py`` compares members with separate runs.
A batched run is reproduced exactly by rerunning the same batch (records name their members).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from cmmc import losses as L
from cmmc.config import Config
from cmmc.estimator import CMMC, resolve_device
from cmmc.matching import match_pseudo_labels
from cmmc.metrics import evaluate
from cmmc.model import CMMCNetwork
from cmmc.train import (
    EVAL_CHUNK,
    autocast,
    contrastive_terms,
    kmeans_pseudo_labels,
    set_seed,
    use_deterministic_cuda,
)
from cmmc.validation import check_labels, check_n_clusters, check_views

BATCHABLE = ("tau_f", "tau_l")  # Config fields in which the members of one batch may differ


def check_members(seeds: Sequence[int], configs: Sequence[Config]) -> Config:
    """The members' shared configuration; a clear error when they cannot share one batch."""
    if len(seeds) != len(configs) or not seeds:
        raise ValueError(
            f"need one config per seed, got {len(seeds)} seeds, {len(configs)} configs"
        )
    base = configs[0]
    for i, cfg in enumerate(configs):
        differ = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in BATCHABLE and getattr(cfg, f.name) != getattr(base, f.name)
        ]
        if differ:
            raise ValueError(
                f"batch member {i} differs from member 0 in {differ}: only the seed and "
                f"{list(BATCHABLE)} may differ within one batch"
            )
    members = [(s, c.tau_f, c.tau_l) for s, c in zip(seeds, configs, strict=True)]
    if len(set(members)) != len(members):
        raise ValueError(f"a batch lists the same (seed, tau_f, tau_l) twice: {members}")
    return base


def _member_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator a single run's shuffles would come from, right after building its network.

    On the CPU that is the global generator (advanced by weight initialisation); on CUDA it is
    the device's generator, seeded by ``torch.manual_seed`` and untouched by initialisation.
    """
    if device.type == "cpu":
        g = torch.Generator()
        g.set_state(torch.get_rng_state())
    else:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
    return g


def map_threads(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` over as many Python threads as torch may use here.

    Each member's k-means is CPU work that would otherwise run one after another; sklearn's
    k-means releases the GIL. Each call gets one OpenMP thread: k-means with several threads
    sums in a varying order, and the labels of a seed must not depend on the machine's load.
    """
    from threadpoolctl import threadpool_limits

    def one(x):
        with threadpool_limits(1, user_api="openmp"):
            return fn(x)

    items = list(items)
    workers = max(1, min(torch.get_num_threads(), len(items)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


class BatchedTrainer:
    """The three phases of :class:`cmmc.train.Trainer`, for K stacked members."""

    def __init__(
        self,
        nets: list[CMMCNetwork],
        generators: list[torch.Generator],
        xs: list[torch.Tensor],
        n_clusters: int,
        configs: list[Config],
        seeds: list[int],
        y: np.ndarray | None = None,
        progress: bool = True,
        share_pretraining: bool = True,
    ) -> None:
        self.share_pretraining = share_pretraining
        self.nets, self.gens, self.xs, self.k = nets, generators, xs, n_clusters
        self.config, self.seeds, self.y, self.progress = configs[0], seeds, y, progress
        self.device = xs[0].device
        self.n = xs[0].shape[0]
        self.batch = min(self.config.batch_size, self.n)
        self.template = nets[0]
        member_params = [dict(net.named_parameters()) for net in nets]
        self._set_params(
            {
                name: torch.stack([p[name].detach() for p in member_params])
                for name in member_params[0]
            }
        )
        # Shared temperatures stay Python floats: exactly the single run's arithmetic.
        self.taus = [None, None]
        for i, name in enumerate(BATCHABLE):
            values = [getattr(c, name) for c in configs]
            if len(set(values)) > 1:
                self.taus[i] = torch.tensor(values, device=self.device)
        self.histories: list[list[dict]] = [[] for _ in seeds]
        self.phase_seconds: dict[str, float] = {}
        self.pseudo_labels: list[list[np.ndarray]] | None = None
        self.epoch = 0

    # -- one member's computations (mapped over the stacked weights) --------------------------
    def _forward(self, params, xs, decode: bool, heads: bool = True):
        return functional_call(self.template, params, (xs,), {"decode": decode, "heads": heads})

    def _pretrain_member(self, params, xb):
        out = self._forward(params, xb, decode=True, heads=False)
        form = self.config.recon_form
        rec = sum(L.reconstruction(x, r, form) for x, r in zip(xb, out["xr"], strict=True))
        return {"reconstruction": rec}

    def _contrastive_member(self, params, xb, tau_f, tau_l):
        out = self._forward(params, xb, decode="reconstruction" in self.config.losses)
        return contrastive_terms(out, xb, self.config, tau_f, tau_l)

    # -- the loop --------------------------------------------------------------------------------
    def _batches(self):
        perms = torch.stack(
            [torch.randperm(self.n, generator=g, device=self.device) for g in self.gens]
        )
        for b in range(self.n // self.batch):  # drop_last, as the official DataLoader
            idx = perms[:, b * self.batch : (b + 1) * self.batch]
            yield [x[idx] for x in self.xs]  # K x B x D per view

    def _step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _minibatch_epoch(self, member_fn, extra=()) -> list[dict[str, float]]:
        in_dims = (0, 0) + tuple(None if e is None else 0 for e in extra)
        mapped = vmap(member_fn, in_dims=in_dims)
        totals: dict[str, torch.Tensor] = {}
        n_batches = 0
        for xb in self._batches():
            with autocast(self.device, self.config):
                terms = mapped(self.params, xb, *extra)
            # Each member's loss depends on its own slice only: the sum's gradient is theirs.
            self._step(sum(terms.values()).sum())
            for key, v in terms.items():
                v = v.detach().double()
                totals[key] = totals[key] + v if key in totals else v
            n_batches += 1
        host = {key: (v / max(n_batches, 1)).cpu().tolist() for key, v in totals.items()}
        return [{key: host[key][i] for key in host} for i in range(len(self.seeds))]

    @torch.no_grad()
    def embed(self) -> dict[str, list[torch.Tensor]]:
        """Full-set forward pass of every member: per view, K x N x d tensors."""
        parts: dict[str, list[list[torch.Tensor]]] = {"z": [], "h": [], "q": []}
        for start in range(0, self.n, EVAL_CHUNK):
            chunk = [x[start : start + EVAL_CHUNK] for x in self.xs]
            out = vmap(lambda p, c=chunk: self._forward(p, c, decode=False))(self.params)
            for key in parts:
                parts[key].append(out[key])
        return {k: [torch.cat(c, 1) for c in zip(*v, strict=True)] for k, v in parts.items()}

    def read_out(self) -> np.ndarray:
        """K x N clusters: argmax of the view-averaged q, per member."""
        return torch.stack(self.embed()["q"]).mean(0).argmax(2).cpu().numpy()

    def _record(self, phase: str, terms: list[dict[str, float]], seconds: float) -> None:
        self.epoch += 1
        every = self.config.eval_every
        labels = None
        if self.y is not None and every and (self.epoch % every == 0 or phase == "finetune"):
            labels = self.read_out()
        for i, t in enumerate(terms):
            row = {"epoch": self.epoch, "phase": phase, "loss": sum(t.values()), **t}
            row["seconds"] = seconds  # the batch's wall time, shared by its members
            if labels is not None:
                row.update(evaluate(self.y, labels[i]))
            self.histories[i].append(row)

    def _run_phase(self, phase: str, epochs: int, epoch_fn) -> None:
        if epochs == 0:
            return
        start = time.perf_counter()
        bar = tqdm(range(epochs), desc=f"{phase} x{len(self.seeds)}", disable=not self.progress)
        for _ in bar:
            t0 = time.perf_counter()
            terms = epoch_fn()
            self._record(phase, terms, time.perf_counter() - t0)
        self.phase_seconds[phase] = time.perf_counter() - start

    def finetune_step(self, targets: list[list[np.ndarray]]) -> list[dict[str, float]]:
        """Phase 3 for every member: full batch, pseudo labels renamed by maximum matching."""
        form = self.config.finetune_form
        with autocast(self.device, self.config):
            qs = vmap(lambda p: self._forward(p, self.xs, decode=False))(self.params)["q"]
            loss = 0.0
            for m, q in enumerate(qs):  # q: K x N x C
                preds = q.detach().float().argmax(2).cpu().numpy()
                matched = np.stack(
                    [
                        match_pseudo_labels(preds[i], targets[i][m], self.k)
                        for i in range(len(self.seeds))
                    ]
                )
                matched_t = torch.from_numpy(matched).to(self.device)
                ce = vmap(lambda a, b: L.finetune_cross_entropy(a, b, form))
                loss = loss + ce(q.float(), matched_t)
        self._step(loss.sum())
        return [{"finetune": v} for v in loss.detach().cpu().tolist()]

    def _pretrain(self) -> None:
        """Phase 1. Members with the same seed start from the same weights and shuffles, and
        pre-training does not depend on the temperatures, so (``share_pretraining``) it runs
        once per distinct seed and its end state (weights, Adam state, generator, history) is
        copied to the members that share it: a temperature grid pre-trains once, not per cell."""
        epochs = self.config.pretrain_epochs
        first = {s: i for i, s in reversed(list(enumerate(self.seeds)))}  # seed -> first member
        reps = sorted(first.values())
        if not self.share_pretraining or len(reps) == len(self.seeds) or epochs == 0:
            self._run_phase(
                "pretrain", epochs, lambda: self._minibatch_epoch(self._pretrain_member)
            )
            return
        owner = [reps.index(first[s]) for s in self.seeds]  # each member's representative
        gens, seeds, histories = self.gens, self.seeds, self.histories
        self.gens, self.seeds = [gens[i] for i in reps], [seeds[i] for i in reps]
        self.histories = [[] for _ in reps]
        self._set_params({n: p.detach()[reps] for n, p in self.params.items()})
        self._run_phase("pretrain", epochs, lambda: self._minibatch_epoch(self._pretrain_member))
        small, small_opt = self.params, self.opt
        self._set_params({n: p.detach()[owner] for n, p in small.items()})
        for name, p in self.params.items():  # Adam moments follow their member; step is shared
            st = small_opt.state.get(small[name])
            if not st:  # the heads get no gradient in pre-training, hence no Adam state yet
                continue
            self.opt.state[p] = {
                "step": st["step"].clone(),
                "exp_avg": st["exp_avg"][owner].clone(),
                "exp_avg_sq": st["exp_avg_sq"][owner].clone(),
            }
        for i, g in enumerate(gens):  # each member's shuffles continue from its representative's
            g.set_state(self.gens[owner[i]].get_state())
        self.histories = [
            old + [dict(row) for row in self.histories[owner[i]]] for i, old in enumerate(histories)
        ]
        self.gens, self.seeds = gens, seeds

    def _set_params(self, stacked: dict[str, torch.Tensor]) -> None:
        """New stacked leaf weights and a fresh Adam over them."""
        self.params = {n: p.clone().requires_grad_(True) for n, p in stacked.items()}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=self.config.lr)

    def fit(self) -> BatchedTrainer:
        """Run all phases (those with zero epochs are skipped), then write back the weights."""
        cfg = self.config
        self._pretrain()
        if cfg.losses:
            self._run_phase(
                "contrastive",
                cfg.contrastive_epochs,
                lambda: self._minibatch_epoch(self._contrastive_member, tuple(self.taus)),
            )
        if cfg.finetune_epochs > 0:
            t0 = time.perf_counter()
            hs = self.embed()["h"]
            self.pseudo_labels = map_threads(
                lambda i: kmeans_pseudo_labels(
                    [h[i] for h in hs], self.k, cfg.kmeans_restarts, self.seeds[i]
                ),
                range(len(self.seeds)),
            )
            self.phase_seconds["pseudo_labels"] = time.perf_counter() - t0
            targets = self.pseudo_labels
            self._run_phase("finetune", cfg.finetune_epochs, lambda: self.finetune_step(targets))
        with torch.no_grad():
            for i, net in enumerate(self.nets):
                for name, p in net.named_parameters():
                    p.copy_(self.params[name][i])
        return self


def fit_batched(
    views: Sequence,
    y: Sequence | None,
    n_clusters: int,
    seeds: Sequence[int],
    configs: Sequence[Config],
    device: str = "cpu",
    progress: bool = True,
    share_pretraining: bool = True,
) -> list[CMMC]:
    """Train one member per (seed, config) at once; returns fitted :class:`CMMC` estimators.

    The configs may differ only in ``tau_f``/``tau_l``. ``share_pretraining``: members with
    the same seed pre-train once (:meth:`BatchedTrainer._pretrain`). Each returned estimator carries
    ``labels_``, ``history_`` (epoch ``seconds`` are the whole batch's), ``phase_seconds_``
    (the batch's), ``pseudo_labels_`` and ``network_``, as after :meth:`CMMC.fit`.
    """
    views = check_views(views)
    n = views[0].shape[0]
    k = check_n_clusters(n_clusters, n)
    labels = None if y is None else check_labels(y, n)
    seeds, configs = [int(s) for s in seeds], list(configs)
    config = check_members(seeds, configs)
    dev = resolve_device(device)
    if dev.type == "cuda":
        use_deterministic_cuda()
    dims = [v.shape[1] for v in views]
    nets, gens = [], []
    for seed in seeds:  # build each member exactly as a single run would
        set_seed(seed)
        nets.append(CMMCNetwork(dims, k, config.low_dim, config.high_dim))
        gens.append(_member_generator(seed, dev))
    nets = [net.to(dev) for net in nets]
    xs = [torch.from_numpy(v).to(dev) for v in views]
    trainer = BatchedTrainer(
        nets, gens, xs, k, configs, seeds, labels, progress, share_pretraining
    ).fit()
    final = trainer.read_out()
    models = []
    for i, (seed, cfg) in enumerate(zip(seeds, configs, strict=True)):
        m = CMMC(k, random_state=seed, device=device, config=cfg, progress=progress)
        m.config_, m.device_, m.dims_, m.network_ = cfg, dev, dims, nets[i]
        m.history_ = trainer.histories[i]
        m.phase_seconds_ = dict(trainer.phase_seconds)
        m.pseudo_labels_ = trainer.pseudo_labels[i] if trainer.pseudo_labels else None
        m.labels_ = final[i]
        models.append(m)
    return models
