"""The cmmc command line."""

import json
import os
from pathlib import Path

import numpy as np
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


TINY = ["--quiet", "--profile", "quick", "--set", "pretrain_epochs=1", "contrastive_epochs=1"]
TINY += ["finetune_epochs=1", "kmeans_restarts=1", "batch_size=16"]


def _two_views(path: Path, labels: bool) -> np.ndarray:
    """40 samples in 2 groups, 2 views (5 and 3 features); labels 3 and 8 when asked."""
    rng = np.random.default_rng(0)
    y = np.repeat([3, 8], 20)
    x1 = rng.normal(size=(40, 5)) + y[:, None]
    x2 = rng.normal(size=(40, 3)) - y[:, None]
    np.savez(path, X1=x1, X2=x2, **({"y": y} if labels else {}))
    return y


def test_train_on_a_users_npz(tmp_path, capsys, one_thread):
    _two_views(tmp_path / "views.npz", labels=False)
    out_csv = tmp_path / "pred.csv"
    args = ["train", "--data", str(tmp_path / "views.npz"), "--n-clusters", "2"]
    assert main([*args, "--scaling", "standardize", "--labels-out", str(out_csv), *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "views" and out["metrics"] is None and out["n_clusters"] == 2
    assert out["config"]["pretrain_epochs"] == 1 and out["config"]["contrastive_epochs"] == 1
    pred = np.loadtxt(out_csv, skiprows=1, dtype=np.int64)
    assert pred.shape == (40,) and out["clusters_used"] == len(set(pred.tolist()))
    assert out_csv.read_text().splitlines()[0] == "cluster"
    # with labels: K defaults to their number of classes, metrics are reported, .npy written
    _two_views(tmp_path / "lab.npz", labels=True)
    out_npy = tmp_path / "pred.npy"
    args = ["train", "--data", str(tmp_path / "lab.npz"), "--labels-out", str(out_npy)]
    assert main([*args, *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_clusters"] == 2 and set(out["metrics"]) == {"ACC", "NMI", "PUR", "ARI"}
    assert np.load(out_npy).shape == (40,)


def test_train_data_errors(tmp_path, capsys):
    _two_views(tmp_path / "views.npz", labels=False)
    data = ["--data", str(tmp_path / "views.npz")]
    with pytest.raises(SystemExit):  # --data and --dataset together: argparse refuses
        main(["train", *data, "--dataset", "Synthetic3d"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of them is required
        main(["train", "--n-clusters", "2"])
    capsys.readouterr()
    assert main(["train", *data]) == 2
    assert "views.npz holds no labels" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "none.npz"), "--n-clusters", "2"]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err
    assert main(["train", *data, "--n-clusters", "2", "--labels-out", "p.txt"]) == 2
    assert "p.txt" in capsys.readouterr().err
    assert main(["train", "--dataset", "Synthetic3d", "--scaling", "minmax"]) == 2
    assert "--scaling go with --data" in capsys.readouterr().err


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
