"""Experiments: plan, records, resume after a kill, stale-config safety, Dask on loopback,
verification, and the keys of the committed records."""

import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmmc import experiments as ex
from cmmc import make_config
from cmmc.experiments import engines, kinds, records

DATA = os.environ.get("CMMC_DATA_DIR", str(Path(__file__).resolve().parents[1] / "data"))
needs_data = pytest.mark.skipif(
    not (Path(DATA) / "synthetic3d.mat").exists(), reason="synthetic3d.mat not in the data dir"
)


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("CMMC_DATA_DIR", DATA)


def tiny_plan(results, variants=("code",), seeds=(0,)):
    return ex.plan(
        "main",
        datasets=["Synthetic3d"],
        seeds=list(seeds),
        variants=list(variants),
        profile="quick",
        results_dir=results,
        n_samples=48,
    )


def test_plan_keys_change_with_configuration(tmp_path):
    code, paper = tiny_plan(tmp_path, variants=("code", "paper"))
    assert code["key"] != paper["key"]
    assert code["path"] != paper["path"]
    again = tiny_plan(tmp_path)[0]
    assert again["key"] == code["key"]
    other_seed = tiny_plan(tmp_path, seeds=(1,))[0]
    assert other_seed["key"] != code["key"]
    quick_vs_paper_profile = ex.plan(
        "main", datasets=["Synthetic3d"], seeds=[0], variants=["code"], results_dir=tmp_path
    )[0]
    assert quick_vs_paper_profile["key"] != code["key"]


def test_seeds_per_dataset_plans_fewer_seeds_for_the_named_set(tmp_path, monkeypatch):
    """An experiment of 3 seeds that plans 2 for BDGP: 3 + 2 tasks, seeds 0-2 and 0-1; a seed
    list from the command line overrides both."""
    plan_mod = importlib.import_module("cmmc.experiments.plan")  # the module, not the function
    specs = plan_mod.experiment_specs()
    spec = {**specs["main"], "datasets": ["Synthetic3d", "BDGP"], "seeds": 3,
            "seeds_per_dataset": {"BDGP": 2}}  # fmt: skip
    monkeypatch.setattr(plan_mod, "experiment_specs", lambda: {**specs, "main": spec})
    tasks = plan_mod.plan("main", variants=["code"], results_dir=tmp_path)
    seeds = {}
    for t in tasks:
        seeds.setdefault(t["dataset"], []).append(t["seed"])
    assert seeds == {"Synthetic3d": [0, 1, 2], "BDGP": [0, 1]}
    assert plan_mod.planned_seeds("main", "BDGP") == 2
    assert plan_mod.planned_seeds("main", "Synthetic3d") == 3
    tasks = plan_mod.plan("main", variants=["code"], seeds=[4], results_dir=tmp_path)
    assert [(t["dataset"], t["seed"]) for t in tasks] == [("Synthetic3d", 4), ("BDGP", 4)]


def test_every_experiment_names_known_sets_and_seeds_of_its_own_sets():
    """experiments.toml: each data set is in the registry, each seeds_per_dataset key is one of
    the experiment's data sets and plans fewer seeds than the experiment's default."""
    from cmmc.data import get_spec

    for name, spec in ex.experiment_specs().items():
        for ds in spec["datasets"]:
            assert get_spec(ds)["name"] == ds, (name, ds)  # raises for an unknown name
        for ds, n in spec.get("seeds_per_dataset", {}).items():
            assert ds in spec["datasets"], (name, ds)
            assert 0 < n < spec["seeds"], (name, ds, n)


def test_temperature_grid_expands_from_data(tmp_path):
    tasks = ex.plan("temperature", datasets=["BDGP"], seeds=[0], results_dir=tmp_path)
    assert len(tasks) == 25
    assert {(t["config"]["tau_f"], t["config"]["tau_l"]) for t in tasks} == {
        (a, b) for a in (0.1, 0.3, 0.5, 0.7, 1.0) for b in (0.1, 0.3, 0.5, 0.7, 1.0)
    }


