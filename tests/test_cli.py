"""The cmmc command line."""

import json
import os
from pathlib import Path

import pytest

from cmmc.cli import main
from cmmc.data import list_datasets

DATA = os.environ.get("CMMC_DATA_DIR", str(Path(__file__).resolve().parents[1] / "data"))


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("CMMC_DATA_DIR", DATA)


def test_datasets_lists_every_registry_entry(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_datasets()
    by_name = {r["name"]: r for r in rows}
    assert by_name["Caltech-5V"]["present"] is False  # not available here
    if (Path(DATA) / "MNIST_USPS.mat").exists():
        assert by_name["MNIST-USPS"]["present"] and by_name["MNIST-USPS"]["verified"]


@pytest.mark.skipif(not (Path(DATA) / "synthetic3d.mat").exists(), reason="no synthetic3d.mat")
def test_train_prints_metrics_as_json(capsys):
    args = ["train", "--dataset", "Synthetic3d", "--seed", "1", "--quiet", "--profile", "quick"]
    args += ["--set", "pretrain_epochs=1", "contrastive_epochs=1", "finetune_epochs=1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "Synthetic3d" and out["seed"] == 1
    assert set(out["metrics"]) == {"ACC", "NMI", "PUR", "ARI"}
    assert out["config"]["pretrain_epochs"] == 1 and out["device"] == "cpu"


def test_errors_are_clear(capsys):
    assert main(["train", "--dataset", "NoSuchSet"]) == 2
    assert "NoSuchSet" in capsys.readouterr().err
    assert main(["train", "--dataset", "Synthetic3d", "--set", "tau=1"]) == 2
    assert "unknown config keys" in capsys.readouterr().err
    assert main(["train", "--dataset", "Caltech-5V"]) == 2
    assert "Caltech-5V.mat" in capsys.readouterr().err


def test_dry_run_marks_recorded_runs_and_computes_nothing(tmp_path, capsys):
    args = ["reproduce", "main", "--datasets", "Synthetic3d", "--variants", "code"]
    args += ["--seed-list", "0", "1", "2", "--profile", "quick", "--results", str(tmp_path)]
    assert main([*args, "--dry-run"]) == 0
    paths = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert len(paths) == 3 and len(set(paths)) == 3
    # a record of seed 1 appears: only it is marked done, and the dry run writes nothing
    Path(paths[1]).parent.mkdir(parents=True)
    Path(paths[1]).write_text("{}")
    assert main([*args, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"todo {paths[0]}", f"done {paths[1]}", f"todo {paths[2]}"]
    assert "3 runs: 1 recorded, 2 to compute" in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [Path(paths[1]).name]
