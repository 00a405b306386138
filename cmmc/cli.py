"""Command line: ``cmmc datasets``, ``cmmc train``, ``cmmc reproduce``, ``cmmc verify``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmmc.config import Config
    from cmmc.data import Dataset


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = _parse_value(value)
    return out


def cmd_datasets(args: argparse.Namespace) -> int:
    """Table of the registry: whether each file is present and verified."""
    from cmmc.data import dataset_status

    rows = dataset_status()
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    print(f"{'dataset':<15} {'N':>6} {'K':>3}  {'dims':<28} {'present':<8} {'verified':<8} path")
    for r in rows:
        dims = ",".join(str(d) for d in r.get("dims") or [])
        print(
            f"{r['name']:<15} {r.get('N') or '':>6} {r.get('K') or '':>3}  {dims:<28} "
            f"{str(r['present']):<8} {str(r['verified']):<8} {r.get('path') or '-'}"
        )
    return 0


_FILE_ONLY = ("n_clusters", "scaling", "label_key", "view_keys")


def _train_data(args: argparse.Namespace) -> tuple[Config, Dataset, int]:
    """(config, dataset, K) of ``cmmc train``: a registry dataset or the user's ``--data`` file."""
    from cmmc.config import make_config
    from cmmc.data import load_dataset, load_views_file

    # the settings first: a misspelt key is named before any data file is read or downloaded
    config = make_config(args.dataset, args.profile, args.preset, **_overrides(args.set))
    if args.dataset is not None:
        given = [f"--{o.replace('_', '-')}" for o in _FILE_ONLY if getattr(args, o) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} go with --data, not with --dataset")
        ds = load_dataset(args.dataset, views=args.views)
        return config, ds, ds.n_clusters
    ds = load_views_file(
        args.data,
        scaling=args.scaling or "none",
        label_key=args.label_key,
        view_keys=args.view_keys,
    )
    ds = ds.select_views(args.views) if args.views else ds
    k = args.n_clusters if args.n_clusters is not None else ds.n_clusters
    if k is None:
        raise ValueError(
            f"{args.data} holds no labels: give the number of clusters, --n-clusters K"
        )
    return config, ds, k


def _write_labels(path: Path, labels: Any) -> None:
    import numpy as np

    if path.suffix.lower() == ".npy":
        np.save(path, np.asarray(labels, dtype=np.int64))
    else:
        np.savetxt(
            path, np.asarray(labels, dtype=np.int64), fmt="%d", header="cluster", comments=""
        )


