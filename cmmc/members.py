"""M runs trained as one: which members may share a batch, how each member's network and shuffle
generator are built (as its single run's), moving members (keep, repeat) with their optimiser
state, and the members' configuration (:class:`MemberConfigs`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch

from cmmc.config import Config
from cmmc.device import adam, resolve_precision
from cmmc.model import CMMCNetwork
from cmmc.phases import stage_fields

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


def member_generator(seed: int, device: torch.device) -> torch.Generator:
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


def copy_generator(g: torch.Generator) -> torch.Generator:
    new = torch.Generator(device=g.device)
    new.set_state(g.get_state())
    return new


def pretrain_groups(seeds: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """Members with the same seed start from the same weights and shuffles, and pre-training
    does not depend on the temperatures, so it can run once per distinct seed (a temperature grid
    pre-trains once, not per cell). Returns the first member of each seed and each member's
    index among those; None when every seed is distinct."""
    first: dict[int, int] = {}
    for i, s in enumerate(seeds):
        first.setdefault(s, i)
    reps = sorted(first.values())
    if len(reps) == len(seeds):
        return None
    return reps, [reps.index(first[s]) for s in seeds]


def select_members(
    params: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    index: list[int],
    new_optimizer: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer],
) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """Stacked weights kept or repeated by member index, with a new optimiser from
    ``new_optimizer`` that carries their Adam moments (Adam's step count is shared)."""
    new = {n: p.detach()[index].clone().requires_grad_(True) for n, p in params.items()}
    new_opt = new_optimizer(new.values())
    for name, p in new.items():
        st = opt.state.get(params[name])
        if st:  # a part without gradient so far (the heads in pre-training) has no state
            new_opt.state[p] = {
                "step": st["step"].clone(),
                "exp_avg": st["exp_avg"][index].clone(),
                "exp_avg_sq": st["exp_avg_sq"][index].clone(),
            }
    return new, new_opt


def build_members(
    dims: list[int], n_clusters: int, seeds: Sequence[int], configs: Sequence[Config], device
) -> tuple[list[CMMCNetwork], list[torch.Generator]]:
    """Each member's network and shuffle generator, built exactly as its single run builds them:
    weights from ``torch.manual_seed(seed)``; the caller's generators stay as they were."""
    config = check_members([int(s) for s in seeds], configs)
    nets, gens = [], []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            nets.append(
                CMMCNetwork(dims, n_clusters, config.low_dim, config.high_dim, config.hidden).to(
                    device
                )
            )
            gens.append(member_generator(int(seed), device))
    return nets, gens


class MemberConfigs:
    """The configuration and seeds of a :class:`cmmc.train.Trainer`'s members: one shared
    Config (the members may differ only in :data:`BATCHABLE`), what derives from it, and how one
    run continues under another."""

    @property
    def config(self) -> Config:
        """The configuration shared by all members (member 0's temperatures)."""
        return self.configs[0]

    def set_config(self, config: Config) -> None:
        """Continue one run under ``config``, which may differ from the current one only in
        fields of phases not yet run (:func:`~cmmc.phases.stage_fields`); the batch size and
        temperatures are derived from it again (the optimiser too, before any phase ran)."""
        if self.stacked:
            raise ValueError("a stacked trainer's members keep their configs")
        config = config.replace(precision=resolve_precision(config.precision, self.device))
        if self.phases_done:
            fixed = stage_fields(self.phases_done[-1])
            differ = [f for f in fixed if getattr(config, f) != getattr(self.config, f)]
            if differ:
                raise ValueError(
                    f"phases {self.phases_done} already ran with other {differ}: only fields of "
                    "phases still to run may change"
                )
        else:
            self.opt = adam(self.params.values(), config)
        self.configs = [config]
        self._derive()

    def _derive(self) -> None:
        """What follows from the configs: the batch size and the members' temperatures."""
        self.batch = self.config.batch_for(self.n)  # at most N: drop_last would leave no batch
        self.pretrain_batch = self.config.batch_for(self.n, pretrain=True)
        # Per-member temperatures (M-vectors), or None where all members share the config's:
        # shared ones stay Python floats, exactly the single run's arithmetic.
        taus = []
        for name in BATCHABLE:
            values = [getattr(c, name) for c in self.configs]
            taus.append(torch.tensor(values, device=self.device) if len(set(values)) > 1 else None)
        self.taus = tuple(taus)

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