def test_pretraining_is_cached_only_where_runs_share_it(tmp_path):
    ablation = ex.plan("ablation", datasets=["BDGP"], seeds=[0, 1], results_dir=tmp_path)
    shared = {t["variant"] for t in ablation if t["cache_pretrain"]}
    # Every variant with the default pre-training shares it with the others of its seed; the run
    # without pre-training (0 epochs) has nothing to share.
    assert shared == {
        "full",
        "no_feature_contrast",
        "no_label_contrast",
        "no_entropy",
        "no_finetune",
    }
    one_seed = ex.plan(
        "ablation", datasets=["BDGP"], seeds=[0], variants=["full"], results_dir=tmp_path
    )
    assert not one_seed[0]["cache_pretrain"]
    # main: code and paper differ in the reconstruction form, so in pre-training too.
    main = ex.plan("main", datasets=["BDGP"], seeds=[0], results_dir=tmp_path)
    assert [t["cache_pretrain"] for t in main] == [False, False]


def test_unknown_experiment_and_variant_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'mian'"):
        ex.plan("mian", results_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown variants"):
        ex.plan("main", variants=["cod"], results_dir=tmp_path)


def test_atomic_write_never_leaves_half_a_record(tmp_path):
    target = tmp_path / "r.json"
    ex.write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        ex.write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}


@needs_data
def test_records_are_written_reused_and_reproducible(tmp_path, monkeypatch):
    tasks = tiny_plan(tmp_path)
    (rec,) = ex.run_grid(tasks, progress=False)
    path = Path(tasks[0]["path"])
    assert path.exists()
    assert rec["metrics"].keys() == {"ACC", "NMI", "PUR", "ARI"}
    assert rec["config"]["pretrain_epochs"] == 5 and rec["n_samples"] == 48
    assert {"torch", "git_commit", "cpu"} <= rec["environment"].keys()
    assert len(rec["multilevel"]) == 3

    def boom(*a, **k):
        raise AssertionError("a finished run was redone")

    real_run_task = engines.run_task
    monkeypatch.setattr(engines, "run_task", boom)
    assert ex.run_grid(tasks, progress=False)[0]["key"] == rec["key"]
    # Recomputing the recorded run with its seed and configuration gives the same labels.
    again = real_run_task({**tasks[0], "path": str(tmp_path / "again.json")})
    assert again["labels_sha256"] == rec["labels_sha256"]
    assert again["metrics"] == rec["metrics"]


