"""Experiment runner: a grid of (experiment, dataset, variant, seed) -> one JSON record per run.

Records are keyed by a hash of everything that determines the run (dataset, views, samples,
full configuration, seed, device type), written atomically (temp file + rename), and skipped
when present: a killed grid resumes where it stopped and a changed configuration never
reuses a stale record. Runs fan out over local worker processes (one torch thread per core
share) or over a Dask distributed cluster; both produce the same records.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RECORD_VERSION = 1
_HERE = Path(__file__).parent
DATASET_KEYS = ("views", "n_samples")  # variant keys that select data rather than configure


def experiments() -> dict[str, dict[str, Any]]:
    """The experiment definitions of ``cmmc/experiments.toml``."""
    with open(_HERE / "experiments.toml", "rb") as f:
        return tomllib.load(f)


def _variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if "grid" in spec:  # a Cartesian grid of Config fields, e.g. tau_f x tau_l
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
    seeds: Iterable[int] | None = None,
    variants: Iterable[str] | None = None,
    profile: str = "paper",
    device: str = "cpu",
    results_dir: str | Path = "results",
    n_samples: int | None = None,
) -> list[dict[str, Any]]:
    """Expand an experiment into tasks (plain dicts, picklable, one per run).

    ``n_samples`` runs every task on a seeded subset of that many samples (quick checks).
    """
    from cmmc.config import make_config

    specs = experiments()
    if experiment not in specs:
        raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(specs)}")
    spec = specs[experiment]
    all_variants = _variants(spec)
    chosen = list(variants) if variants else list(all_variants)
    unknown = [v for v in chosen if v not in all_variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown} of {experiment}; known: {list(all_variants)}")
    seed_list = list(seeds) if seeds is not None else list(range(spec.get("seeds", 1)))
    tasks = []
    for dataset in datasets or spec["datasets"]:
        sizes = spec.get("sizes", [None])
        if dataset != "synthetic" and sizes != [None]:  # subsets only: never tile a real set
            sizes = [n for n in sizes if n <= _registry_n(dataset)]
        for vname, seed, n in itertools.product(chosen, seed_list, sizes):
            overrides = dict(all_variants[vname])
            data_opts = {k: overrides.pop(k) for k in DATASET_KEYS if k in overrides}
            if n is not None:
                data_opts["n_samples"] = n
            elif n_samples is not None:
                data_opts["n_samples"] = n_samples
            overrides.update(spec.get("schedule", {}))
            if "eval_every" in spec and "eval_every" not in overrides:
                overrides["eval_every"] = spec["eval_every"]
            cfg_dataset = None if dataset == "synthetic" else dataset
            config = make_config(cfg_dataset, profile, **overrides).to_dict()
            task = {
                "experiment": experiment,
                "kind": spec["kind"],
                "dataset": dataset,
                "variant": vname if n is None else f"{vname}-n{n}",
                "seed": int(seed),
                "profile": profile,
                "device": device,
                "data": data_opts,
                "config": config,
                "options": {k: spec[k] for k in ("multilevel", "tsne_points") if k in spec},
            }
            task["key"] = run_key(task)
            task["path"] = str(record_path(results_dir, task))
            tasks.append(task)
    _mark_shared_pretraining(tasks)
    return tasks


def _registry_n(dataset: str) -> int:
    from cmmc.data import get_spec

    return int(get_spec(dataset).get("N") or 0)


def _mark_shared_pretraining(tasks: list[dict[str, Any]]) -> None:
    """Cache pre-training only where two planned runs share it (ablation, temperature grid):
    elsewhere a checkpoint per run would cost disk and time for nothing."""
    keys = [_pretrain_key(t) for t in tasks]
    for t, k in zip(tasks, keys, strict=True):
        t["cache_pretrain"] = keys.count(k) > 1


def run_key(task: dict[str, Any]) -> str:
    """Hash of everything that determines a run's outcome."""
    device_type = "cpu" if task["device"] == "cpu" else "accelerator:" + task["device"]
    payload = {
        "v": RECORD_VERSION,
        "kind": task["kind"],
        "dataset": task["dataset"],
        "data": task["data"],
        "config": task["config"] if task["kind"] != "baselines" else {},
        "seed": task["seed"],
        "device": device_type,
        "options": task["options"],
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def record_path(results_dir: str | Path, task: dict[str, Any]) -> Path:
    """results/<experiment>/<dataset>/<variant>/seed<k>-<key>.json"""
    safe = task["variant"].replace("/", "_")
    return (
        Path(results_dir)
        / task["experiment"]
        / task["dataset"]
        / safe
        / f"seed{task['seed']}-{task['key']}.json"
    )


def dumps_record(obj: Any) -> str:
    """JSON text of a record: one top-level key per line, each value compact on its line, and a
    list of objects (the per-epoch history) one object per line. Readable in a diff, and about
    a quarter of the size of ``indent=1`` (records travel to the GPU machine with the tree)."""
    if not isinstance(obj, dict):
        return json.dumps(obj, indent=1, default=_jsonable) + "\n"

    def compact(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"), default=_jsonable)

    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            text = "[\n  " + ",\n  ".join(compact(x) for x in value) + "\n ]"
        else:
            text = compact(value)
        lines.append(f" {compact(str(key))}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (:func:`dumps_record`) to a temp file in the same folder, fsync, then rename
    over the target: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = dumps_record(obj)  # fails (unserialisable value) before the file is opened
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@functools.cache
def _git_state() -> tuple[str, bool]:
    """(commit, cmmc/ modified) of this process's code, taken once: at its first run, close to
    when the code was imported. Asked again at the end of a long run, git would name whatever
    was committed meanwhile, not the code that ran."""
    root = _HERE.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "cmmc"],
            capture_output=True,
            text=True,
        ).stdout
        return commit, bool(status.strip())
    except OSError:
        return "", False


def environment() -> dict[str, Any]:
    """Library versions, git commit, host and CPU/GPU of this process."""
    import scipy
    import sklearn
    import torch

    import cmmc

    # A launcher that copied the tree to another machine says which commit it copied: the copy's
    # .git, if any, can be stale (the lent GPU machine's is from the start of the session).
    commit = os.environ.get("CMMC_GIT_COMMIT", "")
    dirty = os.environ.get("CMMC_GIT_DIRTY", "") == "1"
    if not commit:
        commit, dirty = _git_state()
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "cmmc": cmmc.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "cpu": cpu,
        # the vector unit torch's CPU kernels use (AVX2, AVX512, ...): "AMD EPYC" alone names
        # machines whose float rounding, and speed, can differ
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # how many processes (runs or batches) shared the machine (None: not recorded)
        "concurrent_runs": int(os.environ["CMMC_CONCURRENT_RUNS"])
        if os.environ.get("CMMC_CONCURRENT_RUNS")
        else None,
        # "mps": those processes ran their kernels side by side (CUDA MPS), not time-sliced
        "gpu_sharing": os.environ.get("CMMC_GPU_SHARING") or None,
    }


