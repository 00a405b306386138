"""A grid that must fit a job's wall-time limit, as on a batch scheduler.

A job (one call on a machine, as a Slurm job with ``--time``) is killed at a fixed time, and a run
still going then is lost. So the grid is planned to make the most of each job and to lose
nothing at its end:

* tasks in priority order (seed-major, large data sets first, so that a partial grid already
  gives every data set several seeds: :func:`ordered_tasks`), without those already recorded,
  on this device or another (:func:`without_records`);
* batches of one configuration (stacked seeds and temperatures) with at most ``workers`` batches
  and ``members`` runs in flight, since processes time-share an accelerator;
* a batch starts only if it should end before the limit: the seconds per member come from the
  records of earlier jobs (:func:`seconds_per_member`, pessimistic), and a batch that would not
  fit is cut to the members that do, the rest staying queued (:func:`take`);
* :func:`simulate` plays a job with these estimates, to plan it before spending machine time;
  :func:`run_within_limit` runs it, and stops what still runs just before the limit.

Calling it again with the same results folder continues the grid.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmmc.data import get_spec
from cmmc.experiments.engines import run_batch, worker_init
from cmmc.experiments.kinds import Task, kind_of
from cmmc.experiments.plan import plan
from cmmc.experiments.records import RECORD_VERSION, load_records, run_key

# Priority: the main table's code default first, its paper forms just before the temperature grid.
DEFAULT_EXPERIMENTS = ["main", "convergence", "tsne", "views", "ablation", "temperature"]
SAFETY = 1.25  # estimates are the slowest recorded share, times this
UNRECORDED_LOAD = 12  # processes that shared the GPU in records made before concurrent_runs was


def work(task: Task) -> int:
    """Rough cost of a run: samples x views (the registry's N, or the task's subset size)."""
    spec = get_spec(task["dataset"])
    n = (task.get("data") or {}).get("n_samples") or spec.get("N") or 0
    return int(n) * len(spec.get("dims") or [])


def ordered_tasks(experiments: list[str], device: str, results: Path, profile: str) -> list[Task]:
    """The tasks of ``experiments`` in priority order: experiment by experiment in the given
    order, except the main table's paper forms, which come just before the temperature grid
    (the sensitivity study matters less than the code-vs-paper comparison); inside each,
    seed-major, larger data sets first (long runs are not the last ones left)."""
    tasks = []
    paper_rank = experiments.index("temperature") - 0.5 if "temperature" in experiments else 99
    for rank, exp in enumerate(experiments):
        for t in plan(exp, device=device, results_dir=results, profile=profile):
            late = exp == "main" and t["variant"] != "code"
            tasks.append(((paper_rank if late else rank, t["seed"], -work(t)), t))
    return [t for _, t in sorted(tasks, key=lambda x: x[0])]


def without_records(tasks: list[Task], results: Path) -> list[Task]:
    """The tasks with no record yet. A run recorded on another device (say the CPU) counts as
    done: same data, configuration and seed, so it is the same experiment up to float rounding.
    A kind whose device is what it measures (``device_in_identity``) needs a record from the
    same device."""
    records = load_records(results)
    keys = {r.get("key") for r in records}
    devices = {str(r.get("device")) for r in records}
    todo = []
    for t in tasks:
        if Path(t["path"]).exists():
            continue
        if not kind_of(t).device_in_identity and any(
            run_key(dict(t, device=d), v) in keys for d in devices for v in (1, RECORD_VERSION)
        ):
            continue
        todo.append(t)
    return todo


def workload(t: dict[str, Any]) -> tuple:
    """What a run's time depends on besides its batch and the machine's load: the data set, the
    subset size and the schedule's epochs (a task and its record give the same tuple). A short
    run on a subset is so never priced as the full schedule on the whole set."""
    c = t.get("config") or {}
    epochs = tuple(c.get(k) for k in ("pretrain_epochs", "contrastive_epochs", "finetune_epochs"))
    return (t["dataset"], (t.get("data") or {}).get("n_samples"), epochs)


def seconds_per_member(
    results: Path, device: str, unknown: float, workers: int
) -> Callable[[dict[str, Any], int], float]:
    """``estimate(task, m)``: a pessimistic wall time of one member of a batch of ``m`` tasks of
    ``task``'s :func:`workload` on this device kind, with ``workers`` batches in flight.

    Processes time-share the GPU, so a batch runs about ``load`` times slower than alone, where
    ``load`` is the number of batches in flight (a record's ``concurrent_runs``; records made
    before it was recorded ran :data:`UNRECORDED_LOAD` single runs at once). Per record, (batch
    time / members / load) is its member's share of GPU time, with ``load`` capped at
    ``workers``: a large run among small ones got more than 1/load of the GPU, so a record made
    under a heavier load than this job's predicts no less than its own wall time (uncapped, a
    Fashion run recorded among 8 looked 8x cheaper than it was, and runs were lost at the limit).
    A member's share shrinks as its batch grows, so a batch of ``m`` is estimated from the
    records of the largest batch size up to ``m`` (the slowest of them; from the smallest size
    when none is that small), x ``workers`` x :data:`SAFETY`. When the workload has no record of
    a size between that one and ``m``, the gain of the larger batch is borrowed from the other
    workloads (:func:`batching_gain`). A workload without records: ``unknown`` seconds a member.
    """
    shares: dict[tuple, dict[int, float]] = defaultdict(dict)
    kind = "cpu" if device == "cpu" else "cuda"
    for r in load_records(results):
        if not str(r.get("device", "")).startswith(kind) or not kind_of(r).uses_config:
            continue  # another device kind, or a kind that trains nothing (baselines)
        size = (r.get("batch") or {}).get("size", 1)
        load = (r.get("environment") or {}).get("concurrent_runs") or UNRECORDED_LOAD
        per = float(r.get("total_seconds") or 0) / size / min(load, workers)
        by_size = shares[workload(r)]
        by_size[size] = max(by_size.get(size, 0.0), per)

    def estimate(task: dict[str, Any], m: int) -> float:
        key = workload(task)
        by_size = shares.get(key)
        if not by_size:
            return unknown
        fitting = [s for s in by_size if s <= m]
        size = max(fitting) if fitting else min(by_size)
        others = {d: v for d, v in shares.items() if d != key}
        gain = batching_gain(others, by_size[size], size, m)
        return SAFETY * by_size[size] * gain * workers

    return estimate


def batching_gain(shares: dict[tuple, dict[int, float]], share: float, a: int, b: int) -> float:
    """How much a member's share of GPU time shrinks from a batch of ``a`` to one of ``b``, as
    comparable workloads recorded it (their share at size ``a`` within 4x of ``share``: small
    sets gain far more from batching than big ones). Per workload, the share at its largest
    size up to ``b`` over the share at its largest size up to ``a``, where the two sizes differ;
    the upper quartile of these ratios (pessimistic), never above 1; 1 when none qualifies."""
    ratios = []
    for by_size in shares.values():
        lo = [s for s in by_size if s <= a]
        hi = [s for s in by_size if s <= b]
        if not lo or max(hi) == max(lo):
            continue
        base = by_size[max(lo)]
        if share / 4 <= base <= share * 4:
            ratios.append(by_size[max(hi)] / base)
    if not ratios:
        return 1.0
    ratios.sort()
    return min(1.0, ratios[(3 * len(ratios)) // 4] if len(ratios) >= 4 else ratios[-1])


def take(
    queue: list[list[Task]],
    running: list[list[Task]],
    room: float,
    per_member: Callable[[Task, int], float],
    workers: int,
    members: int,
) -> list[list[Task]]:
    """The batches to start now, first come first served, taken off the front of ``queue``.

    At most ``workers`` batches and ``members`` runs are in flight (the GPU's load: processes
    time-share it, so the number of runs sets how long each takes, whatever the batching); a
    batch is cut to the members that end within ``room`` seconds, and to the free member slots
    when at least 3 (or the whole batch) fit: small batches waste the GPU, the rest waits.
    """
    started = []
    inflight = sum(len(g) for g in running)
    for i, g in enumerate(queue):
        if len(running) + len(started) >= workers or inflight >= members:
            break
        fit = next((m for m in range(len(g), 0, -1) if m * per_member(g[0], m) <= room), 0)
        slots = members - inflight
        if fit < 1 or slots < min(3, fit):
            continue
        fit = min(fit, slots)
        queue[i] = g[fit:]
        started.append(g[:fit])
        inflight += fit
    queue[:] = [g for g in queue if g]
    return started


def simulate(
    queue: list[list[Task]],
    per_member: Callable[[Task, int], float],
    limit: float,
    workers: int,
    members: int,
) -> list[tuple[float, float, list[Task]]]:
    """The job as the estimates see it: (start, end, batch) of each batch that would start,
    with :func:`take` deciding as :func:`run_within_limit` does and each batch lasting its
    estimate (m x the per-member time); what is left in ``queue`` would not start. Planning,
    not timing: the estimates are pessimistic."""
    t, running, out = 0.0, [], []
    while True:
        for g in take(queue, [g for _, g in running], limit - t, per_member, workers, members):
            end = t + len(g) * per_member(g[0], len(g))
            running.append((end, g))
            out.append((t, end, g))
        if not running:
            return out
        running.sort(key=lambda x: x[0])
        t = running.pop(0)[0]


def batch_name(g: list[Task]) -> str:
    """experiment/dataset/variant/seeds0,1,...: how the logs name a batch."""
    t = g[0]
    seeds = ",".join(str(m["seed"]) for m in g)
    return f"{t['experiment']}/{t['dataset']}/{t['variant']}/seeds{seeds}"


@dataclass
class JobOutcome:
    """Runs recorded, failed, lost at the limit (still running then) and left in the queue."""

    done: int = 0
    failed: int = 0
    lost: int = 0
    left: int = 0


def run_within_limit(
    queue: list[list[Task]],
    limit: float,
    per_member: Callable[[Task, int], float],
    workers: int,
    members: int,
    threads: int,
    started_at: float | None = None,
    on_start: Callable[[list[Task]], None] | None = None,
    on_end: Callable[[list[Task], float, str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> JobOutcome:
    """Run the batches of ``queue`` in ``workers`` spawned processes (``threads`` torch threads
    each) until the queue is empty or ``limit`` seconds after ``started_at`` (a
    ``time.perf_counter()`` value; default now), starting batches as :func:`take` decides.

    At the limit the batches still running are stopped and counted as lost. ``on_start(batch)``
    is called when a batch starts, ``on_end(batch, seconds, status)`` when it ends (status:
    ``acc=[...]``, ``FAILED ...`` or ``LOST at the limit``; a failure does not stop the job),
    ``on_tick()`` about every 5 seconds. A kind that needs a fresh process per run
    (``fresh_process``) gets one.
    """
    t0 = time.perf_counter() if started_at is None else started_at
    fresh = any(kind_of(t).fresh_process for g in queue for t in g)
    out = JobOutcome()
    running: dict[Any, tuple[list[Task], float]] = {}
    with ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),  # CUDA cannot live in a forked process
        initializer=worker_init,
        initargs=(threads,),
        max_tasks_per_child=1 if fresh else None,
    ) as pool:
        while queue or running:
            room = limit - (time.perf_counter() - t0)
            busy = [g for g, _ in running.values()]
            for g in take(queue, busy, room, per_member, workers, members):
                running[pool.submit(run_batch, g)] = (g, time.perf_counter())
                if on_start:
                    on_start(g)
            if not running:
                break
            if room <= 0:  # out of time: what still runs is lost; stop before the job is killed
                for g, started in running.values():
                    if on_end:
                        on_end(g, time.perf_counter() - started, "LOST at the limit")
                    out.lost += len(g)
                for proc in list(pool._processes.values()):  # no public way to stop a worker
                    proc.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                running.clear()
                break
            finished, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for fut in finished:
                g, started = running.pop(fut)
                try:
                    recs = fut.result()
                    out.done += len(recs)
                    status = f"acc={[r.get('metrics', {}).get('ACC') for r in recs]}"
                except Exception as e:  # keep the job going; the status says what failed
                    out.failed += len(g)
                    status = f"FAILED {type(e).__name__}: {e}"
                if on_end:
                    on_end(g, time.perf_counter() - started, status)
            if on_tick:
                on_tick()
    out.left = sum(len(g) for g in queue)
    return out
