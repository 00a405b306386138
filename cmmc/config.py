"""Training configuration as data: defaults follow the official code; the paper's forms are options.

An ablation or a sensitivity study is a change of fields here, never a new code path.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from cmmc.losses import TERMS

# The default composition, in this order (records' configurations name it); every name must be a
# term of cmmc.losses.TERMS, which is what Config.losses is checked against.
LOSS_TERMS = ("reconstruction", "feature", "label", "entropy")
RECON_FORMS = ("mean", "sum")
ENTROPY_FORMS = ("pair", "view")
FINETUNE_FORMS = ("double_softmax", "ce")
PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the device computes it natively
PSEUDO_LABELS = ("kmeans", "spectral")
# what cmmc.selection may do after training (its CRITERIA)
SELECTIONS = ("none", "graph", "joint", "consensus")


def plain(value: Any) -> Any:
    """A field's value as JSON holds it (a tuple is its list): what keys compare and hash."""
    return list(value) if isinstance(value, tuple) else value


def changed_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``fields`` (Config field -> value) that differ from Config's defaults:
    what run and stage keys hash, so adding a field with a default keeps every key. (Changing
    an existing default changes what a key means: that takes a new record version.)"""
    defaults = {f.name: plain(f.default) for f in dataclasses.fields(Config)}
    return {k: v for k, v in fields.items() if k not in defaults or plain(v) != defaults[k]}


# Schedule profiles: "full" is the official schedule (contrastive epochs per dataset come from
# the registry); "quick" is a smoke-test schedule for CI and for trying things out.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"pretrain_epochs": 200, "finetune_epochs": 50, "kmeans_restarts": 100},
    "quick": {
        "pretrain_epochs": 5,
        "contrastive_epochs": 5,
        "finetune_epochs": 5,
        "kmeans_restarts": 5,
    },
}

# Presets: named configurations a user picks by one name (``CMMC(preset=...)``, ``cmmc train
# --preset``; "variant" is their former name, still read):
# Config fields applied over a profile's schedule. "faithful" is the official code (the default);
# "fast" the same method on the fast path (bf16 where native, fused Adam: labels may differ by
# rounding); "robust" and "select" (robust, then a label-free choice between its labels and the
# simple baselines') the configurations measured on the "Beyond the paper" page.
PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {},
    "fast": {"precision": "auto", "fused_adam": True},
    "robust": {"precision": "auto", "fused_adam": True, "min_batches": 8, "finetune_form": "ce"},
}
# robust, then the choice by modularity on one kNN graph of all views plus each candidate's
# agreement with the others (criterion "consensus"; the preset's earlier forms, "graph" and
# "joint", are measured side by side on "Beyond"), with at most four times the code's batches
# per epoch in pre-training: the time target on sets under 2 x 256 samples (the limit binds
# only there; Config.pretrain_limit_binds)
PRESETS["select"] = {**PRESETS["robust"], "selection": "consensus", "pretrain_batch_factor": 4}


class ConfigTypeError(TypeError, ValueError):
    """A Config field of the wrong type (a ValueError too, so callers that report bad settings
    by catching ValueError report this one alike)."""


# What each annotation of Config admits (numpy scalars too; bool is never a number here).
_FIELD_TYPES: dict[str, Any] = {
    "int": ((numbers.Integral,), "an integer"),
    "float": ((numbers.Real,), "a number"),
    "str": ((str,), "a string"),
    "bool": ((bool,), "True or False"),
    "tuple[str, ...]": "losses",
    "tuple[int, ...]": "sizes",
}


@dataclass(frozen=True)
class Config:
    """Every setting of one CMMC training run.

    Defaults reproduce the official MFLVC code: Adam (lr 3e-4) kept across the three phases,
    batch 256 with shuffling and drop_last, tau_F = 0.5, tau_L = 1.0, 200 reconstruction epochs,
    50 contrastive epochs, 50 full-batch fine-tuning steps, k-means with 100 restarts.
    """

    pretrain_epochs: int = 200
    contrastive_epochs: int = 50
    finetune_epochs: int = 50
    batch_size: int = 256
    lr: float = 3e-4
    tau_f: float = 0.5
    tau_l: float = 1.0
    low_dim: int = 512
    high_dim: int = 128
    # Encoder layers between a view and z (the decoder mirrors them): the official code's
    # 500-500-2000; small ones only for tests and quick trials
    hidden: tuple[int, ...] = (500, 500, 2000)
    # Terms of the contrastive-phase objective, composed by name (drop one for an ablation).
    losses: tuple[str, ...] = field(default=LOSS_TERMS)
    recon_form: str = "mean"  # "mean": code (MSE over all entries); "sum": paper
    entropy_form: str = "pair"  # "pair": code (inside every view pair); "view": paper (once)
    finetune_form: str = "double_softmax"  # code's CE on softmaxed q; "ce": paper's -sum P log q
    kmeans_restarts: int = 100
    eval_every: int = 1  # epochs between metric evaluations when labels are given (0: never)
    precision: str = "fp32"  # "bf16": matmuls under CPU/CUDA autocast; "auto": bf16 if native
    fused_adam: bool = False  # one fused Adam kernel per step (faster; rounds differently)
    # Beyond the official code (0 / 1.0 keep it): a set too small for min_batches batches of
    # batch_size per epoch gets smaller batches (N // min_batches), so that a phase's number of
    # gradient steps does not shrink with N (False below: not in pre-training, whose extra
    # steps cost the most time and only rebuild the views); the entropy term's weight.
    min_batches: int = 0
    min_batches_pretrain: bool = True
    # In pre-training, min_batches gives at most this many times the code's batches per epoch
    # (N // batch_size, at least one), so that the smallest sets' extra steps stay within a
    # time budget; 0: no limit.
    pretrain_batch_factor: int = 0
    entropy_weight: float = 1.0
    # "kmeans": the code's k-means on each view's h; "spectral": one spectral clustering (kNN
    # graph) of all views' h side by side, the same pseudo labels for every view
    pseudo_labels: str = "kmeans"
    # After training: "none" keeps CMMC's labels; "graph" and "joint" choose, without labels,
    # between them and the simple baselines' by modularity on kNN graphs: one per view, or one
    # of all views; "consensus": the joint graph's plus each one's agreement with the others
    # (cmmc.selection.CRITERIA)
    selection: str = "none"

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "losses", tuple(self.losses))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        for name in ("pretrain_epochs", "contrastive_epochs", "finetune_epochs", "eval_every",
                     "min_batches", "pretrain_batch_factor", "entropy_weight"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "low_dim", "high_dim", "kmeans_restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "tau_f", "tau_l"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        unknown = set(self.losses) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {sorted(TERMS)}")
        for name, allowed in (
            ("recon_form", RECON_FORMS),
            ("entropy_form", ENTROPY_FORMS),
            ("finetune_form", FINETUNE_FORMS),
            ("precision", PRECISIONS),
            ("pseudo_labels", PSEUDO_LABELS),
            ("selection", SELECTIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def _check_types(self) -> None:
        """A clear error for a value of the wrong type (a string for a number, a float for a
        count, one string for the list of loss terms), before it reaches the training loop."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES.get(f.type)
            if kind == "losses":
                ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            elif kind == "sizes":
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
                )
            elif kind is not None:
                types = kind[0]
                ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            else:
                continue
            if not ok:
                want = {"losses": "a list of loss-term names", "sizes": "a list of layer sizes"}
                want = want.get(kind) if isinstance(kind, str) else kind[1]
                raise ConfigTypeError(f"Config.{f.name} must be {want}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of every field (tuples become lists)."""
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    def batch_for(self, n_samples: int, pretrain: bool = False) -> int:
        """Mini-batch size on a set of ``n_samples``: ``batch_size``, at most N, and at most
        N // ``min_batches`` when that is set (never below one sample); in pre-training
        (``pretrain``) only where ``min_batches_pretrain``, and with at most
        ``pretrain_batch_factor`` times the code's batches per epoch where that is set."""
        batch = min(self.batch_size, n_samples)
        if self.min_batches and (self.min_batches_pretrain or not pretrain):
            batches = self.min_batches
            if pretrain and self.pretrain_batch_factor:
                batches = min(batches, self.pretrain_batch_factor * (n_samples // batch))
            batch = min(batch, max(1, n_samples // batches))
        return batch

    def pretrain_limit_binds(self, n_samples: int) -> bool:
        """Whether ``pretrain_batch_factor`` changes the pre-training batches on a set of
        ``n_samples`` (otherwise a run trains exactly as it would without the limit)."""
        unlimited = self.replace(pretrain_batch_factor=0)
        return self.batch_for(n_samples, pretrain=True) != unlimited.batch_for(n_samples, True)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def config_fields() -> set[str]:
    """Names of all Config fields."""
    return {f.name for f in dataclasses.fields(Config)}


# "paper" named the full schedule until 2026-12-05; the word now means the paper's loss forms
# only. The former name is still read (here, on the command line and in older records).
FORMER_PROFILES = {"paper": "full"}


def profile_name(profile: str) -> str:
    """The current name of a schedule profile (a former name is read as its new one)."""
    profile = FORMER_PROFILES.get(profile, profile)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return profile


def schedule_for(dataset: str | None, profile: str = "full") -> dict[str, Any]:
    """Schedule fields for a dataset under a profile ("full" or "quick").

    Under "full" the contrastive epochs come from the dataset's registry entry (BDGP 10,
    Fashion 100, MNIST-USPS 50, ...).
    """
    out = dict(PROFILES[profile_name(profile)])
    if "contrastive_epochs" not in out:
        epochs = 50
        if dataset is not None:
            from cmmc.data import get_spec

            epochs = int(get_spec(dataset).get("contrastive_epochs", 50))
        out["contrastive_epochs"] = epochs
    return out


VARIANTS = PRESETS  # the former name


def preset_fields(preset: str | None) -> dict[str, Any]:
    """The Config fields of a preset (:data:`PRESETS`; None: none)."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {list(PRESETS)}")
    return dict(PRESETS[preset])


variant_fields = preset_fields  # the former name


def one_preset(preset: str | None, variant: str | None) -> str | None:
    """The preset named by ``preset`` or by its former name ``variant`` (one of them, or both
    alike)."""
    if preset is not None and variant is not None and preset != variant:
        raise ValueError(f"preset={preset!r} and variant={variant!r} name two presets: give one")
    return preset if preset is not None else variant


def make_config(
    dataset: str | None = None,
    profile: str = "full",
    preset: str | None = None,
    variant: str | None = None,
    **overrides: Any,
) -> Config:
    """Config for ``dataset`` under ``profile``, then the fields of ``preset`` (or of its former
    name ``variant``), then ``overrides``."""
    preset = one_preset(preset, variant)
    unknown = set(overrides) - config_fields()
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(config_fields())}")
    return Config(**{**schedule_for(dataset, profile), **preset_fields(preset), **overrides})