def _load(task: dict[str, Any]):
    from cmmc.data import Dataset, load_dataset
    from cmmc.synthetic import make_multiview_blobs

    opts = task["data"]
    n = opts.get("n_samples")
    if task["dataset"] == "synthetic":
        views, y = make_multiview_blobs(n or 1000, 10, 2, seed=task["seed"])
        return Dataset("synthetic", views, y, 10, ["view1", "view2"])
    ds = load_dataset(task["dataset"], views=opts.get("views"))
    if n is not None:
        rng = np.random.default_rng(task["seed"])
        if n > ds.n_samples:
            raise ValueError(
                f"n_samples={n} is more than the {ds.n_samples} samples of {task['dataset']}: "
                "a subset cannot be larger than its set (use the generated 'synthetic' set)"
            )
        ds = ds.subset(np.sort(rng.choice(ds.n_samples, n, replace=False)))
    return ds


def _pretrain_key(task: dict[str, Any]) -> str:
    """Hash of everything pre-training depends on."""
    cfg = task["config"]
    keep = ("pretrain_epochs", "batch_size", "lr", "low_dim", "high_dim", "recon_form", "precision")
    keep += ("eval_every",)  # the cached history carries the metrics evaluated during pre-training
    payload = {k: cfg[k] for k in keep}
    payload.update(dataset=task["dataset"], data=task["data"], seed=task["seed"])
    payload.update(device=task["device"], v=RECORD_VERSION)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain_cache_path(task: dict[str, Any], results_dir: Path) -> Path:
    return results_dir / ".cache" / "pretrain" / f"{_pretrain_key(task)}.pt"


