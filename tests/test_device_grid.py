"""scripts/device_grid.py: the priority order of a GPU call and its run-time estimates."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_grid():
    spec = importlib.util.spec_from_file_location(
        "device_grid", ROOT / "scripts" / "device_grid.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_priority_order(tmp_path):
    grid = load_grid()
    tasks = grid.ordered_tasks(grid.DEFAULT_EXPERIMENTS, "cuda", tmp_path, "paper")
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


def test_seconds_per_member_prefers_batched_records(tmp_path):
    grid = load_grid()
    r = tmp_path / "results"
    load = {"concurrent_runs": 8}
    write(
        r / "main/A/code/seed0-a.json", dataset="A", kind="cmmc", device="cuda", total_seconds=100
    )
    write(
        r / "main/A/code/seed1-b.json",
        dataset="A",
        kind="cmmc",
        device="cuda",
        total_seconds=200,
        batch={"size": 5},
        environment=load,
    )
    for seed, secs, size in [(0, 300, 1), (1, 400, 2), (3, 500, 3)]:  # E: the lone run is slowest
        write(
            r / f"main/E/code/seed{seed}-f.json",
            dataset="E",
            kind="cmmc",
            device="cuda",
            total_seconds=secs,
            batch={"size": size} if size > 1 else None,
            environment=load,
        )
    write(r / "main/B/code/seed0-c.json", dataset="B", kind="cmmc", device="cuda", total_seconds=80)
    write(r / "main/C/code/seed0-d.json", dataset="C", kind="cmmc", device="cpu", total_seconds=9)
    write(r / "baselines/D/x/seed0-e.json", dataset="D", kind="baselines", device="cpu")
    est = grid.seconds_per_member(r, "cuda", unknown=150)
    assert est["A"] == pytest.approx(1.25 * 200 / 5)  # the record with a known load wins
    assert est["E"] == pytest.approx(1.25 * 300)  # slowest per member: the lone run
    assert est["B"] == pytest.approx(1.25 * 80 / 2)  # load not recorded: half, x 1.25
    assert est["C"] == 150 and est["D"] == 150  # other device / baselines: unknown


def batch(dataset: str, n: int) -> list[dict]:
    return [{"dataset": dataset, "seed": s} for s in range(n)]


def test_take_caps_batches_runs_and_time():
    grid = load_grid()
    per = {"A": 10.0, "B": 100.0}
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