def cmd_train(args: argparse.Namespace) -> int:
    """Train CMMC on a registry dataset or a user's file; print the metrics (and run facts) as
    JSON, metrics null when the data has no labels."""
    from cmmc.estimator import CMMC
    from cmmc.metrics import evaluate

    out_path = Path(args.labels_out) if args.labels_out else None
    if out_path and (
        out_path.suffix.lower() not in (".npy", ".csv") or not out_path.parent.is_dir()
    ):
        raise ValueError(
            f"--labels-out {out_path}: expected a .npy or .csv file in an existing folder"
        )
    config, ds, k = _train_data(args)
    t0 = time.perf_counter()
    model = CMMC(
        k,
        random_state=args.seed,
        device=args.device,
        config=config,
        progress=not args.quiet,
    ).fit(ds.views, ds.labels)
    if out_path:
        _write_labels(out_path, model.labels_)
    out = {
        "dataset": ds.name,
        "seed": args.seed,
        "device": str(model.device_),
        "n_clusters": k,
        "clusters_used": len(set(model.labels_.tolist())),
        "metrics": None if ds.labels is None else evaluate(ds.labels, model.labels_),
        "seconds": round(time.perf_counter() - t0, 2),
        "phase_seconds": {k: round(v, 2) for k, v in model.phase_seconds_.items()},
        "config": config.to_dict(),
    }
    print(json.dumps(out, indent=1))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run (or resume) an experiment grid; records go under --results."""
    from cmmc.experiments import plan, run_grid

    seeds = args.seed_list if args.seed_list else (range(args.seeds) if args.seeds else None)
    tasks = plan(
        args.experiment,
        datasets=args.datasets,
        seeds=seeds,
        variants=args.variants,
        profile=args.profile,
        device=args.device,
        results_dir=args.results,
        n_samples=args.n_samples,
    )
    if args.dry_run:
        done = [Path(t["path"]).exists() for t in tasks]
        for t, d in zip(tasks, done, strict=True):
            print("done" if d else "todo", t["path"])
        print(f"{len(tasks)} runs: {sum(done)} recorded, {len(tasks) - sum(done)} to compute",
              file=sys.stderr)  # fmt: skip
        return 0
    records = run_grid(
        tasks,
        workers=args.workers,
        engine=args.engine,
        scheduler=args.scheduler,
        batch=args.batch,
    )
    print(f"{len(records)} records under {args.results}/{args.experiment}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute recorded runs and compare them with their records; exit 1 if one differs."""
    import tempfile

    from cmmc.experiments import verify_record

    differ = 0
    with tempfile.TemporaryDirectory(prefix="cmmc-verify-") as scratch:
        for path in args.records:
            verdict = verify_record(path, args.scratch or scratch, device=args.device)
            print(json.dumps(verdict))
            differ += not verdict["same"]
    return 1 if differ else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cmmc`` command."""
    from cmmc.config import FORMER_PROFILES, PRESETS, PROFILES
    from cmmc.data import _SCALINGS
    from cmmc.experiments import experiment_specs

    profile_choices = [*PROFILES, *FORMER_PROFILES]
    profile_help = (
        "full: the official schedule (epochs, k-means restarts); quick: a short one for trying "
        "things ('paper': the former name of full)"
    )

    p = argparse.ArgumentParser(prog="cmmc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datasets", help="list the registry and the state of each file")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_datasets)

    t = sub.add_parser(
        "train", help="train CMMC on a registry dataset or your own file, print the result as JSON"
    )
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", help="registry name (see `cmmc datasets`)")
    which.add_argument(
        "--data",
        metavar="FILE",
        help=".npz (one N x D array per view, labels optional under y) or .mat file",
    )
    t.add_argument(
        "--n-clusters",
        type=int,
        metavar="K",
        help="number of clusters (--data; default: the file's number of label classes)",
    )
    t.add_argument(
        "--scaling",
        nargs="+",
        choices=list(_SCALINGS),
        help="per-view scaling (--data): one rule, or one per view (default: none)",
    )
    t.add_argument("--label-key", help="key of the labels in the file (--data)")
    t.add_argument("--view-keys", nargs="+", help="keys of the views, in order (--data)")
    t.add_argument("--labels-out", metavar="PATH", help="write the predicted labels (.npy or .csv)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    t.add_argument("--profile", default="full", choices=profile_choices, help=profile_help)
    t.add_argument(
        "--preset",
        "--variant",  # the former name
        dest="preset",
        choices=list(PRESETS),
        help="named configuration: faithful (default), fast, robust, select (see the README)",
    )
    t.add_argument("--views", nargs="+", help="subset of views, by name or index, in order")
    t.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. tau_f=0.3 finetune_form=ce losses='[\"feature\"]'",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("reproduce", help="run or resume an experiment grid (cmmc/experiments.toml)")
    r.add_argument("experiment", help="one of: " + ", ".join(experiment_specs()))
    r.add_argument("--datasets", nargs="+", help="registry names (default: the experiment's)")
    r.add_argument(
        "--variants", nargs="+", help="configurations of the experiment (default: all of them)"
    )
    r.add_argument("--seeds", type=int, help="use seeds 0..N-1")
    r.add_argument("--seed-list", type=int, nargs="+", help="use exactly these seeds")
    r.add_argument("--profile", default="full", choices=profile_choices, help=profile_help)
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    r.add_argument(
        "--workers", type=int, default=1, help="local worker processes (one per core on a CPU)"
    )
    r.add_argument(
        "--engine",
        default="local",
        choices=["local", "dask"],
        help="local process pool, or Dask distributed (same records)",
    )
    r.add_argument("--scheduler", help="address of a running Dask scheduler (engine dask)")
    r.add_argument(
        "--batch",
        type=int,
        default=1,
        help="train up to this many seeds/temperatures of one configuration at once "
        "(stacked weights: worth it on a GPU; records name their batch)",
    )
    r.add_argument("--results", default="results", help="records directory (default: results)")
    r.add_argument("--n-samples", type=int, help="run on a seeded subset of this size")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="list the planned records, done or to do; run nothing",
    )
    r.set_defaults(fn=cmd_reproduce)

    v = sub.add_parser(
        "verify",
        help="recompute recorded runs (a batched one with its batch) and compare with the records",
    )
    v.add_argument("records", nargs="+", help="record files (results/.../seed<k>-<key>.json)")
    v.add_argument("--device", help="recompute on this device instead of the record's")
    v.add_argument("--scratch", help="keep the recomputed records here (default: a temp dir)")
    v.set_defaults(fn=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmmc`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:  # FloatingPointError: a
        # diverged run (cmmc.phases.NonFiniteLoss), named with its seed, phase and epoch
        print(f"cmmc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