@needs_data
@pytest.mark.slow
def test_killed_grid_resumes_without_redoing_finished_runs(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "cmmc.cli",
        "reproduce",
        "main",
        "--datasets",
        "Synthetic3d",
        "--variants",
        "code",
        "--seed-list",
        "0",
        "1",
        "2",
        "--profile",
        "quick",
        "--n-samples",
        "48",
        "--results",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.rglob("seed*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = list(tmp_path.rglob("seed*.json"))
    assert first, "no record was written before the kill"
    stamps = {p: p.stat().st_mtime_ns for p in first}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = sorted(tmp_path.rglob("seed*.json"))
    assert len(records) == 3
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first)
    assert not list(tmp_path.rglob("*.tmp"))


@needs_data
@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_records(tmp_path):
    pytest.importorskip("distributed")
    local = ex.run_grid(tiny_plan(tmp_path / "local"), progress=False)
    dask = ex.run_grid(tiny_plan(tmp_path / "dask"), engine="dask", workers=1, progress=False)
    assert local[0]["key"] == dask[0]["key"]
    assert local[0]["labels_sha256"] == dask[0]["labels_sha256"]
    assert local[0]["metrics"] == dask[0]["metrics"]


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_diverged_run_leaves_no_record_and_the_grid_goes_on(tmp_path, engine):
    """Seed 0 with a learning rate of 1e30 diverges; seed 1 must still get its record, and the
    grid must end with one error that names the diverged run."""
    if engine == "dask":
        pytest.importorskip("distributed")
    diverging, fine = tiny_plan(tmp_path, seeds=(0, 1))
    diverging["config"] = {**diverging["config"], "lr": 1e30}
    with pytest.raises(
        FloatingPointError, match=r"1 run\(s\) diverged[\s\S]*main Synthetic3d code seed 0"
    ):
        ex.run_grid([diverging, fine], engine=engine, workers=1, progress=False)
    assert not Path(diverging["path"]).exists()
    assert json.loads(Path(fine["path"]).read_text())["seed"] == 1


def test_scalability_subsets_never_exceed_their_set(tmp_path):
    tasks = ex.plan("scalability", results_dir=tmp_path)
    sizes = {}
    for t in tasks:
        sizes.setdefault(t["dataset"], []).append(t["data"]["n_samples"])
    assert sizes["Fashion"] == [1000, 2000, 5000, 10000]  # the registry's N is 10000
    assert max(sizes["synthetic"]) == 100000  # the generated set has no limit
    too_big = {**tasks[0], "dataset": "Synthetic3d", "data": {"n_samples": 601}}
    with pytest.raises(ValueError, match="601 is more than the 600 samples of Synthetic3d"):
        kinds.task_data(too_big)


def test_environment_takes_the_commit_a_launcher_names(monkeypatch):
    monkeypatch.setenv("CMMC_GIT_COMMIT", "0123abc")
    monkeypatch.setenv("CMMC_GIT_DIRTY", "1")
    env = ex.environment()
    assert env["git_commit"] == "0123abc" and env["git_dirty"] is True
    monkeypatch.delenv("CMMC_GIT_COMMIT")
    monkeypatch.delenv("CMMC_GIT_DIRTY")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert ex.environment()["git_commit"] == head.strip()


def test_environment_names_the_cpu_vector_unit_the_kernels_use(monkeypatch):
    # independent of torch: the x86 flags the kernel reports decide which kernels torch picks
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    if platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists():
        pytest.skip("reads the x86 flags of /proc/cpuinfo")
    line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        expected = "AVX512"
    elif {"avx2", "fma"} <= flags:
        expected = "AVX2"
    else:
        expected = "DEFAULT"
    assert ex.environment()["cpu_capability"] == expected


def test_environment_names_the_native_bf16_units_of_proc_cpuinfo():
    # whether a bf16 run was native or emulated, from the kernel's flags, not from torch
    if platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists():
        pytest.skip("reads the x86 flags of /proc/cpuinfo")
    line = next(x for x in open("/proc/cpuinfo") if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    expected = [u for u, f in (("avx512_bf16", "avx512_bf16"), ("amx", "amx_tile")) if f in flags]
    assert ex.environment()["cpu_bf16_units"] == expected


def test_environment_names_the_commit_of_the_start_of_the_run(monkeypatch):
    # a long run's record is written after its end; the commit must be the one of its start
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    monkeypatch.delenv("CMMC_GIT_COMMIT", raising=False)
    monkeypatch.setenv("CMMC_GPU_SHARING", "mps")
    monkeypatch.setattr(engines, "_RUNS_IN_PROCESS", engines._RUNS_IN_PROCESS)  # restored after
    records.git_state.cache_clear()
    engines._start_run("cpu", None)

    def no_git(*args, **kwargs):  # what git says later must not matter
        raise AssertionError("git asked again at the end of the run")

    monkeypatch.setattr(records.subprocess, "run", no_git)
    env = ex.environment()
    assert env["git_commit"] == head.strip() and env["gpu_sharing"] == "mps"


@needs_data
@pytest.mark.slow
def test_run_batch_writes_one_record_per_member_and_reruns_identically(tmp_path):
    def two_seeds(results):  # full Synthetic3d (a subset's data would depend on the seed)
        return ex.plan(
            "main",
            datasets=["Synthetic3d"],
            seeds=[0, 1],
            variants=["code"],
            profile="quick",
            results_dir=results,
        )

    tasks = two_seeds(tmp_path / "a")
    recs = ex.run_grid(tasks, batch=2, progress=False)
    assert sorted(r["seed"] for r in recs) == [0, 1]
    for t in tasks:
        rec = json.loads(Path(t["path"]).read_text())
        assert rec["batch"]["size"] == 2
        assert [m["seed"] for m in rec["batch"]["members"]] == [0, 1]
        assert rec["key"] == t["key"] and len(rec["multilevel"]) == 3
        assert rec["metrics"]["PUR"] >= rec["metrics"]["ACC"]
    for a, b in zip(recs, ex.run_batch(two_seeds(tmp_path / "b")), strict=True):
        assert a["labels_sha256"] == b["labels_sha256"] and a["metrics"] == b["metrics"]


@needs_data
@pytest.mark.slow
def test_verify_recomputes_a_record_and_its_batch(tmp_path):
    tasks = ex.plan(
        "main",
        datasets=["Synthetic3d"],
        seeds=[0, 1],
        variants=["code"],
        profile="quick",
        results_dir=tmp_path / "results",
    )
    ex.run_grid(tasks, batch=2, progress=False)
    second = Path(tasks[1]["path"])
    verdict = ex.verify_record(second, tmp_path / "scratch")
    assert verdict["batch_seeds"] == [0, 1]  # recomputed with its whole batch
    assert verdict["same"] and verdict["same_labels"]
    assert verdict["machine"] is None  # recomputed on the machine that made it
    assert Path(verdict["rerun"]).is_file()
    # a record whose labels do not come out of its configuration is caught
    rec = json.loads(second.read_text())
    rec["labels_sha256"] = "0" * 64
    forged = tmp_path / "forged" / second.name
    forged.parent.mkdir()
    forged.write_text(json.dumps(rec))
    forged_verdict = ex.verify_record(forged, tmp_path / "scratch2")
    assert not forged_verdict["same"] and not forged_verdict["same_labels"]
    # a record whose configuration was edited no longer matches its key
    rec["config"]["lr"] = 0.5
    forged.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="key"):
        ex.verify_record(forged, tmp_path / "scratch3")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ex.verify_record(tmp_path / "nothing.json", tmp_path / "scratch4")


@needs_data
def test_verify_command_on_a_baseline_record(tmp_path, capsys):
    from cmmc.cli import main

    tasks = ex.plan(
        "baselines", datasets=["Synthetic3d"], seeds=[3], profile="quick", results_dir=tmp_path
    )
    ex.run_grid(tasks, progress=False)
    assert main(["verify", tasks[0]["path"], "--scratch", str(tmp_path / "s")]) == 0
    verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert verdict["same"] and verdict["same_labels"] is None  # baselines keep no label hash
    assert set(verdict["metrics_rerun"]) == {
        "kmeans_best_view",
        "kmeans_concat",
        "spectral_concat",
        "coreg_spectral",
    }
    # a baseline record with an altered metric is caught, and the command says so (exit 1)
    rec = json.loads(Path(tasks[0]["path"]).read_text())
    rec["baselines"]["kmeans_concat"]["ACC"] += 0.01
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(rec))
    assert main(["verify", str(forged), "--scratch", str(tmp_path / "s2")]) == 1