_RUNS_IN_PROCESS = 0  # ru_maxrss is a per-process maximum: only a process's first run owns it


def _peak_memory_mb(device) -> dict[str, float | None]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, float | None] = {"peak_rss_mb": rss if _RUNS_IN_PROCESS == 1 else None}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _run_cmmc(task: dict[str, Any], ds, results_dir: Path) -> dict[str, Any]:
    from cmmc.analysis import tsne_2d
    from cmmc.config import Config
    from cmmc.estimator import CMMC

    cfg = Config(**task["config"])
    model = CMMC(ds.n_clusters, random_state=task["seed"], device=task["device"], config=cfg)
    model.progress = False
    snapshots: dict[str, Any] = {}
    snapshot = None
    if task["kind"] == "tsne":
        rng = np.random.default_rng(task["seed"])
        pick = np.sort(
            rng.choice(
                ds.n_samples, min(task["options"]["tsne_points"], ds.n_samples), replace=False
            )
        )
        snapshot = lambda phase, emb: snapshots.__setitem__(  # noqa: E731
            phase,
            {
                k: [tsne_2d(v[pick], task["seed"]).round(3).tolist() for v in emb[k]]
                for k in ("z", "h", "q")
            },
        )
        snapshots["indices"] = pick.tolist()
        snapshots["labels"] = ds.labels[pick].tolist()
    cache = None
    if cfg.pretrain_epochs > 0 and task["kind"] == "cmmc" and task.get("cache_pretrain", True):
        cache = _pretrain_cache_path(task, results_dir)
    cached = cache is not None and cache.exists()
    model.fit(
        ds.views,
        ds.labels,
        pretrain_cache=str(cache) if cache else None,
        on_phase_end=snapshot,
    )
    rec = _fitted_body(task, ds, model)
    rec["pretrain_from_cache"] = cached
    if snapshots:
        rec["tsne"] = snapshots
    return rec


def _fitted_body(task: dict[str, Any], ds, model) -> dict[str, Any]:
    """The record fields of one fitted model: metrics, losses, history, analyses."""
    from cmmc.analysis import multilevel
    from cmmc.metrics import evaluate

    rec: dict[str, Any] = {"metrics": evaluate(ds.labels, model.labels_)}
    contrastive = [r["loss"] for r in model.history_ if r["phase"] == "contrastive"]
    rec["final_contrastive_loss"] = contrastive[-1] if contrastive else None
    rec["final_loss"] = model.history_[-1]["loss"] if model.history_ else None
    rec["history"] = model.history_
    rec["phase_seconds"] = model.phase_seconds_
    if task["options"].get("multilevel"):
        rec["multilevel"] = multilevel(
            model.embed(ds.views), ds.labels, ds.n_clusters, task["seed"]
        )
    rec["labels_sha256"] = hashlib.sha256(np.asarray(model.labels_, np.int64).tobytes()).hexdigest()
    return rec


def _run_baselines(task: dict[str, Any], ds) -> dict[str, Any]:
    from cmmc.baselines import run_baselines

    return {"baselines": run_baselines(ds.views, ds.labels, ds.n_clusters, task["seed"])}


def _run_scalability(task: dict[str, Any], ds) -> dict[str, Any]:
    rec = _run_cmmc({**task, "kind": "scalability"}, ds, Path("."))
    per_epoch: dict[str, float] = {}
    for phase in ("pretrain", "contrastive", "finetune"):
        secs = [r["seconds"] for r in rec["history"] if r["phase"] == phase]
        if secs:  # the first epoch carries warm-up costs: report the median
            per_epoch[phase] = float(np.median(secs))
    rec["seconds_per_epoch"] = per_epoch
    rec["n_samples"] = ds.n_samples
    return rec


