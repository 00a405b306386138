"""Engines: run tasks and write their records, in this process, in local worker processes or on
a Dask cluster; all give the same records.

Every run (or batch) writes one record per task, atomically, and a task whose record exists is
skipped: a killed grid resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cmmc.config import profile_name
from cmmc.data import Dataset
from cmmc.device import use_deterministic_cuda
from cmmc.estimator import resolve_device
from cmmc.experiments.kinds import MEMBER_FIELDS, Task, data_depends_on_seed, kind_of, task_data
from cmmc.experiments.plan import plan
from cmmc.experiments.records import (
    RECORD_VERSION,
    dedupe,
    environment,
    git_state,
    load_records,
    read_record,
    round_floats,
    write_json_atomic,
)
from cmmc.phases import NonFiniteLoss

_RUNS_IN_PROCESS = 0  # ru_maxrss is a per-process maximum: only a process's first run owns it


def worker_init(threads: int) -> None:
    """One worker's share of the cores, for torch and for the OpenMP/BLAS pools of k-means."""
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _start_run(device_name: str, threads: int | None) -> tuple[torch.device, str, float]:
    """Thread count, device, peak-memory counters and clocks at the start of a run (or batch)."""
    global _RUNS_IN_PROCESS
    if threads:
        torch.set_num_threads(threads)
    git_state()  # the code that runs now, whatever is committed before the record is written
    device = resolve_device(device_name)
    if device.type == "cuda":
        use_deterministic_cuda()  # the same labels from the same seed on the same kind of GPU
        torch.cuda.reset_peak_memory_stats()
    _RUNS_IN_PROCESS += 1
    return device, datetime.now(UTC).isoformat(), time.perf_counter()