def test_record_text_round_trips_and_keeps_one_epoch_per_line():
    import numpy as np

    history = [{"epoch": i, "phase": "pretrain", "loss": 1.0 / (i + 1)} for i in range(1, 4)]
    rec = {
        "key": "abc",
        "metrics": {"ACC": np.float64(0.5), "NMI": 0.25},
        "history": history,
        "dims": np.array([3, 4]),
        "members": [],
        "note": 'a "quoted" \u00e9 text',
        "nested": {"a": [1, 2, {"b": None}]},
    }
    text = ex.dumps_record(rec)
    # independent: what the standard library makes of the same object
    assert json.loads(text) == json.loads(json.dumps(rec, default=records._jsonable))
    lines = text.splitlines()
    assert sum(line.strip().startswith('{"epoch":') for line in lines) == 3
    assert len(lines) == len(rec) + 2 + len(history) + 1  # braces, the rows and their "]"


@needs_data
def test_verify_reruns_a_batch_the_way_it_shared_pretraining(tmp_path):
    cells = ex.plan(
        "temperature", datasets=["Synthetic3d"], seeds=[0], profile="quick", results_dir=tmp_path
    )[:2]  # two temperature cells of seed 0: one pre-training between them
    recs = ex.run_batch(cells)
    assert [r["batch"]["shared_pretraining"] for r in recs] == [True, True]
    pre = [[h for h in r["history"] if h["phase"] == "pretrain"] for r in recs]
    assert pre[0] == pre[1]  # computed once, copied to both
    verdict = ex.verify_record(cells[1]["path"], tmp_path / "scratch")
    assert verdict["same"] and verdict["batch_seeds"] == [0, 0]
    rerun = json.loads(Path(verdict["rerun"]).read_text())
    assert rerun["batch"]["shared_pretraining"] is True
    # a record from before the option existed (no flag) is recomputed without sharing
    old = json.loads(Path(cells[1]["path"]).read_text())
    del old["batch"]["shared_pretraining"]
    legacy = tmp_path / "legacy" / Path(cells[1]["path"]).name
    legacy.parent.mkdir()
    legacy.write_text(json.dumps(old))
    verdict = ex.verify_record(legacy, tmp_path / "scratch2")
    assert json.loads(Path(verdict["rerun"]).read_text())["batch"]["shared_pretraining"] is False