def _start_run(device_name: str, threads: int | None):
    """Thread count, device, peak-memory counters and clocks at the start of a run (or batch)."""
    import torch

    from cmmc.estimator import resolve_device

    if threads:
        torch.set_num_threads(threads)
    _git_state()  # the code that runs now, whatever is committed before the record is written
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    global _RUNS_IN_PROCESS
    _RUNS_IN_PROCESS += 1
    return device, datetime.now(UTC).isoformat(), time.perf_counter()


def run_task(task: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run one task in this process and write its record; returns the record (or the stored one)."""

    path = Path(task["path"])
    if path.exists():
        return json.loads(path.read_text())
    device, started, t0 = _start_run(task["device"], threads)
    ds = _load(task)
    results_dir = path.parents[3]
    if task["kind"] in ("cmmc", "tsne"):
        body = _run_cmmc({**task, "device": str(device)}, ds, results_dir)
    elif task["kind"] == "baselines":
        body = _run_baselines(task, ds)
    elif task["kind"] == "scalability":
        body = _run_scalability({**task, "device": str(device)}, ds)
    else:
        raise ValueError(f"unknown experiment kind {task['kind']!r}")
    record = _assemble(task, device, ds, body, time.perf_counter() - t0, started)
    write_json_atomic(path, record)
    return record


def _assemble(task, device, ds, body, seconds: float, started: str) -> dict[str, Any]:
    record = {
        "record_version": RECORD_VERSION,
        **{k: task[k] for k in ("key", "experiment", "kind", "dataset", "variant", "seed")},
        **{k: task[k] for k in ("profile", "data", "config", "options")},
        "device": str(device),
        "n_samples": ds.n_samples,
        "dims": ds.dims,
        "n_clusters": ds.n_clusters,
        **body,
        "total_seconds": seconds,
        **_peak_memory_mb(device),
        "environment": environment(),
        "started": started,
        "finished": datetime.now(UTC).isoformat(),
    }
    return _round(record)


def batchable(task: dict[str, Any]) -> bool:
    """Whether a task may share a batch: CMMC runs whose data does not depend on the seed."""
    return (
        task["kind"] == "cmmc"
        and task["dataset"] != "synthetic"
        and "n_samples" not in task["data"]
    )


def _batch_key(task: dict[str, Any]) -> str:
    from cmmc.batched import BATCHABLE

    cfg = {k: v for k, v in task["config"].items() if k not in BATCHABLE}
    same = {k: task[k] for k in ("experiment", "kind", "dataset", "data", "device", "options")}
    return json.dumps({**same, "config": cfg}, sort_keys=True, default=str)


def batches(tasks: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Group tasks into batches of at most ``size`` that differ only in seed and temperatures
    (first-come order kept); a task that cannot share stays alone."""
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    out: list[list[dict[str, Any]]] = []
    for t in tasks:
        if size <= 1 or not batchable(t):
            out.append([t])
            continue
        chunks = groups.setdefault(_batch_key(t), [])
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
            out.append(chunks[-1])
        chunks[-1].append(t)
    return out


def run_batch(
    tasks: list[dict[str, Any]], threads: int | None = None, share_pretraining: bool = True
) -> list[dict[str, Any]]:
    """Train the tasks of one batch at once (:func:`cmmc.batched.fit_batched`); one record each.

    Every record names the batch's members and whether members with the same seed shared
    their pre-training: rerunning the same batch that way gives the same metrics.
    """

    from cmmc.batched import fit_batched, map_threads
    from cmmc.config import Config

    todo = [t for t in tasks if not Path(t["path"]).exists()]
    done = [json.loads(Path(t["path"]).read_text()) for t in tasks if Path(t["path"]).exists()]
    if len(todo) <= 1:
        return done + [run_task(t, threads) for t in todo]
    keys = {_batch_key(t) for t in todo}
    if len(keys) > 1 or not all(batchable(t) for t in todo):
        raise ValueError("a batch must hold CMMC runs on the same data and configuration, "
                         "differing only in seed and temperatures")  # fmt: skip
    device, started, t0 = _start_run(todo[0]["device"], threads)
    ds = _load(todo[0])
    seeds = [t["seed"] for t in todo]
    configs = [Config(**t["config"]) for t in todo]
    models = fit_batched(
        ds.views, ds.labels, ds.n_clusters, seeds, configs, str(device), False, share_pretraining
    )
    members = [
        {"seed": t["seed"], "tau_f": c.tau_f, "tau_l": c.tau_l, "key": t["key"]}
        for t, c in zip(todo, configs, strict=True)
    ]
    bodies = map_threads(lambda i: _fitted_body(todo[i], ds, models[i]), range(len(todo)))
    seconds = time.perf_counter() - t0  # the batch's wall time, analyses included
    records = []
    for t, body in zip(todo, bodies, strict=True):
        body["pretrain_from_cache"] = False
        body["batch"] = {
            "size": len(todo),
            "members": members,
            "shared_pretraining": share_pretraining,
        }
        record = _assemble(t, device, ds, body, seconds, started)
        write_json_atomic(Path(t["path"]), record)
        records.append(record)
    return done + records


def _worker_init(threads: int) -> None:
    """One worker's share of the cores, for torch and for the OpenMP/BLAS pools of k-means."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def verify_record(
    path: str | Path,
    scratch: str | Path,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Recompute a recorded run from its record alone and compare it with the record.

    The run is rebuilt from the record's data, configuration, options and seed (its key must
    come out the same: otherwise the record or the code changed what a run means); a run
    trained in a batch is recomputed with its whole batch (``batch.members``), since a batch's
    rounding may differ from a lone run's. The new records go under ``scratch``. ``device``
    overrides the record's device (then only the metrics can be compared, not expected equal).
    Returns ``same`` (label hash and metrics equal; for baselines, every method's metrics),
    ``same_labels`` (None where the record keeps no label hash), both sets of metrics and
    ``machine`` (:func:`machine_difference`: None when the rerun ran on the same kind of
    processor and torch as the record, else what differs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record {path}: no such file")
    rec = json.loads(path.read_text())
    missing = [
        k for k in ("key", "kind", "dataset", "data", "config", "seed", "device") if k not in rec
    ]
    if missing:
        raise ValueError(f"record {path}: not a run record, missing {missing}")
    if device is None and rec["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"record {path} was computed on {rec['device']}, and this machine has no CUDA "
                "device; pass device='cpu' (--device cpu) to recompute it on the CPU, where the "
                "metrics are not expected to be equal"
            )
    members = (rec.get("batch") or {}).get("members") or [{"seed": rec["seed"], "key": rec["key"]}]
    tasks = []
    for m in members:
        config = dict(rec["config"])
        config.update({k: m[k] for k in ("tau_f", "tau_l") if k in m})
        task = {k: rec[k] for k in ("experiment", "kind", "dataset", "variant", "profile")}
        task.update(data=rec["data"], config=config, options=rec.get("options", {}))
        task.update(seed=m["seed"], device=rec["device"], cache_pretrain=False)
        key = run_key(task)
        if key != m["key"]:
            raise ValueError(
                f"record {path}: the run rebuilt from it has key {key}, the record says "
                f"{m['key']} (seed {m['seed']}): the record or the meaning of a run changed"
            )
        task["key"] = key
        if device is not None:
            task["device"] = device
        task["path"] = str(record_path(scratch, task))
        tasks.append(task)
    # records from before shared pre-training existed do not say so: they did not share
    share = bool((rec.get("batch") or {}).get("shared_pretraining", False))
    out = run_batch(tasks, threads, share) if len(tasks) > 1 else [run_task(tasks[0], threads)]
    new = next(r for r in out if r["key"] == rec["key"])
    had, got = _outcome(rec), _outcome(new)
    return {
        "record": str(path),
        "rerun": next(t["path"] for t in tasks if t["key"] == rec["key"]),
        "device": new["device"],
        "batch_seeds": [m["seed"] for m in members],
        "same": had == got,
        "same_labels": (
            rec["labels_sha256"] == new.get("labels_sha256") if "labels_sha256" in rec else None
        ),
        "metrics_record": had["metrics"],
        "metrics_rerun": got["metrics"],
        "machine": machine_difference(
            rec.get("environment", {}), new["environment"], new["device"]
        ),
    }


_MACHINE_KEYS = {"cpu": ("cpu", "cpu_capability", "torch"), "cuda": ("gpu", "torch")}


def machine_difference(recorded: dict[str, Any], here: dict[str, Any], device: str) -> str | None:
    """Why a rerun may round differently from its record (None: same machine kind).

    Float rounding depends on the processor's kernels: a CPU with another vector unit (AVX2 or
    AVX-512), another GPU or another torch can change labels, so there a difference does not
    point at the code. Records from before ``cpu_capability`` existed do not name theirs.
    """
    keys = _MACHINE_KEYS["cpu" if device == "cpu" else "cuda"]
    missing = [k for k in keys if recorded.get(k) is None]
    differ = [k for k in keys if k not in missing and recorded[k] != here.get(k)]
    if differ:
        return "; ".join(f"{k}: recorded {recorded[k]}, here {here.get(k)}" for k in differ)
    if missing:
        here_too = ", ".join(f"{k} {here.get(k)}" for k in missing)
        return f"the record does not name its {', '.join(missing)}; here {here_too}"
    return None


def _outcome(rec: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must reproduce: the label hash and metrics (for baselines, each method's
    metrics); times are left out."""
    if "baselines" in rec:
        drop = ("seconds",)
        return {
            "labels": None,
            "metrics": {
                m: {k: v for k, v in res.items() if k not in drop}
                for m, res in rec["baselines"].items()
            },
        }
    return {"labels": rec.get("labels_sha256"), "metrics": rec.get("metrics")}


