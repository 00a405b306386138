"""Run the experiment grids on one GPU machine inside a fixed time budget, resumably.

The GPU machine lent to this project runs one command of at most 10 minutes, so this script:
  * plans the grids in priority order (seed-major, large datasets first, so a partial grid
    already gives every dataset several seeds),
  * trains up to ``--batch`` seeds/temperatures of one configuration at once (stacked weights,
    ``cmmc.batched``: a single run is launch-bound) and keeps up to ``--workers`` batches and
    ``--members`` runs in flight (bigger batches, not more of them, when groups are large),
  * starts a batch only if it should end before ``--deadline`` (the call's time limit): the
    seconds per member come from the records of earlier calls (x 1.25), and a batch that would
    not fit is cut to the members that do, the rest staying queued; a run cut off by the end of
    the call is work lost, so the tail of a call is filled with small batches,
  * every ``--pack-every`` seconds packs the finished records into ``--out/results.tar.gz``
    (what comes back if the call is cut off),
  * re-runs one batch in a separate process and compares it with the grid's records
    (determinism on the device).
Records already present under ``--results`` are skipped: calling it again continues the grid.

    python scripts/device_grid.py --device cuda --workers 4 --batch 10 --members 40 --deadline 580 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from cmmc.runner import _worker_init, batches, load_records, plan, run_batch, run_key

# Priority: the main table's code default first, its paper forms just before the temperature grid.
SMALL = ("BDGP", "Synthetic3d", "Prokaryotic")  # where the determinism twin is taken
DEFAULT_EXPERIMENTS = ["main", "convergence", "tsne", "views", "ablation", "temperature"]


def work(task: dict) -> int:
    """Rough cost of a run (samples x views, from the registry, or the task's subset size):
    larger sets start first inside each seed, so that long runs are not the last ones left."""
    from cmmc.data import get_spec

    n = (task.get("data") or {}).get("n_samples")
    try:
        spec = get_spec(task["dataset"])
    except ValueError:  # the generated "synthetic" set: its size is the task's
        return int(n or 0) * 2
    return int(n or spec.get("N") or 0) * len(spec.get("dims") or [])


def ordered_tasks(experiments: list[str], device: str, results: Path, profile: str) -> list[dict]:
    tasks = []
    paper_rank = experiments.index("temperature") - 0.5 if "temperature" in experiments else 99
    for rank, exp in enumerate(experiments):
        for t in plan(exp, device=device, results_dir=results, profile=profile):
            size = -work(t)
            # the main table's paper forms: after the other experiments, before the temperature
            # grid (the sensitivity study matters less than the code-vs-paper comparison)
            late = exp == "main" and t["variant"] != "code"
            tasks.append(((paper_rank if late else rank, t["seed"], size), t))
    return [t for _, t in sorted(tasks, key=lambda x: x[0])]


def without_records(tasks: list[dict], results: Path) -> list[dict]:
    """The tasks with no record yet. A run recorded on another device (say the CPU) counts as
    done: same data, configuration and seed, so it is the same experiment up to float rounding,
    and the GPU's time goes to runs nobody has. Scalability runs measure their device, so only a
    record from the same device counts for them."""
    records = load_records(results)
    keys = {r.get("key") for r in records}
    devices = {str(r.get("device")) for r in records}
    todo = []
    for t in tasks:
        if Path(t["path"]).exists():
            continue
        if t["kind"] != "scalability" and any(run_key(dict(t, device=d)) in keys for d in devices):
            continue
        todo.append(t)
    return todo


def readable(names: set[str]) -> set[str]:
    """The datasets whose files are all present and verified (the others are reported, skipped):
    a missing file must cost one line here, not a failed run per seed on the device."""
    from cmmc.data import load_dataset

    ok = set()
    for name in sorted(names):
        if name == "synthetic":
            ok.add(name)
            continue
        try:
            load_dataset(name, download=False)  # the device reaches no network
            ok.add(name)
        except (FileNotFoundError, ValueError) as e:
            print(f"skipping {name}: {str(e)[:300]}", flush=True)
    return ok


def workload(t: dict) -> tuple:
    """What a run's time depends on besides its batch and the GPU's load: the data set, the
    subset size and the schedule's epochs (a task and its record give the same tuple). A short
    scalability run on a subset is not priced as the full schedule on the whole set: in session
    13 four Fashion subset runs (6-13 s each) were estimated at a 435-s main run and never started.
    """
    c = t.get("config") or {}
    epochs = tuple(c.get(k) for k in ("pretrain_epochs", "contrastive_epochs", "finetune_epochs"))
    return (t["dataset"], (t.get("data") or {}).get("n_samples"), epochs)


def seconds_per_member(
    results: Path, device: str, unknown: float, workers: int
) -> Callable[[dict, int], float]:
    """``estimate(task, m)``: a pessimistic wall time of one member of a batch of ``m`` tasks of
    ``task``'s :func:`workload` on this device kind, with ``workers`` batches in flight.

    Processes time-share the GPU, so a batch runs about ``load`` times slower than alone, where
    ``load`` is the number of batches in flight (a record's ``concurrent_runs``; the first GPU
    session's records lack it: 12 single runs shared the GPU). Per record, (batch time /
    members / load) is its member's share of GPU time, with ``load`` capped at ``workers``: a
    large run among small ones got more than 1/load of the GPU, so a record made under a
    heavier load than this call's predicts no less than its own wall time (uncapped, a Fashion
    run recorded among 8 looked 8x cheaper, and session 7 lost two runs at the deadline so).
    A member's share shrinks as its batch grows, so a batch of ``m`` is estimated from the
    records of the largest batch size up to ``m`` (the slowest of them; from the smallest size
    when none is that small), x ``workers`` x 1.25. When the workload has no record of a size
    between that one and ``m``, the gain of the larger batch is borrowed from the other
    workloads (:func:`batching_gain`). A workload without records: ``unknown`` seconds per member.
    """
    shares: dict[tuple, dict[int, float]] = defaultdict(dict)
    kind = "cpu" if device == "cpu" else "cuda"
    for r in load_records(results):
        if not str(r.get("device", "")).startswith(kind) or r.get("kind") == "baselines":
            continue
        size = (r.get("batch") or {}).get("size", 1)
        load = (r.get("environment") or {}).get("concurrent_runs") or 12
        per = float(r.get("total_seconds") or 0) / size / min(load, workers)
        by_size = shares[workload(r)]
        by_size[size] = max(by_size.get(size, 0.0), per)

    def estimate(task: dict, m: int) -> float:
        key = workload(task)
        by_size = shares.get(key)
        if not by_size:
            return unknown
        fitting = [s for s in by_size if s <= m]
        size = max(fitting) if fitting else min(by_size)
        others = {d: v for d, v in shares.items() if d != key}
        gain = batching_gain(others, by_size[size], size, m)
        return 1.25 * by_size[size] * gain * workers

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
    queue: list[list[dict]],
    running: list[list[dict]],
    room: float,
    per_member: Callable[[dict, int], float],
    workers: int,
    members: int,
) -> list[list[dict]]:
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
    queue: list[list[dict]],
    per_member: Callable[[dict, int], float],
    deadline: float,
    workers: int,
    members: int,
) -> list[tuple[float, float, list[dict]]]:
    """The call as the estimates see it: (start, end, batch) of each batch that would start,
    with :func:`take` deciding as the grid does and each batch lasting its estimate (m x the
    per-member time); what is left in ``queue`` would not start. Planning, not timing: the
    estimates are pessimistic."""
    t, running, plan = 0.0, [], []
    while True:
        for g in take(queue, [g for _, g in running], deadline - t, per_member, workers, members):
            end = t + len(g) * per_member(g[0], len(g))
            running.append((end, g))
            plan.append((t, end, g))
        if not running:
            return plan
        running.sort(key=lambda x: x[0])
        t = running.pop(0)[0]


def batch_name(g: list[dict]) -> str:
    """experiment/dataset/variant/seeds0,1,...: how the logs name a batch."""
    t = g[0]
    seeds = ",".join(str(m["seed"]) for m in g)
    return f"{t['experiment']}/{t['dataset']}/{t['variant']}/seeds{seeds}"


def pack(results: Path, out: Path) -> int:
    """Tar every record (not the caches) into out/results.tar.gz atomically; returns the count."""
    files = [p for p in results.rglob("seed*-*.json") if ".cache" not in p.parts]
    tmp = out / "results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(results.parent)))
    os.replace(tmp, out / "results.tar.gz")
    return len(files)


def start_check(group: list[dict], results: Path, threads: int) -> tuple[subprocess.Popen, Path]:
    """Run one batch again in its own process, into a scratch results folder."""
    scratch = Path("/tmp/cmmc_determinism")
    twins = [
        dict(t, path=str(scratch / Path(t["path"]).relative_to(results.parent))) for t in group
    ]
    code = (
        "import json,sys; from cmmc.runner import _worker_init, run_batch; "
        f"_worker_init({threads}); run_batch(json.loads(sys.argv[1]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(twins)])
    return proc, Path(twins[0]["path"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--results", default="results")
    ap.add_argument("--workers", type=int, default=4, help="batches in flight on the GPU, at most")
    ap.add_argument("--batch", type=int, default=10, help="members per batch (1: single runs)")
    ap.add_argument("--members", type=int, default=40, help="runs in flight on the GPU, at most")
    ap.add_argument("--no-check", action="store_true", help="no determinism re-run")
    ap.add_argument(
        "--extra-load",
        type=int,
        default=0,
        help="other processes on the GPU during the call (e.g. a `cmmc verify` beside it)",
    )
    ap.add_argument("--deadline", type=float, default=580, help="seconds the call may run")
    ap.add_argument(
        "--unknown", type=float, default=150, help="seconds per member for a dataset never run"
    )
    ap.add_argument("--out", default=os.environ.get("OUT", "device_out"))
    ap.add_argument("--pack-every", type=float, default=30)
    ap.add_argument("--limit", type=int, default=None, help="at most this many runs (tests)")
    ap.add_argument(
        "--plan",
        action="store_true",
        help="print the batches the estimates would start and when, then exit (no GPU needed: "
        "plan a call here before spending device time)",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    results, out = Path(args.results), Path(args.out)
    tasks = ordered_tasks(args.experiments, args.device, results, args.profile)
    todo = without_records(tasks, results)
    ok = readable({t["dataset"] for t in todo})
    todo = [t for t in todo if t["dataset"] in ok]
    todo = todo[: args.limit]
    groups = batches(todo, args.batch)
    print(f"planned {len(tasks)} runs, {len(todo)} without a record, {len(groups)} batches")
    want_check = not ("scalability" in args.experiments or args.no_check)  # no twin beside it
    # every process on the GPU slows every batch: the twin and any --extra-load count too
    load = args.workers + args.extra_load + int(want_check)
    per_member = seconds_per_member(results, args.device, args.unknown, load)
    if args.plan:
        queue = list(groups)
        for start, end, g in simulate(queue, per_member, args.deadline, args.workers, args.members):
            print(f"{start:5.0f} -> {end:5.0f} s\t{batch_name(g)}")
        print(f"{sum(len(g) for g in queue)} run(s) would not start before the deadline")
        return
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // (args.workers + 1))
    # The twin: the first batch of 2+ runs of a small set that the grid starts (exactly those
    # members: a batch's rounding may depend on its size) runs again in its own process.
    probe, check = None, None
    log = open(out / "grid_log.tsv", "a")
    queue = list(groups)
    running: dict = {}
    last_pack = time.perf_counter()
    done = failed = lost = 0
    os.environ["CMMC_CONCURRENT_RUNS"] = str(load)  # recorded: processes sharing the GPU, at most
    ctx = mp.get_context("spawn")  # CUDA cannot live in a forked process
    # scalability records each run's peak memory: a fresh process per run there
    fresh = 1 if "scalability" in args.experiments else None
    with ProcessPoolExecutor(
        args.workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(threads,),
        max_tasks_per_child=fresh,
    ) as pool:
        while queue or running:
            elapsed = time.perf_counter() - t0
            room = args.deadline - elapsed
            busy = [g for g, _ in running.values()]
            for g in take(queue, busy, room, per_member, args.workers, args.members):
                running[pool.submit(run_batch, g)] = (g, time.perf_counter())
                if want_check and probe is None and len(g) > 1 and g[0]["dataset"] in SMALL:
                    probe, check = g, start_check(g, results, threads)
            if not running:
                break
            if room <= 0:  # out of time: what still runs is lost; stop before the call is killed
                for g, _ in running.values():
                    line = f"{elapsed:.0f}\t{batch_name(g)}\t-\tLOST at the deadline"
                    print(line, flush=True)
                    log.write(line + "\n")
                for proc in list(pool._processes.values()):  # no public way to stop a worker
                    proc.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                lost = sum(len(g) for g, _ in running.values())
                running.clear()
                break
            finished, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for fut in finished:
                g, started = running.pop(fut)
                name = batch_name(g)
                try:
                    recs = fut.result()
                    accs = [r.get("metrics", {}).get("ACC") for r in recs]
                    done += len(recs)
                    status = f"acc={accs}"
                except Exception as e:  # keep the grid going; the log says what failed
                    failed += len(g)
                    status = f"FAILED {type(e).__name__}: {e}"
                secs = time.perf_counter() - started
                line = f"{time.perf_counter() - t0:.0f}\t{name}\t{secs:.1f}\t{status}"
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()
            if time.perf_counter() - last_pack > args.pack_every:
                pack(results, out)
                last_pack = time.perf_counter()

    n = pack(results, out)
    left = sum(len(g) for g in queue)
    print(f"done {done}, failed {failed}, lost {lost}, left {left}, records packed {n}", flush=True)
    if check is not None:
        proc, twin = check
        try:
            proc.wait(timeout=max(1.0, args.deadline - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
        first = Path(probe[0]["path"])
        verdict = {"task": probe[0]["path"], "batch_seeds": [t["seed"] for t in probe]}
        if first.exists() and twin.exists():
            a, b = json.loads(first.read_text()), json.loads(twin.read_text())
            verdict.update(
                same_labels=a["labels_sha256"] == b["labels_sha256"],
                metrics_grid=a["metrics"],
                metrics_rerun=b["metrics"],
            )
        else:
            verdict["error"] = "one of the two runs did not finish"
        (out / "determinism.json").write_text(json.dumps(verdict, indent=1))
        print("determinism:", json.dumps(verdict), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
