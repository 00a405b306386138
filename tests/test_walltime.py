"""cmmc.experiments.walltime: the priority order of a job, its run-time estimates, and which
batches it starts within its wall-time limit."""

import json
import os
from pathlib import Path

import pytest

from cmmc.experiments import run_key
from cmmc.experiments import walltime as grid


def test_priority_order(tmp_path):
    tasks = grid.ordered_tasks(grid.DEFAULT_EXPERIMENTS, "cuda", tmp_path, "full")
    stage = []  # the sequence of (experiment, variant kind) blocks, in order
    for t in tasks:
        block = (t["experiment"], "paper" if t["variant"] == "paper" else "")
        if not stage or stage[-1] != block:
            stage.append(block)
    expected = ["main", "convergence", "tsne", "views", "ablation", "main", "temperature"]
    assert [e for e, _ in stage] == expected
    assert stage[0] == ("main", "") and stage[5] == ("main", "paper")
    code = [t for t in tasks if t["experiment"] == "main" and t["variant"] == "code"]
    seeds = [t["seed"] for t in code]
    assert seeds == sorted(seeds)  # seed-major: every data set gets seed 0 before any seed 1
    first = [t["dataset"] for t in code if t["seed"] == 0]
    assert first[0] == "Fashion" and first[-1] in ("Prokaryotic", "Synthetic3d")  # large first