def run_grid(
    tasks: list[dict[str, Any]],
    workers: int = 1,
    engine: str = "local",
    scheduler: str | None = None,
    progress: bool = True,
    batch: int = 1,
) -> list[dict[str, Any]]:
    """Run every task without a record; ``engine`` is "local" (processes) or "dask".

    ``batch`` > 1 trains up to that many seeds/temperatures of one configuration at once
    (:func:`run_batch`; worth it on a GPU, where a single run waits on kernel launches).
    """
    from tqdm.auto import tqdm

    todo = [t for t in tasks if not Path(t["path"]).exists()]
    done = [json.loads(Path(t["path"]).read_text()) for t in tasks if Path(t["path"]).exists()]
    if not todo:
        return done
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    groups = batches(todo, batch)
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)
    if engine == "dask":
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed

        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            client = Client(cluster)
        try:
            futures = [client.submit(run_batch, g, threads, pure=False) for g in groups]
            for fut in dask_completed(futures):
                recs = fut.result()
                done.extend(recs)
                bar.update(len(recs))
        finally:
            client.close()
            if not scheduler:
                cluster.close()
    elif engine == "local":
        os.environ["CMMC_CONCURRENT_RUNS"] = str(max(workers, 1))  # recorded with each run
        # Scalability measures each run's peak memory: always a fresh process per run.
        if workers <= 1 and not any(t["kind"] == "scalability" for t in todo):
            _worker_init(threads)
            for g in groups:
                recs = run_batch(g)
                done.extend(recs)
                bar.update(len(recs))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(
                max(workers, 1),
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(threads,),
                max_tasks_per_child=1,  # a fresh process per run: honest peak memory
            ) as pool:
                futs = [pool.submit(run_batch, g) for g in groups]
                for fut in as_completed(futs):
                    recs = fut.result()
                    done.extend(recs)
                    bar.update(len(recs))
    else:
        raise ValueError(f"engine must be 'local' or 'dask', got {engine!r}")
    bar.close()
    return done


def load_records(results_dir: str | Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Every record under ``results_dir`` (optionally one experiment's)."""
    root = Path(results_dir) / experiment if experiment else Path(results_dir)
    if not root.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(root.rglob("seed*-*.json"))]