def _peak_memory_mb(device: torch.device) -> dict[str, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, float | None] = {"peak_rss_mb": rss if _RUNS_IN_PROCESS == 1 else None}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _assemble(
    task: Task,
    device: torch.device,
    ds: Dataset,
    body: dict[str, Any],
    seconds: float,
    started: str,
) -> dict[str, Any]:
    record = {
        "record_version": task.get("record_version", RECORD_VERSION),  # verify: the record's
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
    return round_floats(record)


def _stored(tasks: Iterable[Task]) -> list[dict[str, Any]]:
    return [read_record(t["path"]) for t in tasks if Path(t["path"]).exists()]


def run_name(task: Task) -> str:
    """A run as a person would name it: experiment, data set, variant, seed."""
    return f"{task['experiment']} {task['dataset']} {task['variant']} seed {task['seed']}"


def run_task(task: Task, threads: int | None = None) -> dict[str, Any]:
    """Run one task in this process and write its record; returns the record (or the stored
    one, without running, when it exists)."""
    path = Path(task["path"])
    if path.exists():
        return read_record(path)
    kind = kind_of(task)
    device, started, t0 = _start_run(task["device"], threads)
    ds = task_data(task)
    try:
        body = kind.run(task, ds, device)
    except NonFiniteLoss as err:
        raise NonFiniteLoss(f"{run_name(task)}: {err}") from None
    record = _assemble(task, device, ds, body, time.perf_counter() - t0, started)
    write_json_atomic(path, record)
    return record


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def batchable(task: Task) -> bool:
    """Whether a task may share a batch: its kind trains stacked members, and its data does not
    depend on its seed (members share one copy of the data)."""
    return kind_of(task).batchable and not data_depends_on_seed(task)


def batch_key(task: Task) -> str:
    """What the members of one batch share: everything but the seed and :data:`MEMBER_FIELDS`."""
    cfg = {k: v for k, v in task["config"].items() if k not in MEMBER_FIELDS}
    same = {k: task[k] for k in ("experiment", "kind", "dataset", "data", "device", "options")}
    return json.dumps({**same, "config": cfg}, sort_keys=True, default=str)


def batches(tasks: list[Task], size: int) -> list[list[Task]]:
    """Group tasks into batches of at most ``size`` that differ only in seed and
    :data:`MEMBER_FIELDS` (first-come order kept); a task that cannot share stays alone."""
    groups: dict[str, list[list[Task]]] = {}
    out: list[list[Task]] = []
    for t in tasks:
        if size <= 1 or not batchable(t):
            out.append([t])
            continue
        chunks = groups.setdefault(batch_key(t), [])
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
            out.append(chunks[-1])
        chunks[-1].append(t)
    return out


def run_batch(
    tasks: list[Task], threads: int | None = None, share_pretraining: bool = True
) -> list[dict[str, Any]]:
    """Train the tasks of one batch at once; one record each (a lone task: :func:`run_task`).

    Every record names the batch's members and whether members with the same seed shared
    their pre-training: rerunning the same batch that way gives the same metrics.
    """
    todo = [t for t in tasks if not Path(t["path"]).exists()]
    done = _stored(tasks)
    if len(todo) <= 1:
        return done + [run_task(t, threads) for t in todo]
    if len({batch_key(t) for t in todo}) > 1 or not all(batchable(t) for t in todo):
        raise ValueError("a batch must hold runs of a batchable kind on the same data and "
                         f"configuration, differing only in seed and {list(MEMBER_FIELDS)}")  # fmt: skip
    kind = kind_of(todo[0])
    device, started, t0 = _start_run(todo[0]["device"], threads)
    ds = task_data(todo[0])
    try:
        bodies = kind.run_batch(todo, ds, device, share_pretraining)
    except NonFiniteLoss as err:
        raise NonFiniteLoss(f"batch of {', '.join(map(run_name, todo))}: {err}") from None
    seconds = time.perf_counter() - t0  # the batch's wall time, analyses included
    members = [
        {"seed": t["seed"], **{k: t["config"][k] for k in MEMBER_FIELDS}, "key": t["key"]}
        for t in todo
    ]
    records = []
    for t, body in zip(todo, bodies, strict=True):
        body["batch"] = {
            "size": len(todo),
            "members": members,
            "shared_pretraining": share_pretraining,
        }
        record = _assemble(t, device, ds, body, seconds, started)
        write_json_atomic(Path(t["path"]), record)
        records.append(record)
    return done + records


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------
def _unless_diverged(get: Any, failed: list[str]) -> list[dict[str, Any]]:
    """The records ``get()`` returns; a diverged run leaves none and its error joins
    ``failed``, so that the grid goes on."""
    try:
        return get()
    except NonFiniteLoss as err:
        failed.append(str(err))
        return []


def run_grid(
    tasks: list[Task],
    workers: int = 1,
    engine: str = "local",
    scheduler: str | None = None,
    progress: bool = True,
    batch: int = 1,
) -> list[dict[str, Any]]:
    """Run every task without a record; ``engine`` is "local" (processes) or "dask".

    ``batch`` > 1 trains up to that many seeds/temperatures of one configuration at once
    (:func:`run_batch`; worth it on a GPU, where a single run waits on kernel launches). A kind
    that needs a fresh process per run gets one (local engine).
    """
    todo = [t for t in tasks if not Path(t["path"]).exists()]
    done = _stored(tasks)
    if not todo:
        return done
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    groups = batches(todo, batch)
    failed: list[str] = []
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)
    if engine == "dask":
        done += _run_dask(groups, workers, threads, scheduler, bar, failed)
    elif engine == "local":
        os.environ["CMMC_CONCURRENT_RUNS"] = str(max(workers, 1))  # recorded with each run
        fresh = any(kind_of(t).fresh_process for t in todo)
        if workers <= 1 and not fresh:
            worker_init(threads)
            for g in groups:
                done.extend(_unless_diverged(lambda g=g: run_batch(g), failed))
                bar.update(len(g))
        else:
            with ProcessPoolExecutor(
                max(workers, 1),
                mp_context=mp.get_context("spawn"),
                initializer=worker_init,
                initargs=(threads,),
                max_tasks_per_child=1,  # a fresh process per run: honest peak memory
            ) as pool:
                futures = {pool.submit(run_batch, g): g for g in groups}
                for fut in as_completed(futures):
                    done.extend(_unless_diverged(fut.result, failed))
                    bar.update(len(futures[fut]))
    else:
        raise ValueError(f"engine must be 'local' or 'dask', got {engine!r}")
    bar.close()
    if failed:
        raise NonFiniteLoss(
            f"{len(failed)} run(s) diverged and have no record (the others do):\n"
            + "\n".join(failed)
        )
    return done