def test_machine_difference_names_what_changes_rounding():
    avx2 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.13.0+cpu", "gpu": None}
    avx512 = {**avx2, "cpu_capability": "AVX512"}
    assert ex.machine_difference(avx2, dict(avx2), "cpu") is None
    assert (
        ex.machine_difference(avx2, avx512, "cpu") == "cpu_capability: recorded AVX2, here AVX512"
    )
    old = {k: v for k, v in avx2.items() if k != "cpu_capability"}  # before the field existed
    assert ex.machine_difference(old, avx512, "cpu") == (
        "the record does not name its cpu_capability; here cpu_capability AVX512"
    )
    # on a GPU the CPU's vector unit does not matter, the GPU does
    h100 = {**avx2, "gpu": "NVIDIA H100 80GB HBM3"}
    assert ex.machine_difference(h100, {**h100, "cpu_capability": "AVX512"}, "cuda") is None
    assert ex.machine_difference(h100, {**h100, "gpu": "NVIDIA H200"}, "cuda:0") == (
        "gpu: recorded NVIDIA H100 80GB HBM3, here NVIDIA H200"
    )


def test_dedupe_counts_a_run_once_across_devices_but_not_scalability():
    def rec(kind, device, finished, seed=0, variant="code"):
        return {"experiment": "x", "kind": kind, "dataset": "D", "variant": variant,
                "seed": seed, "profile": "full", "n_samples": 100, "device": device,
                "finished": finished}  # fmt: skip

    runs = [
        rec("cmmc", "cuda", "2026-01-02"),
        rec("cmmc", "cpu", "2026-01-03"),  # the same run, later, on the CPU
        rec("cmmc", "cpu", "2026-01-01", seed=1),
        rec("scalability", "cuda", "2026-01-02", variant="n100"),
        rec("scalability", "cpu", "2026-01-03", variant="n100"),  # its device is measured
    ]
    kept = ex.dedupe(runs)
    cmmc = [r for r in kept if r["kind"] == "cmmc"]
    assert sorted((r["seed"], r["device"]) for r in cmmc) == [(0, "cpu"), (1, "cpu")]
    scal = [r for r in kept if r["kind"] == "scalability"]
    assert sorted(r["device"] for r in scal) == ["cpu", "cuda"]


RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.records
def test_every_committed_record_rebuilds_to_its_key_and_path():
    # The keys stored in the committed records were computed by the code that made them: the
    # task rebuilt from each record (each member of its batch) must hash to the same key, and
    # the record must lie where record_path puts that task.
    paths = sorted(RESULTS.rglob("seed*-*.json"))
    if not paths:
        pytest.skip("no committed records")
    n_members = 0
    for p in paths:
        rec = json.loads(p.read_text())
        tasks = ex.rebuild_tasks(rec)
        for t in tasks:
            assert t["key"] == t["recorded_key"], (p, t["seed"])
        n_members += len(tasks)
        own = next(t for t in tasks if t["key"] == rec["key"])
        assert ex.record_path(RESULTS, own) == p
    assert n_members >= len(paths)