def write(path: Path, **record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def gpu_record(path: Path, dataset: str, secs: float, load: int, **extra) -> None:
    """A GPU record as the estimates read it: its time and the processes that shared the GPU."""
    fields = dict(dataset=dataset, kind="cmmc", device="cuda", total_seconds=secs, batch=None)
    write(path, **(fields | extra), environment={"concurrent_runs": load})


def task(dataset: str) -> dict:
    """A task as the estimates see it (no subset, no schedule: like the records below)."""
    return {"dataset": dataset}


def test_seconds_per_member_scales_with_the_load(tmp_path):
    r = tmp_path / "results"

    def rec(name, dataset, secs, size=1, load=None, device="cuda", kind="cmmc"):
        write(
            r / name,
            dataset=dataset,
            kind=kind,
            device=device,
            total_seconds=secs,
            batch={"size": size} if size > 1 else None,
            environment={"concurrent_runs": load} if load else {},
        )

    rec("main/A/code/seed0-a.json", "A", 120)  # no concurrent_runs: 12 single runs at once
    rec("main/A/code/seed1-b.json", "A", 200, size=5, load=8)  # 200 / 5 / 8 = 5 s of GPU each
    rec("main/E/code/seed0-c.json", "E", 320, load=8)  # the lone run is the slowest per member
    rec("main/E/code/seed1-d.json", "E", 400, size=2, load=8)
    rec("main/E/code/seed2-e.json", "E", 480, size=3, load=8)
    rec("main/C/code/seed0-f.json", "C", 9, device="cpu")
    rec("baselines/D/x/seed0-g.json", "D", 9, kind="baselines")
    # 16 workers: no record was made under a heavier load, so every load counts in full
    assert grid.UNRECORDED_LOAD == 12
    est = grid.seconds_per_member(r, "cuda", unknown=150, workers=16)
    # A: a lone run's share 120 / 12 = 10 s; a batch of 5: 200 / 5 / 8 = 5 s each
    assert est(task("A"), 1) == pytest.approx(1.25 * 16 * 10)
    # no batch of 2-4 of A recorded: its lone run, times the gain E recorded from 1 to 3
    # (E's lone share 40 s is within 4x of A's 10 s): 20 / 40
    assert est(task("A"), 4) == pytest.approx(1.25 * 16 * 10 * 0.5)
    # a recorded size needs no borrowing; E has no size above 3 to borrow from
    assert est(task("A"), 5) == pytest.approx(1.25 * 16 * 5) == est(task("A"), 10)
    # E: shares 40 (lone), 25 (pair), 20 (triple): the largest recorded size up to m
    assert est(task("E"), 1) == pytest.approx(1.25 * 16 * 320 / 8)
    assert est(task("E"), 2) == pytest.approx(1.25 * 16 * 400 / 2 / 8)
    # E's batch of 9 from its triple, times A's gain from 1 to 5 (10 -> 5 s); A's lone share
    # (10 s) is within 4x of E's triple (20 s)
    assert est(task("E"), 9) == pytest.approx(1.25 * 16 * 480 / 3 / 8 * 0.5)
    # another device, baselines: unknown
    assert est(task("C"), 1) == 150 and est(task("D"), 3) == 150


def test_seconds_per_member_never_below_a_records_own_time_under_a_lighter_load(tmp_path):
    r = tmp_path / "results"
    # a Fashion run recorded among 8 (435 s): priced at 435 / 8 x 2, it would be lost
    gpu_record(r / "main/F/paper/seed0-a.json", "F", 435.0, load=8)
    # a batch of 4 recorded alone (load 1): 100 s, 25 s a member
    gpu_record(r / "main/G/code/seed0-b.json", "G", 100.0, load=1, batch={"size": 4})
    est = grid.seconds_per_member(r, "cuda", unknown=150, workers=2)
    # 2 batches in flight, fewer than the record's 8: its own 435 s (x 1.25), not 435 / 8 x 2
    assert est(task("F"), 1) == pytest.approx(1.25 * 435.0)
    # a record made under a lighter load still scales up: 25 s alone, twice that beside another
    assert est(task("G"), 4) == pytest.approx(1.25 * 2 * 25.0)


def test_a_short_schedule_on_a_subset_is_not_priced_as_the_full_run(tmp_path):
    r = tmp_path / "results"
    full = {"pretrain_epochs": 200, "contrastive_epochs": 100, "finetune_epochs": 50}
    short = {"pretrain_epochs": 2, "contrastive_epochs": 2, "finetune_epochs": 2}
    # the full schedule on the whole set, alone on the GPU: 435 s
    gpu_record(r / "main/F/paper/seed0-a.json", "F", 435.0, load=1, config=full, data={})
    # the short schedule on a 5000-sample subset: 12 s
    gpu_record(r / "scalability/F/n5000/seed0-b.json", "F", 12.0, load=1, config=short,
               data={"n_samples": 5000}, kind="scalability")  # fmt: skip
    est = grid.seconds_per_member(r, "cuda", unknown=150, workers=1)
    main = {"dataset": "F", "config": full, "data": {}}
    assert est(main, 1) == pytest.approx(1.25 * 435.0)
    assert est(dict(main, config=short, data={"n_samples": 5000}), 1) == pytest.approx(1.25 * 12)
    # another subset size or schedule has no record of its own: unknown, not the 435-s run
    assert est(dict(main, config=short, data={"n_samples": 1000}), 1) == 150
    assert est(dict(main, config=dict(full, finetune_epochs=0)), 1) == 150


def test_batching_gain_borrows_from_comparable_sets_only():
    shares = {
        "big1": {1: 40.0, 5: 32.0},  # 0.8
        "big2": {1: 30.0, 3: 18.0},  # 0.6
        "big3": {1: 20.0, 4: 14.0},  # 0.7
        "big4": {1: 50.0, 2: 45.0},  # 0.9
        "big5": {1: 60.0, 5: 30.0},  # 0.5
        "tiny": {1: 2.0, 10: 0.2},  # 0.1, but 2 s is not within 4x of 40 s: ignored
        "only": {1: 35.0},  # no larger size: ignored
    }
    # five ratios 0.5 0.6 0.7 0.8 0.9: the upper quartile is the 4th smallest (index 15 // 4 = 3)
    assert grid.batching_gain(shares, 40.0, 1, 10) == pytest.approx(0.8)
    # up to 3 only big2 (3) and big4 (2) qualify: fewer than 4 ratios, so the largest
    assert grid.batching_gain(shares, 40.0, 1, 3) == pytest.approx(0.9)
    # around 2 s only "tiny" is comparable
    assert grid.batching_gain(shares, 2.0, 1, 10) == pytest.approx(0.1)
    # nothing recorded between the sizes, or a gain above 1: no gain
    assert grid.batching_gain(shares, 40.0, 5, 9) == 1.0
    assert grid.batching_gain({"x": {1: 10.0, 5: 12.0}}, 10.0, 1, 5) == 1.0


def test_a_run_recorded_on_another_device_is_done(tmp_path):
    r = tmp_path / "results"
    main = grid.ordered_tasks(["main"], "cuda", r, "full")
    scal = grid.ordered_tasks(["scalability"], "cuda", r, "full")
    on_cpu, changed, scal_cpu, on_gpu = main[0], main[1], scal[0], main[2]
    # the same run on the CPU: a record with the CPU's key, in the CPU's file
    write(r / "cpu_a.json", key=run_key(dict(on_cpu, device="cpu")), device="cpu")
    # another configuration on the CPU does not count
    other = dict(changed, config=dict(changed["config"], lr=1.0), device="cpu")
    write(r / "cpu_b.json", key=run_key(other), device="cpu")
    # a scalability run measures its device: the CPU's record does not count for the GPU
    write(r / "cpu_c.json", key=run_key(dict(scal_cpu, device="cpu")), device="cpu")
    write(Path(on_gpu["path"]), key=on_gpu["key"], device="cuda")
    for p in ("cpu_a.json", "cpu_b.json", "cpu_c.json"):  # where load_records looks
        (r / p).rename(r / f"seed0-{p}")
    todo = grid.without_records(main + scal, r)
    paths = {t["path"] for t in todo}
    assert on_cpu["path"] not in paths and on_gpu["path"] not in paths
    assert changed["path"] in paths and scal_cpu["path"] in paths
    assert len(todo) == len(main) + len(scal) - 2


def batch(dataset: str, n: int) -> list[dict]:
    return [{"dataset": dataset, "seed": s} for s in range(n)]


def test_take_caps_batches_runs_and_time():
    table = {"A": 10.0, "B": 100.0}

    def per(t, m):
        return table[t["dataset"]]

    # 30 run slots: A's 10 and 10 fill 20; B (10 runs) gets the 10 left; the 4th waits (workers)
    queue = [batch("A", 10), batch("A", 10), batch("B", 10), batch("A", 2)]
    started = grid.take(queue, [], 1000.0, per, workers=3, members=30)
    assert [len(g) for g in started] == [10, 10, 10]
    assert [len(g) for g in queue] == [2]
    # only 350 s left: B is cut to the 3 members that end in time; the rest stays queued
    queue = [batch("B", 10)]
    started = grid.take(queue, [], 350.0, per, workers=8, members=30)
    assert [len(g) for g in started] == [3] and [len(g) for g in queue] == [7]
    # 28 runs in flight: 2 free slots do not start a part of a 10-run batch, but a 2-run one fits
    queue = [batch("A", 10), batch("A", 2)]
    started = grid.take(queue, [batch("A", 28)], 1000.0, per, workers=8, members=30)
    assert [len(g) for g in started] == [2] and [len(g) for g in queue] == [10]
    # 25 in flight: 5 free slots take 5 of a 10-run batch
    queue = [batch("A", 10)]
    started = grid.take(queue, [batch("A", 25)], 1000.0, per, workers=8, members=30)
    assert [len(g) for g in started] == [5] and [len(g) for g in queue] == [5]
    # nothing fits in 5 s
    queue = [batch("A", 10)]
    assert grid.take(queue, [], 5.0, per, workers=8, members=30) == []


def test_take_uses_the_estimate_of_the_batch_size_it_starts():

    def per(t, m):  # bigger batches: less time per member (as records show)
        return 100.0 if m < 5 else 50.0

    # 300 s: 6 x 50 fits, 7 x 50 does not; with the lone-run estimate only 3 would have fitted
    queue = [batch("A", 10)]
    started = grid.take(queue, [], 300.0, per, workers=4, members=40)
    assert [len(g) for g in started] == [6] and [len(g) for g in queue] == [4]


def test_scalability_runs_largest_first(tmp_path):
    tasks = grid.ordered_tasks(["scalability"], "cuda", tmp_path, "full")
    first = tasks[0]
    assert first["dataset"] == "synthetic" and first["data"]["n_samples"] == 100_000
    sizes = [grid.work(t) for t in tasks]
    assert sizes == sorted(sizes, reverse=True)  # samples x views, the generated set included


def test_simulate_plays_the_call_by_hand():
    per = {"A": 10.0, "B": 100.0}  # seconds a member, whatever the batch size

    def group(ds, m):
        return [{"dataset": ds} for _ in range(m)]

    def run(deadline):
        queue = [group("A", 3), group("B", 2), group("A", 1)]
        plan = grid.simulate(queue, lambda t, m: per[t["dataset"]], deadline, workers=2, members=40)
        return [(s, e, g[0]["dataset"], len(g)) for s, e, g in plan], queue

    # room for everything: A3 and B2 start at 0; A1 takes A3's worker when it ends at 30
    assert run(250) == ([(0, 30, "A", 3), (0, 200, "B", 2), (30, 40, "A", 1)], [])
    # 150 s: B2 (200 s) is cut to one member, its second starts when A3 ends, A1 at 100
    assert run(150) == (
        [(0, 30, "A", 3), (0, 100, "B", 1), (30, 130, "B", 1), (100, 110, "A", 1)],
        [],
    )
    # 25 s: A3 is cut to two, the lone A runs beside them, A3's third member follows it at 10;
    # B (100 s a member) never starts
    plan, left = run(25)
    assert plan == [(0, 20, "A", 2), (0, 10, "A", 1), (10, 20, "A", 1)]
    assert [(g[0]["dataset"], len(g)) for g in left] == [("B", 2)]


DATA = Path(os.environ.get("CMMC_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))


@pytest.mark.skipif(not (DATA / "synthetic3d.mat").exists(), reason="no synthetic3d.mat")
def test_run_within_limit_runs_what_fits_and_leaves_the_rest(tmp_path, monkeypatch):
    from cmmc.experiments import plan

    monkeypatch.setenv("CMMC_DATA_DIR", str(DATA))
    tasks = plan("baselines", datasets=["Synthetic3d"], seeds=[0, 1, 2], profile="quick",
                 results_dir=tmp_path, n_samples=48)  # fmt: skip
    queue = [[t] for t in tasks]
    per = {0: 1.0, 1: 1.0, 2: 10_000.0}  # the third never fits in the limit
    started, ended = [], []
    out = grid.run_within_limit(
        queue, 600, lambda t, m: per[t["seed"]], workers=1, members=1, threads=1,
        on_start=lambda g: started.append(g[0]["seed"]),
        on_end=lambda g, s, status: ended.append((g[0]["seed"], status.split()[0])),
    )  # fmt: skip
    assert (out.done, out.failed, out.lost, out.left) == (2, 0, 0, 1)
    assert started == [0, 1] and sorted(s for s, _ in ended) == [0, 1]
    assert all(status.startswith("acc=") for _, status in ended)
    assert [t["seed"] for g in queue for t in g] == [2]
    assert all(Path(t["path"]).exists() for t in tasks[:2]) and not Path(tasks[2]["path"]).exists()
