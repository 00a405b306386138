"""The three training phases of CMMC, as in the official code, for one run or K stacked members.

1. reconstruction pre-training (mini-batches),
2. contrastive training: feature + label contrast + entropy + reconstruction (mini-batches),
3. pseudo labels by k-means on min-max scaled h, then full-batch fine-tuning against them,
   renamed each step by maximum matching.
One Adam optimiser is kept across all phases. Batches are index slices of a permutation.

Each phase is a (batches, terms) pair fed to one loop (:meth:`Trainer._run_phase`). The terms
of a phase are written once, for one member's weights, over ``functional_call``: a single run
calls them directly, and K members (seeds, temperatures) call them through ``vmap`` over stacked
weights, so each kernel launch does K runs' work. Every member follows its single run step for
step (the same initial weights, shuffles, Adam update and seeded k-means); only the batched matrix
products may sum in another order (``tests/test_batched.py`` compares them).

What the state at the end of each phase depends on is declared once (:func:`stage_fields`,
:func:`stage_key`); every cache of a phase's end state is keyed by it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from cmmc import losses as L
from cmmc.config import LATER_FIELDS, Config, drop_later_defaults
from cmmc.matching import match_pseudo_labels
from cmmc.metrics import evaluate
from cmmc.model import CMMCNetwork
from cmmc.validation import check_labels, check_n_clusters, check_views

EVAL_CHUNK = 8192  # samples per forward pass when the whole set is embedded
PHASES = ("pretrain", "contrastive", "finetune")
BATCHABLE = ("tau_f", "tau_l")  # Config fields in which the members of one batch may differ

# The Config fields each phase adds to what its end state depends on (besides the data, the
# seed and the device). Every Config field is named once (tests/test_batched.py checks it).
_PHASE_FIELDS = {
    "pretrain": ("pretrain_epochs", "batch_size", "lr", "low_dim", "high_dim", "recon_form",
                 "precision", "fused_adam", "min_batches", "eval_every"),  # eval: history
    "contrastive": ("contrastive_epochs", "tau_f", "tau_l", "losses", "entropy_form",
                    "entropy_weight"),
    "finetune": ("finetune_epochs", "kmeans_restarts", "finetune_form", "pseudo_labels"),
}  # fmt: skip


def stage_fields(stage: str) -> tuple[str, ...]:
    """Config fields the training state at the end of ``stage`` depends on (cumulative)."""
    if stage not in PHASES:
        raise ValueError(f"unknown stage {stage!r}; known: {list(PHASES)}")
    return sum((_PHASE_FIELDS[p] for p in PHASES[: PHASES.index(stage) + 1]), ())


def stage_key(config: Config, stage: str, identity: dict[str, Any] | None = None) -> str:
    """16-hex hash of the fields of :func:`stage_fields` and ``identity`` (data set, data
    options, seed, device, ...: whatever else the caller's state depends on)."""
    payload = drop_later_defaults({f: getattr(config, f) for f in stage_fields(stage)})
    clash = set(payload) & set(identity or {})
    if clash:
        raise ValueError(f"identity repeats config fields {sorted(clash)}")
    payload.update(identity or {})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss: the message names the seed, phase and epoch."""


@dataclass
class TrainState:
    """What one run (or one member) leaves behind besides the weights."""

    history: list[dict] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    pseudo_labels: list[np.ndarray] | None = None


def set_seed(seed: int) -> None:
    """Fix torch's global generators (for scripts and book cells that build a network by hand;
    the Trainer seeds its own networks without touching global state)."""
    torch.manual_seed(seed)


def use_deterministic_cuda() -> None:
    """Ask CUDA for run-to-run identical results (cuBLAS workspace, deterministic kernels).

    Process-wide: the cuBLAS variable must be set before the process's first CUDA matrix
    product, so an engine's workers call this when they start, and direct users on a GPU call it
    once at the top of their script. Kernels without a deterministic version warn.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda[:i]', or 'auto' (CUDA when available, else CPU)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch finds no CUDA device")
    return dev


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or
    a CPU with AVX512_BF16 or AMX (elsewhere the CPU emulates bf16, many times slower than fp32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision a run uses on ``device``: "auto" becomes "bf16" where bf16 is native, else
    "fp32"; "bf16" where it is emulated runs as asked, with a warning."""
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision == "bf16" and not bf16_native(device):
        warnings.warn(
            f"precision 'bf16' on {torch.device(device).type} without native bf16 (no AVX512_BF16 "
            "or AMX on this CPU) is emulated and far slower than fp32; 'auto' picks fp32 here",
            stacklevel=3,
        )
    return precision


def autocast(device: torch.device, config: Config):
    """bf16 autocast when the config's precision resolves to bf16, else a no-op context."""
    precision = config.precision  # a Trainer's configs are resolved already; "auto" for others
    if precision == "bf16" or (precision == "auto" and bf16_native(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adam(params: Sequence[torch.Tensor], config: Config) -> torch.optim.Adam:
    """The run's Adam: torch's default per-tensor loop (the official code's), or one fused kernel
    per step with ``config.fused_adam`` (about 3x faster a step on a CPU; it rounds differently,
    so labels may differ from the loop's)."""
    return torch.optim.Adam(list(params), lr=config.lr, fused=config.fused_adam or None)


@torch.no_grad()
def _embed_chunks(forward: Callable, xs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """``forward`` over the whole set in chunks; per view z, h, q (samples on the next-to-last
    axis, so one run's N x d and K members' K x N x d are joined alike)."""
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


def spectral_pseudo_labels(hs: list[torch.Tensor], n_clusters: int, seed: int) -> list[np.ndarray]:
    """Pseudo labels of every view from one seeded spectral clustering (kNN graph) of the
    views' h side by side (:func:`cmmc.baselines.spectral_concat`)."""
    from cmmc.baselines import spectral_concat

    labels = spectral_concat([h.float().cpu().numpy() for h in hs], n_clusters, seed)
    return [labels.copy() for _ in hs]


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
    """The generator a single run's shuffles come from, right after building its network.

    On the CPU that is the global generator as weight initialisation left it; on CUDA it is the
    device's generator as ``torch.manual_seed(seed)`` leaves it (initialisation runs on the CPU).
    """
    if device.type == "cpu":
        g = torch.Generator()
        g.set_state(torch.get_rng_state())
    else:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
    return g


def _copy_generator(g: torch.Generator) -> torch.Generator:
    new = torch.Generator(device=g.device)
    new.set_state(g.get_state())
    return new


class Trainer:
    """Runs the three phases for one network, or for K stacked member networks at once.

    One run: ``nets`` is a network, ``configs`` a Config, ``seeds`` an int; ``trainer.net`` is that
    network, trained in place. K members: lists of K networks, Configs (differing only in
    :data:`BATCHABLE`) and seeds; their weights are stacked and the same loop maps over them.
    ``generators``: each member's shuffle generator (default: as a single run's would be now).
    ``share_pretraining``: members with the same seed pre-train once (:meth:`_pretrain_groups`).
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
        self.configs = list(configs) if self.stacked else [configs]
        device = next(members[0].parameters()).device
        # "auto" is settled here: the configs (and records) name the precision actually used.
        self.configs = [
            c.replace(precision=resolve_precision(c.precision, device)) for c in self.configs
        ]
        self.seeds = [int(s) for s in seeds] if self.stacked else [int(seeds)]
        check_members(self.seeds, self.configs)
        self.xs, self.k, self.y, self.progress = xs, n_clusters, y, progress
        self.share_pretraining = share_pretraining
        self.device = xs[0].device
        self.n = xs[0].shape[0]
        self.dims = [x.shape[1] for x in xs]
        self.batch = self.config.batch_for(self.n)  # at most N: drop_last would leave no batch
        # The template holds no weights: functional_call sees only self.params.
        self.template = copy.deepcopy(members[0]).to("meta")
        if self.stacked:
            self.net = None
            self.params, _ = stack_module_state(members)  # fresh leaves, K x ...
        else:
            self.net = members[0]  # one run trains its network's own parameters
            self.params = dict(self.net.named_parameters())
        self.opt = adam(self.params.values(), self.config)
        if generators is None:
            generators = [_member_generator(s, self.device) for s in self.seeds]
        self.gens = list(generators)
        # Per-member temperatures (K-vectors), or None where all members share the config's:
        # shared ones stay Python floats, exactly the single run's arithmetic.
        taus = []
        for name in BATCHABLE:
            values = [getattr(c, name) for c in self.configs]
            taus.append(torch.tensor(values, device=self.device) if len(set(values)) > 1 else None)
        self.taus = tuple(taus)
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
        """K stacked members, each built exactly as its single run (:meth:`for_data`) would be."""
        seeds, configs = list(seeds), list(configs)
        return cls._build(views, y, n_clusters, seeds, configs, device, progress, True,
                          share_pretraining)  # fmt: skip

    @classmethod
    def _build(cls, views, y, n_clusters, seeds, configs, device, progress, stacked, share):
        views = check_views(views)
        n = views[0].shape[0]
        k = check_n_clusters(n_clusters, n)
        labels = None if y is None else check_labels(y, n)
        seeds = [int(s) for s in seeds]
        config = check_members(seeds, configs)
        dev = resolve_device(device)
        dims = [v.shape[1] for v in views]
        nets, gens = [], []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):  # the caller's generators stay as they were
                torch.default_generator.manual_seed(seed)
                nets.append(CMMCNetwork(dims, k, config.low_dim, config.high_dim).to(dev))
                gens.append(_member_generator(seed, dev))
        xs = [torch.from_numpy(v).to(dev) for v in views]
        if not stacked:
            return cls(nets[0], xs, k, configs[0], seeds[0], labels, progress, gens)
        return cls(nets, xs, k, configs, seeds, labels, progress, gens, share)

    # -- members -------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The configuration shared by all members (member 0's temperatures)."""
        return self.configs[0]

    @config.setter
    def config(self, value: Config) -> None:  # one run may change settings of phases to come
        if self.stacked:
            raise ValueError("a stacked trainer's members keep their configs")
        self.configs = [value]

    @property
    def seed(self) -> int:
        """The seed of a single run (its k-means uses it)."""
        if self.stacked:
            raise ValueError("a stacked trainer has one seed per member: seeds")
        return self.seeds[0]

    @seed.setter
    def seed(self, value: int) -> None:
        if self.stacked:
            raise ValueError("a stacked trainer has one seed per member: seeds")
        self.seeds = [int(value)]

    def state_of(self, member: int = 0) -> TrainState:
        """History, phase times (the whole trainer's) and pseudo labels of one member."""
        pseudo = None if self.pseudo_labels is None else self.pseudo_labels[member]
        return TrainState(self.histories[member], self.phase_seconds, pseudo)

    @property
    def state(self) -> TrainState:
        """:meth:`state_of` the single run."""
        if self.stacked:
            raise ValueError("a stacked trainer has one state per member: state_of(member)")
        return self.state_of(0)

    def network(self, member: int = 0) -> CMMCNetwork:
        """A standalone copy of one member's network, with its current weights."""
        net = copy.deepcopy(self.template).to_empty(device=self.device)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(self.params[name][member] if self.stacked else self.params[name])
        return net

    # -- one member's computations, mapped over the stack for K members ------------------------
    def _map(self, fn: Callable, in_dims: tuple) -> Callable:
        """``fn`` itself for one run; ``vmap(fn, in_dims)`` over the members' stacked weights."""
        return vmap(fn, in_dims=in_dims) if self.stacked else fn

    def _forward(self, params, xs, decode: bool, heads: bool = True) -> dict[str, list]:
        return functional_call(self.template, params, (xs,), {"decode": decode, "heads": heads})

    def _terms(self, names: tuple[str, ...], taus: tuple) -> Callable:
        """Batch -> the named terms of every member (K-vectors, or scalars for one run)."""
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
        for m, q in enumerate(forward(self.params, xs)):  # q: (K x) N x C
            # The matching is host work: one CPU-GPU sync per view and step.
            preds = q.detach().float().argmax(-1).cpu().numpy().reshape(-1, self.n)
            matched = [
                match_pseudo_labels(pred, member[m], self.k)
                for pred, member in zip(preds, self.pseudo_labels, strict=True)
            ]
            target = torch.from_numpy(np.stack(matched).reshape(q.shape[:-1])).to(self.device)
            loss = loss + cross_entropy(q.float(), target)
        return {"finetune": loss}

    def embed(self) -> dict[str, list[torch.Tensor]]:
        """Whole-set z, h, q per view: N x d for one run, K x N x d for K members."""
        forward = self._map(lambda p, c: self._forward(p, c, decode=False), (0, None))
        return _embed_chunks(lambda chunk: forward(self.params, chunk), self.xs)

    def read_out(self) -> np.ndarray:
        """Clusters of every sample: N labels for one run, K x N for K members."""
        return read_out(self.embed()["q"])

    # -- the loop ------------------------------------------------------------------------------
    def _shuffled(self) -> Iterator[list[torch.Tensor]]:
        """Mini-batches of a fresh permutation per member (drop_last, as the official DataLoader);
        (K x) B x D per view."""
        perms = torch.stack(
            [torch.randperm(self.n, generator=g, device=self.device) for g in self.gens]
        )
        if not self.stacked:
            perms = perms[0]
        for b in range(self.n // self.batch):
            idx = perms[..., b * self.batch : (b + 1) * self.batch]
            yield [x[idx] for x in self.xs]

    def _whole_set(self) -> Iterator[list[torch.Tensor]]:
        yield self.xs  # one full batch, shared by all members

    def _phase(self, name: str) -> tuple[int, Callable, Callable]:
        """(epochs, batches, terms) of a phase: every phase is fed to the same loop."""
        cfg = self.config
        if name == "pretrain":
            terms = self._terms(("reconstruction",), (None, None))
            return cfg.pretrain_epochs, self._shuffled, terms
        if name == "contrastive":
            epochs = cfg.contrastive_epochs if cfg.losses else 0
            return epochs, self._shuffled, self._terms(tuple(cfg.losses), self.taus)
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
        """Each member's seeded k-means on its h (members in parallel threads)."""
        t0 = time.perf_counter()
        hs = self.embed()["h"]

        def one(i: int) -> list[np.ndarray]:
            own = [h[i] for h in hs] if self.stacked else hs
            if self.config.pseudo_labels == "spectral":
                return spectral_pseudo_labels(own, self.k, self.seeds[i])
            return kmeans_pseudo_labels(own, self.k, self.config.kmeans_restarts, self.seeds[i])

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
            self._check_finite(name, terms)
            self._record(name, terms, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{sum(terms[0].values()):.4f}")
        self.phase_seconds[name] = time.perf_counter() - start
        return True

    def _check_finite(self, phase: str, terms: list[dict[str, float]]) -> None:
        """Stop at the first epoch whose mean loss is not finite, naming it, rather than fail
        later in k-means or return labels read from NaN weights."""
        for i, t in enumerate(terms):
            bad = {k: v for k, v in t.items() if not math.isfinite(v)}
            if bad:
                raise NonFiniteLoss(
                    f"seed {self.seeds[i]}: {phase} epoch {self.epoch + 1} (of the whole run): "
                    f"loss terms {bad} are not finite; weights and labels would be meaningless"
                )

    def _pretrain_groups(self) -> tuple[list[int], list[int]] | None:
        """Members with the same seed start from the same weights and shuffles, and
        pre-training does not depend on the temperatures: with ``share_pretraining`` it runs
        once per distinct seed (a temperature grid pre-trains once, not per cell). Returns the
        first member of each seed and each member's index among those, or None."""
        if not (self.stacked and self.share_pretraining and self.config.pretrain_epochs):
            return None
        first: dict[int, int] = {}
        for i, s in enumerate(self.seeds):
            first.setdefault(s, i)
        reps = sorted(first.values())
        if len(reps) == len(self.seeds):
            return None
        return reps, [reps.index(first[s]) for s in self.seeds]

    def _select_members(self, index: list[int]) -> None:
        """Keep or repeat stacked members by index: weights, Adam moments, shuffle generators
        and histories follow them (Adam's step count is shared)."""
        old, old_opt = self.params, self.opt
        self.params = {n: p.detach()[index].clone().requires_grad_(True) for n, p in old.items()}
        self.opt = adam(self.params.values(), self.config)
        for name, p in self.params.items():
            st = old_opt.state.get(old[name])
            if st:  # a part without gradient so far (the heads in pre-training) has no state
                self.opt.state[p] = {
                    "step": st["step"].clone(),
                    "exp_avg": st["exp_avg"][index].clone(),
                    "exp_avg_sq": st["exp_avg_sq"][index].clone(),
                }
        self.gens = [_copy_generator(self.gens[i]) for i in index]
        self.histories = [[dict(row) for row in self.histories[i]] for i in index]

    def _run(self, name: str) -> None:
        groups = self._pretrain_groups() if name == "pretrain" else None
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
        if until is not None and until not in PHASES:
            raise ValueError(f"unknown phase {until!r}; known: {list(PHASES)}")
        last = PHASES.index(until) + 1 if until is not None else len(PHASES)
        unknown = set(cache_stages) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(PHASES)}")
        todo = [p for p in PHASES[:last] if p not in self.phases_done]
        cached = [p for p in todo if cache_dir is not None and p in cache_stages]
        self.loaded_stage = None
        for p in reversed(cached if not refresh_cache else []):
            path = self.stage_path(cache_dir, p, cache_identity)
            if path.exists():
                self.load(path)
                self.loaded_stage = p
                break
        for p in todo:
            if p in self.phases_done:  # read from the cache
                continue
            self._run(p)
            if p in cached:
                self.save(self.stage_path(cache_dir, p, cache_identity))
        return self

    # -- checkpoints and caches ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        pseudo = self.pseudo_labels
        return {
            "params": {n: p.detach() for n, p in self.params.items()},
            "opt": self.opt.state_dict(),
            "generators": [g.get_state() for g in self.gens],
            "seeds": list(self.seeds),
            "configs": [c.to_dict() for c in self.configs],
            "epoch": self.epoch,
            "phases_done": list(self.phases_done),
            "histories": self.histories,
            "phase_seconds": self.phase_seconds,
            "pseudo_labels": None
            if pseudo is None
            else [[torch.from_numpy(p) for p in views] for views in pseudo],
        }

    def checkpoint(self) -> dict[str, Any]:
        """A copy of everything needed to continue exactly where training stands (weights,
        Adam state, shuffle generators, records); later training does not change it."""
        return copy.deepcopy(self._state())

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from :meth:`checkpoint` output; the result equals an uninterrupted run."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(ckpt["params"][name])
        self.opt.load_state_dict(copy.deepcopy(ckpt["opt"]))  # Adam would alias its tensors
        for g, state in zip(self.gens, ckpt["generators"], strict=True):
            g.set_state(state)
        self.epoch = int(ckpt["epoch"])
        self.phases_done = list(ckpt["phases_done"])
        self.histories = [[dict(row) for row in h] for h in ckpt["histories"]]
        self.phase_seconds = dict(ckpt["phase_seconds"])
        pseudo = ckpt["pseudo_labels"]
        self.pseudo_labels = (
            None if pseudo is None else [[t.numpy().copy() for t in views] for views in pseudo]
        )

    def save(self, path: str | Path) -> None:
        """Write :meth:`checkpoint` to ``path`` atomically (a killed run leaves no half file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(self._state(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        """Continue from a :meth:`save` file (plain tensors and containers: no pickle); it must
        come from the same seeds and the same settings of the phases it ran."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        done = ckpt["phases_done"]
        fields = stage_fields(done[-1]) if done else ()
        theirs, mine = ckpt["configs"], [c.to_dict() for c in self.configs]
        if ckpt["seeds"] != self.seeds or len(theirs) != len(mine):
            raise ValueError(f"{path} holds seeds {ckpt['seeds']}, this trainer {self.seeds}")
        for a, b in zip(theirs, mine, strict=True):
            a, b = ({**LATER_FIELDS, **c} for c in (a, b))  # a field left out is at its default
            differ = [f for f in fields if a[f] != b[f]]
            if differ:
                raise ValueError(f"{path} was trained with other {differ}")
        self.restore(ckpt)

    def _identity(self, stage: str) -> dict[str, Any]:
        """What the trainer knows its state depends on, besides the config."""
        if self._data_sha256 is None:
            h = hashlib.sha256()
            for x in self.xs:
                h.update(repr(tuple(x.shape)).encode() + x.cpu().numpy().tobytes())
            h.update(b"no labels" if self.y is None else self.y.astype(np.int64).tobytes())
            self._data_sha256 = h.hexdigest()
        out: dict[str, Any] = {"seeds": self.seeds, "n_clusters": self.k}
        out.update(device=str(self.device), data_sha256=self._data_sha256)
        if self.stacked:
            own = [f for f in BATCHABLE if f in stage_fields(stage)]
            out["members"] = [[getattr(c, f) for f in own] for c in self.configs]
            out["share_pretraining"] = self.share_pretraining
        return out

    def stage_path(
        self, cache_dir: str | Path, stage: str, identity: dict[str, Any] | None = None
    ) -> Path:
        """The cache file of this trainer's state at the end of ``stage``."""
        key = stage_key(self.config, stage, {**(identity or {}), "trainer": self._identity(stage)})
        return Path(cache_dir) / f"{stage}-{key}.pt"