def test_a_plan_finds_a_version_1_record_and_writes_new_ones_under_version_2(tmp_path):
    import hashlib

    (task,) = ex.plan("main", datasets=["BDGP"], seeds=[0], variants=["code"], results_dir=tmp_path)
    assert task["key"] == ex.run_key(task) and ex.RECORD_VERSION == 2
    # version 1 by hand: every field but the later ones left at their defaults
    from cmmc.experiments.records import V1_LATER_FIELDS

    v1_config = {k: v for k, v in task["config"].items() if k not in V1_LATER_FIELDS}
    payload = {"v": 1, "kind": "cmmc", "dataset": "BDGP", "data": {}, "config": v1_config,
               "seed": 0, "device": "cpu", "options": task["options"]}  # fmt: skip
    v1 = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert ex.run_key(task, version=1) == v1 != task["key"]
    # version 2 by hand: the fields that differ from Config's defaults (the registry's epochs)
    from cmmc.config import Config, plain

    changed = {k: v for k, v in task["config"].items() if v != plain(getattr(Config(), k))}
    assert ex.run_key(task) == hashlib.sha256(json.dumps(
        {**payload, "v": 2, "config": changed}, sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    old = ex.record_path(tmp_path, {**task, "key": v1})
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    (again,) = ex.plan(
        "main", datasets=["BDGP"], seeds=[0], variants=["code"], results_dir=tmp_path
    )
    assert (again["key"], again["path"]) == (v1, str(old))
    with pytest.raises(ValueError, match="unknown record version 3"):
        ex.run_key(task, version=3)


def test_kinds_are_data_that_the_engines_read(tmp_path):
    assert {k: (v.batchable, v.fresh_process, v.device_in_identity, v.uses_config)
            for k, v in ex.KINDS.items()} == {
        "cmmc": (True, False, False, True),
        "tsne": (False, False, False, True),
        "scalability": (False, True, True, True),
        "baselines": (False, False, False, False),
    }  # fmt: skip
    (full,) = ex.plan("main", datasets=["BDGP"], seeds=[0], variants=["code"], results_dir=tmp_path)
    assert ex.batchable(full)
    assert not ex.batchable({**full, "data": {"n_samples": 100}})  # a subset depends on the seed
    assert not ex.batchable({**full, "dataset": "synthetic", "data": {}})  # generated: too
    (base,) = ex.plan("baselines", datasets=["BDGP"], seeds=[0], results_dir=tmp_path)
    assert not ex.batchable(base)
    # a kind that ignores its configuration keeps its key when the configuration changes
    changed = {**base, "config": {**base["config"], "lr": 1.0}}
    assert ex.run_key(changed) == base["key"]
    assert ex.run_key({**full, "config": {**full["config"], "lr": 1.0}}) != full["key"]
    with pytest.raises(ValueError, match="unknown experiment kind 'nope'"):
        ex.run_key({**full, "kind": "nope"})


def test_batches_group_members_of_one_configuration(tmp_path):
    cells = ex.plan("temperature", datasets=["BDGP"], seeds=[0, 1], results_dir=tmp_path)
    groups = ex.batches(cells, 10)
    assert [len(g) for g in groups] == [10, 10, 10, 10, 10]
    for g in groups:  # they differ only in seed and temperatures
        assert len({ex.batch_key(t) for t in g}) == 1
    main = ex.plan("main", datasets=["BDGP"], seeds=[0, 1], results_dir=tmp_path)
    assert sorted(len(g) for g in ex.batches(main, 10)) == [2, 2]  # code and paper apart
    assert [len(g) for g in ex.batches(main, 1)] == [1, 1, 1, 1]


@needs_data
def test_ensure_records_computes_a_quick_plan_once_and_lists_what_is_missing(tmp_path):
    quick = {"datasets": ["Synthetic3d"], "seeds": [0, 1], "n_samples": 48}
    recs, info = ex.ensure_records("baselines", tmp_path, "quick", quick_kwargs=quick)
    assert info["computed"] == 2 and info["found"] == 0 and info["missing"] == []
    assert sorted(r["seed"] for r in recs) == [0, 1] and info["profiles"] == ["quick"]
    again, info = ex.ensure_records("baselines", tmp_path, "quick", quick_kwargs=quick)
    assert info["computed"] == 0 and info["found"] == 2
    assert [r["key"] for r in again] == [r["key"] for r in recs]
    # the full profile computes nothing on its own: its records are missing, the quick ones shown
    full = {"datasets": ["Synthetic3d"], "seeds": [0]}
    shown, info = ex.ensure_records("baselines", tmp_path, "full", full_kwargs=full)
    assert info["computed"] == 0 and info["planned"] == 1 and info["profiles"] == ["quick"]
    assert info["missing"] == [{"dataset": "Synthetic3d", "variant": "default", "seed": 0}]
    assert len(shown) == 2


def test_errata_correct_the_records_they_name_and_only_those(tmp_path):
    def record(name, started, **env):
        path = tmp_path / "results" / "main" / "D" / "code" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"device": "cpu", "started": started, "environment": {"cpu": "EPYC", **env}}
        path.write_text(json.dumps(rec))
        return path, rec

    old, old_rec = record("seed0-a.json", "2026-01-01T10:00:00+00:00")  # lacks the field
    new, new_rec = record("seed1-b.json", "2026-01-03T10:00:00+00:00")  # lacks it, too late
    named, named_rec = record("seed2-c.json", "2026-01-01T10:00:00+00:00", cpu_capability="AVX")
    (tmp_path / "results" / "errata.toml").write_text(
        """
[[erratum]]
date = 2026-01-05
records = ["results/main/**/seed*-*.json"]
where = { device = "cpu" }
started_before = 2026-01-02T00:00:00Z
field = "environment.cpu_capability"
correction = "AVX2"
reason = "made on the AVX2 machine"

[[erratum]]
date = 2026-01-05
records = ["results/main/D/code/seed2-*.json"]
field = "environment.cpu_capability"
recorded = "AVX"
correction = "AVX512"
reason = "misnamed"
"""
    )
    errata = ex.load_errata(tmp_path / "results" / "errata.toml", tmp_path)
    assert len(errata) == 2 and ex.load_errata(tmp_path / "none.toml", tmp_path) == []
    fixed = ex.corrected(old_rec, old, errata)
    assert fixed["environment"] == {"cpu": "EPYC", "cpu_capability": "AVX2"}
    assert "cpu_capability" not in old_rec["environment"]  # the record itself is left as it is
    assert ex.corrected(new_rec, new, errata) == new_rec  # started after the range
    assert ex.corrected(named_rec, named, errata)["environment"]["cpu_capability"] == "AVX512"
    gpu = {**old_rec, "device": "cuda"}
    assert ex.errata_for(gpu, old, errata) == []  # `where` does not hold
    assert ex.field_value(named_rec, "environment.cpu_capability") == "AVX"
    assert ex.field_value(named_rec, "environment.cpu_capability.x") is None
    # the pages' one reader: every record under results/ (or one experiment's), corrected
    loaded = dict(ex.load_corrected(tmp_path / "results", "main"))
    assert set(loaded) == {old, new, named}
    assert loaded[old]["environment"]["cpu_capability"] == "AVX2"
    assert loaded[new] == new_rec and loaded[named]["environment"]["cpu_capability"] == "AVX512"
    assert ex.load_corrected(tmp_path / "results", "none") == []


@needs_data
def test_a_shared_pretraining_is_cached_and_continues_exactly(tmp_path):
    def two_variants(results):  # they share their pre-training (same fields, data and seed)
        return ex.plan("ablation", datasets=["Synthetic3d"], seeds=[0], profile="quick",
                       variants=["full", "no_entropy"], results_dir=results, n_samples=48)  # fmt: skip

    tasks = two_variants(tmp_path / "a")
    assert [t["cache_pretrain"] for t in tasks] == [True, True]
    first, second = (ex.run_task(t) for t in tasks)
    assert not first["pretrain_from_cache"] and second["pretrain_from_cache"]
    assert list((tmp_path / "a" / ".cache").rglob("*.pt"))
    alone = ex.run_task({**two_variants(tmp_path / "b")[1], "cache_pretrain": False})
    assert not alone["pretrain_from_cache"]
    assert alone["labels_sha256"] == second["labels_sha256"]
    assert alone["metrics"] == second["metrics"]

    def losses(rec):  # the history without its times
        return [{k: v for k, v in h.items() if k != "seconds"} for h in rec["history"]]

    assert losses(alone) == losses(second)


def test_the_former_profile_name_paper_reads_as_full(tmp_path):
    # the official schedule: 200 pre-training epochs, 50 fine-tuning steps, 100 k-means restarts
    assert make_config(None, "paper") == make_config(None, "full")
    full = make_config(None, "full")
    assert (full.pretrain_epochs, full.finetune_epochs, full.kmeans_restarts) == (200, 50, 100)
    with pytest.raises(ValueError, match="unknown profile 'long'"):
        make_config(None, "long")
    # a record written before the rename says "paper"; read, it says "full", other fields kept
    rec = {"experiment": "x", "dataset": "D", "variant": "code", "seed": 3, "profile": "paper"}
    path = tmp_path / "x" / "D" / "code" / "seed3-0123456789abcdef.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    [read] = ex.load_records(tmp_path, "x")
    assert read == {**rec, "profile": "full"}
    assert json.loads(path.read_text())["profile"] == "paper"  # the file itself is untouched
    # a plan made under the former name is the plan of the new one, records included
    old = ex.plan(
        "baselines", datasets=["Synthetic3d"], seeds=[0], profile="paper", results_dir=tmp_path
    )
    new = ex.plan(
        "baselines", datasets=["Synthetic3d"], seeds=[0], profile="full", results_dir=tmp_path
    )
    assert old == new and old[0]["profile"] == "full"
