"""The plan: ``cmmc/experiments.toml`` expanded into tasks, one per run.

A task is a plain dict (picklable and JSON-able, so it travels to worker processes, Dask
workers and other machines): experiment, kind, dataset, variant, seed, profile, device, data
options, the full configuration, kind options, its key and record path, the results folder and
whether it may cache its pre-training.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

from cmmc.config import make_config, profile_name
from cmmc.data import get_spec
from cmmc.experiments.kinds import pretrain_key
from cmmc.experiments.records import RECORD_VERSION, record_location

Task = dict[str, Any]
DATA_KEYS = ("views", "n_samples")  # variant keys that select data rather than configure
OPTION_KEYS = ("multilevel", "tsne_points")  # experiment keys that the run functions read


def experiment_specs() -> dict[str, dict[str, Any]]:
    """The experiment definitions of ``cmmc/experiments.toml`` (the plan's only source)."""
    return tomllib.loads(files("cmmc").joinpath("experiments.toml").read_text())


def planned_seeds(experiment: str, dataset: str) -> int:
    """How many seeds (0 .. n-1) an experiment plans for a data set: its ``seeds``, or the
    data set's entry in ``seeds_per_dataset`` (fewer seeds where one run takes hours)."""
    return _seeds_of(experiment_specs()[experiment], dataset)


def _seeds_of(spec: dict[str, Any], dataset: str) -> int:
    return int(spec.get("seeds_per_dataset", {}).get(dataset, spec.get("seeds", 1)))


def expand_variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An experiment's variants, name -> overrides; a ``grid`` of Config fields is expanded
    into its Cartesian product (e.g. tau_f x tau_l, named ``tau_f=0.1-tau_l=0.3``)."""
    if "grid" in spec:
        keys = list(spec["grid"])
        return {
            "-".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)): dict(
                zip(keys, combo, strict=True)
            )
            for combo in itertools.product(*(spec["grid"][k] for k in keys))
        }
    return spec.get("variants", {"default": {}})


def plan(
    experiment: str,
    datasets: Iterable[str] | None = None,
    seeds: Iterable[int] | int | None = None,
    variants: Iterable[str] | None = None,
    profile: str = "full",
    device: str = "cpu",
    results_dir: str | Path = "results",
    n_samples: int | None = None,
    sizes: Iterable[int] | None = None,
) -> list[Task]:
    """Expand an experiment into tasks, one per (dataset, variant, seed, size).

    ``seeds``: the seeds to run (an int n: 0..n-1; default: :func:`planned_seeds` per data set).
    ``n_samples`` runs every task on a seeded subset of that many samples (quick checks).
    ``sizes`` replaces the experiment's ``sizes`` (scalability): one task per sample size, named
    ``<variant>-n<size>``. A set read from files is never asked for more samples than it has.
    """
    profile = profile_name(profile)
    specs = experiment_specs()
    if experiment not in specs:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(specs)}")
    spec = specs[experiment]
    all_variants = expand_variants(spec)
    chosen = list(variants) if variants else list(all_variants)
    unknown = [v for v in chosen if v not in all_variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown} of {experiment}; known: {list(all_variants)}")
    if isinstance(seeds, int):
        seeds = range(seeds)
    seed_list = list(seeds) if seeds is not None else None
    planned_sizes = [int(n) for n in sizes] if sizes is not None else spec.get("sizes", [None])
    tasks = []
    for dataset in datasets or spec["datasets"]:
        sizes_here = planned_sizes
        if sizes_here != [None]:
            entry = get_spec(dataset)
            if not entry.get("generated"):  # subsets only: never tile a set read from files
                sizes_here = [n for n in sizes_here if n <= int(entry.get("N") or 0)]
        seeds_here = seed_list if seed_list is not None else range(_seeds_of(spec, dataset))
        for vname, seed, n in itertools.product(chosen, seeds_here, sizes_here):
            overrides = dict(all_variants[vname])
            data_opts = {k: overrides.pop(k) for k in DATA_KEYS if k in overrides}
            if n is not None:
                data_opts["n_samples"] = n
            elif n_samples is not None:
                data_opts["n_samples"] = n_samples
            overrides.update(spec.get("schedule", {}))
            if "eval_every" in spec and "eval_every" not in overrides:
                overrides["eval_every"] = spec["eval_every"]
            config = make_config(dataset, profile, **overrides)  # (a former name is read)
            if config.precision == "auto":
                raise ValueError(
                    f"{experiment}/{vname}: an experiment names its precision (fp32 or bf16), "
                    "not 'auto': a record must say what it computed"
                )
            task = {
                "experiment": experiment,
                "kind": spec["kind"],
                "dataset": dataset,
                "variant": vname if n is None else f"{vname}-n{n}",
                "seed": int(seed),
                "profile": profile,
                "device": device,
                "data": data_opts,
                "config": config.to_dict(),
                "options": {k: spec[k] for k in OPTION_KEYS if k in spec},
            }
            key, path = record_location(results_dir, task)
            task["key"], task["path"] = key, str(path)
            task["results"] = str(results_dir)
            tasks.append(task)
    mark_shared_pretraining(tasks)
    return tasks


def mark_shared_pretraining(tasks: list[Task]) -> None:
    """Cache pre-training only where two planned runs share it (ablation, temperature grid):
    elsewhere a checkpoint per run would cost disk and time for nothing."""
    keys = [pretrain_key(t, RECORD_VERSION) for t in tasks]
    for t, k in zip(tasks, keys, strict=True):
        t["cache_pretrain"] = keys.count(k) > 1
