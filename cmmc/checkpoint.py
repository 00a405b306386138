"""A Trainer's checkpoints: the exact state to continue from (weights, Adam, shuffle generators,
histories, pseudo labels), saved atomically, and the cache file of a phase's end state, keyed by
what that state depends on (:func:`cmmc.phases.stage_key`)."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmmc.config import Config
from cmmc.device import adam
from cmmc.members import BATCHABLE, copy_generator, select_members
from cmmc.model import CMMCNetwork
from cmmc.phases import TrainState, stage_fields, stage_key


class Checkpoints:
    """How a :class:`cmmc.train.Trainer`'s state is read out, moved between members, saved,
    restored and cached (kept
    apart so that the Trainer's loop reads in one sitting)."""

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

    def _resume(self, stages: list[str], cache_dir, identity) -> str | None:
        """Load the latest of ``stages`` whose cache file exists; the stage loaded, or None."""
        for stage in reversed(stages):
            path = self.stage_path(cache_dir, stage, identity)
            if path.exists():
                self.load(path)
                return stage
        return None

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
            # a field a file leaves out (saved before the field existed) is at its default
            a, b = ({**Config().to_dict(), **c} for c in (a, b))
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

    def _select_members(self, index: list[int]) -> None:
        """Keep or repeat stacked members by index, with their weights, Adam moments, shuffle
        generators and histories."""
        new_opt = lambda ps: adam(ps, self.config)  # noqa: E731
        self.params, self.opt = select_members(self.params, self.opt, index, new_opt)
        self.gens = [copy_generator(self.gens[i]) for i in index]
        self.histories = [[dict(row) for row in self.histories[i]] for i in index]
