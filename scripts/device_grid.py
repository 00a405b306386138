"""Run the experiment grids within one job's wall-time limit on an accelerator, resumably.

The planning and the job loop are :mod:`cmmc.experiments.walltime`; this command adds what a
job on a machine without network needs around them:
  * data sets whose files are missing are reported and skipped (one line, not a failed run per
    seed),
  * every ``--pack-every`` seconds the finished records are packed into ``--out/results.tar.gz``
    (what comes back if the job is cut off),
  * one batch is run again in a separate process and compared with the grid's records
    (determinism on the device): ``--out/determinism.json``.
Records already present under ``--results`` are skipped: calling it again continues the grid.

    python scripts/device_grid.py --device cuda --workers 4 --batch 10 --members 40 --deadline 580 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from cmmc.data import load_dataset
from cmmc.experiments import batches, kind_of
from cmmc.experiments.walltime import (
    DEFAULT_EXPERIMENTS,
    batch_name,
    ordered_tasks,
    run_within_limit,
    seconds_per_member,
    simulate,
    without_records,
)

SMALL = ("BDGP", "Synthetic3d", "Prokaryotic")  # where the determinism twin is taken


def readable(names: set[str]) -> set[str]:
    """The data sets whose files are all present and verified (the others are reported and
    skipped): the job reaches no network, so nothing is downloaded."""
    ok = set()
    for name in sorted(names):
        try:
            load_dataset(name, download=False)
            ok.add(name)
        except (FileNotFoundError, ValueError) as e:
            print(f"skipping {name}: {str(e)[:300]}", flush=True)
    return ok


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
        dict(
            t,
            path=str(scratch / Path(t["path"]).relative_to(results.parent)),
            results=str(scratch / results.name),
        )
        for t in group
    ]
    code = (
        "import json,sys; from cmmc.experiments import worker_init, run_batch; "
        f"worker_init({threads}); run_batch(json.loads(sys.argv[1]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(twins)])
    return proc, Path(twins[0]["path"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--results", default="results")
    ap.add_argument("--workers", type=int, default=4, help="batches in flight on the GPU, at most")
    ap.add_argument("--batch", type=int, default=10, help="members per batch (1: single runs)")
    ap.add_argument("--members", type=int, default=40, help="runs in flight on the GPU, at most")
    ap.add_argument("--no-check", action="store_true", help="no determinism re-run")
    ap.add_argument(
        "--extra-load",
        type=int,
        default=0,
        help="other processes on the GPU during the job (e.g. a `cmmc verify` beside it)",
    )
    ap.add_argument("--deadline", type=float, default=580, help="the job's wall-time limit, s")
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
        "plan a job before spending device time)",
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
    # no twin beside runs that measure their own process
    fresh = any(kind_of(t).fresh_process for t in todo)
    want_check = not (fresh or args.no_check)
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
    os.environ["CMMC_CONCURRENT_RUNS"] = str(load)  # recorded: processes sharing the GPU, at most
    log = open(out / "grid_log.tsv", "a")
    # The twin: the first batch of 2+ runs of a small set that the grid starts (exactly those
    # members: a batch's rounding may depend on its size) runs again in its own process.
    twin: dict = {}
    last_pack = time.perf_counter()

    def on_start(g: list[dict]) -> None:
        if want_check and not twin and len(g) > 1 and g[0]["dataset"] in SMALL:
            twin["batch"] = g
            twin["proc"], twin["path"] = start_check(g, results, threads)

    def on_end(g: list[dict], seconds: float, status: str) -> None:
        line = f"{time.perf_counter() - t0:.0f}\t{batch_name(g)}\t{seconds:.1f}\t{status}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    def on_tick() -> None:
        nonlocal last_pack
        if time.perf_counter() - last_pack > args.pack_every:
            pack(results, out)
            last_pack = time.perf_counter()

    done = run_within_limit(
        list(groups), args.deadline, per_member, args.workers, args.members, threads,
        started_at=t0, on_start=on_start, on_end=on_end, on_tick=on_tick,
    )  # fmt: skip
    n = pack(results, out)
    print(f"done {done.done}, failed {done.failed}, lost {done.lost}, left {done.left}, "
          f"records packed {n}", flush=True)  # fmt: skip
    if twin:
        try:
            twin["proc"].wait(timeout=max(1.0, args.deadline - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            twin["proc"].kill()
        first = Path(twin["batch"][0]["path"])
        verdict = {"task": str(first), "batch_seeds": [t["seed"] for t in twin["batch"]]}
        if first.exists() and twin["path"].exists():
            a, b = json.loads(first.read_text()), json.loads(twin["path"].read_text())
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
