"""Run the experiment grids on one GPU machine inside a fixed time budget, resumably.

The GPU machine lent to this project runs one command of at most 10 minutes, so this script:
  * plans the grids in priority order (seed-major, large datasets first, so a partial grid
    already gives every dataset several seeds),
  * keeps ``--workers`` runs in flight on the one GPU (each run is small and launch-bound),
  * stops starting runs at ``--budget`` seconds, and every ``--pack-every`` seconds packs the
    finished records into ``--out/results.tar.gz`` (what comes back if the call is cut off),
  * re-runs one task in a separate process and compares it with the grid's record
    (determinism on the device).
Records already present under ``--results`` are skipped: calling it again continues the grid.

    python scripts/device_grid.py --device cuda --workers 12 --budget 500 --out $OUT
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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from cmmc.runner import _worker_init, plan, run_task

DEFAULT_EXPERIMENTS = ["main", "convergence", "ablation", "views", "tsne", "temperature"]


def work(dataset: str) -> int:
    """Rough cost of a run (samples x views, from the registry): larger sets start first inside
    each seed, so that long runs are not the last ones left."""
    from cmmc.data import get_spec

    try:
        spec = get_spec(dataset)
    except ValueError:  # the generated "synthetic" set
        return 0
    return int(spec.get("N") or 0) * len(spec.get("dims") or [])


def ordered_tasks(experiments: list[str], device: str, results: Path, profile: str) -> list[dict]:
    tasks = []
    for rank, exp in enumerate(experiments):
        for t in plan(exp, device=device, results_dir=results, profile=profile):
            size = -work(t["dataset"])
            # main: all code-variant seeds before the paper variant
            variant_rank = 0 if (exp != "main" or t["variant"] == "code") else 1
            tasks.append(((rank, variant_rank, t["seed"], size), t))
    return [t for _, t in sorted(tasks, key=lambda x: x[0])]


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


def pack(results: Path, out: Path) -> int:
    """Tar every record (not the caches) into out/results.tar.gz atomically; returns the count."""
    files = [p for p in results.rglob("seed*-*.json") if ".cache" not in p.parts]
    tmp = out / "results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(results.parent)))
    os.replace(tmp, out / "results.tar.gz")
    return len(files)


def start_check(task: dict, results: Path) -> tuple[subprocess.Popen, Path]:
    """Run ``task`` again in its own process, into a scratch results folder."""
    scratch = Path("/tmp/cmmc_determinism")
    twin = dict(task, path=str(scratch / Path(task["path"]).relative_to(results.parent)))
    code = (
        "import json,sys; from cmmc.runner import _worker_init, run_task; _worker_init(1); "
        "run_task(json.loads(sys.argv[1]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(twin)])
    return proc, Path(twin["path"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--results", default="results")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--budget", type=float, default=500, help="seconds; no run starts after")
    ap.add_argument("--out", default=os.environ.get("OUT", "device_out"))
    ap.add_argument("--pack-every", type=float, default=30)
    ap.add_argument("--limit", type=int, default=None, help="at most this many runs (tests)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    results, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ordered_tasks(args.experiments, args.device, results, args.profile)
    todo = [t for t in tasks if not Path(t["path"]).exists()]
    ok = readable({t["dataset"] for t in todo})
    todo = [t for t in todo if t["dataset"] in ok]
    todo = todo[: args.limit]
    print(f"planned {len(tasks)} runs, {len(todo)} without a record", flush=True)
    # The twin run: a small set, early in the queue, so both finish well inside the budget.
    small = [t for t in todo if t["dataset"] in ("BDGP", "Synthetic3d", "Prokaryotic")]
    probe = (small or todo or [None])[0]
    check = start_check(probe, results) if probe else None
    log = open(out / "grid_log.tsv", "a")
    threads = max(1, (os.cpu_count() or 1) // (args.workers + 1))
    queue = list(todo)
    running: dict = {}
    last_pack = time.perf_counter()
    done = failed = 0
    os.environ["CMMC_CONCURRENT_RUNS"] = str(args.workers)  # recorded in every record
    ctx = mp.get_context("spawn")  # CUDA cannot live in a forked process
    with ProcessPoolExecutor(
        args.workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        while queue or running:
            elapsed = time.perf_counter() - t0
            while queue and len(running) < args.workers and elapsed < args.budget:
                t = queue.pop(0)
                running[pool.submit(run_task, t)] = (t, time.perf_counter())
            if not running:
                break
            finished, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for fut in finished:
                t, started = running.pop(fut)
                name = f"{t['experiment']}/{t['dataset']}/{t['variant']}/seed{t['seed']}"
                try:
                    rec = fut.result()
                    acc = rec.get("metrics", {}).get("ACC")
                    done += 1
                    status = f"acc={acc}"
                except Exception as e:  # keep the grid going; the log says what failed
                    failed += 1
                    status = f"FAILED {type(e).__name__}: {e}"
                secs = time.perf_counter() - started
                line = f"{time.perf_counter() - t0:.0f}\t{name}\t{secs:.1f}\t{status}"
                print(line, flush=True)
                log.write(line + "\n")
                log.flush()
            if time.perf_counter() - last_pack > args.pack_every:
                pack(results, out)
                last_pack = time.perf_counter()
            if queue and time.perf_counter() - t0 >= args.budget and not running:
                break
    n = pack(results, out)
    print(f"done {done}, failed {failed}, left {len(queue)}, records packed {n}", flush=True)
    if check is not None:
        proc, twin = check
        try:
            proc.wait(timeout=max(1.0, args.budget + 60 - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
        first = Path(probe["path"])
        verdict = {"task": probe["path"]}
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