def _run_dask(
    groups: list[list[Task]],
    workers: int,
    threads: int,
    scheduler: str | None,
    bar: tqdm,
    failed: list[str],
) -> list[dict[str, Any]]:
    # Imported here: Dask is the optional `distributed` extra, needed only by this engine.
    from distributed import Client, LocalCluster
    from distributed import as_completed as dask_completed

    cluster = None
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
    out = []
    try:
        futures = {client.submit(run_batch, g, threads, pure=False): g for g in groups}
        for fut in dask_completed(list(futures)):
            out.extend(_unless_diverged(fut.result, failed))
            bar.update(len(futures[fut]))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return out


def ensure_records(
    experiment: str,
    results_dir: str | Path,
    profile: str,
    rerun: bool = False,
    quick_kwargs: Mapping[str, Any] | None = None,
    full_kwargs: Mapping[str, Any] | None = None,
    device: str = "cpu",
    workers: int = 1,
    compute_missing: bool | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records of ``experiment`` under ``results_dir``, computed when needed.

    The plan is :func:`~cmmc.experiments.plan.plan` with ``quick_kwargs`` (datasets, seeds,
    variants, n_samples, sizes) in the quick profile and ``full_kwargs`` (default: everything
    of ``experiments.toml``) otherwise. Computation happens when ``rerun`` is true (runs of the
    plan without a record are computed; a run whose record exists is the same computation and
    keeps its record) or when no record of the experiment exists and ``compute_missing``
    (default: only in the quick profile). In the full profile it never starts hours of
    computation on its own: it shows what exists and lists what is missing.

    Returns ``(records, info)``: the records of ``profile`` when there are any (else all records
    found), one per run (:func:`~cmmc.experiments.records.dedupe`); ``info`` has ``computed``
    (runs computed now), ``found`` (records found before), ``profiles`` (profiles of the
    returned records), ``planned`` (runs in the plan), ``missing`` (dataset, variant and seed
    of each planned run without a record of ``profile``) and ``plan_profile``.
    """
    results_dir, profile = Path(results_dir), profile_name(profile)
    kwargs = dict(quick_kwargs or {}) if profile == "quick" else dict(full_kwargs or {})
    if compute_missing is None:
        compute_missing = profile == "quick"
    tasks = plan(experiment, profile=profile, device=device, results_dir=results_dir, **kwargs)
    found = dedupe(load_records(results_dir, experiment))
    computed = 0
    if rerun or (not found and compute_missing):
        computed = sum(not Path(t["path"]).exists() for t in tasks)
        run_grid(tasks, workers=workers, progress=progress)
    records = dedupe(load_records(results_dir, experiment))
    mine = [r for r in records if r.get("profile") == profile]
    chosen = mine if mine else records
    # A planned run counts as done only with a record of the plan's own profile.
    have = {(r["dataset"], str(r["variant"]), int(r["seed"])) for r in mine}
    missing = [
        {"dataset": t["dataset"], "variant": t["variant"], "seed": t["seed"]}
        for t in tasks
        if (t["dataset"], str(t["variant"]), int(t["seed"])) not in have
    ]
    info = {
        "computed": computed,
        "found": len(found),
        "profiles": sorted({str(r.get("profile")) for r in chosen}),
        "planned": len(tasks),
        "missing": missing,
        "plan_profile": profile,
    }
    return chosen, info
