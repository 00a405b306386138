"""Named variants and the fields beyond the official code: min_batches, entropy_weight."""

import importlib
import json
import math

import numpy as np
import pytest
import torch

from cmmc import CMMC, make_config
from cmmc.cli import main
from cmmc.config import PRESETS, VARIANTS, Config
from cmmc.losses import TERMS
from cmmc.train import Trainer


@pytest.mark.parametrize(
    ("n", "batch", "min_batches", "expected"),
    [(5000, 256, 0, 256), (5000, 256, 8, 256), (480, 256, 8, 60), (100, 256, 0, 100),
     (7, 256, 8, 1), (2047, 256, 8, 255)],
)  # fmt: skip
def test_batch_for_small_sets(n, batch, min_batches, expected):
    assert Config(batch_size=batch, min_batches=min_batches).batch_for(n) == expected


def test_min_batches_gives_that_many_steps_per_epoch():
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(50, 4)).astype(np.float32) for _ in range(2)]
    cfg = make_config(None, "quick", pretrain_epochs=1, min_batches=5)
    tr = Trainer.for_data(views, None, 2, cfg, 0, progress=False).fit(until="pretrain")
    steps = {int(s["step"]) for s in tr.opt.state.values()}
    assert tr.batch == 10 and steps == {5}  # 50 samples in batches of 10: five Adam steps


@pytest.mark.parametrize(("in_pretrain", "pretrain_steps"), [(True, 5), (False, 1)])
def test_min_batches_pretrain_keeps_the_code_batches_in_pretraining(in_pretrain, pretrain_steps):
    """50 samples, batch 32: the code's one step per epoch; min_batches=5 makes five (batches of
    10) in the phases it applies to. Counted as Adam steps: 2 pre-training epochs, then 1
    contrastive epoch (always five steps)."""
    _assert_adam_steps(pretrain_steps, min_batches_pretrain=in_pretrain)


def _assert_adam_steps(pretrain_steps: int, **fields) -> None:
    """50 samples, batch 32, min_batches=5 and ``fields``: Adam steps after 2 pre-training
    epochs, then after 1 contrastive epoch (five steps whatever the pre-training)."""
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(50, 4)).astype(np.float32) for _ in range(2)]
    cfg = make_config(None, "quick", pretrain_epochs=2, contrastive_epochs=1, batch_size=32,
                      min_batches=5, **fields)  # fmt: skip
    tr = Trainer.for_data(views, None, 2, cfg, 0, progress=False).fit(until="pretrain")
    assert {int(s["step"]) for s in tr.opt.state.values()} == {2 * pretrain_steps}
    tr.fit(until="contrastive")  # the heads of z -> h, q first step here; the encoders go on
    assert {int(s["step"]) for s in tr.opt.state.values()} == {2 * pretrain_steps + 5, 5}


@pytest.mark.parametrize(("factor", "pretrain_steps"), [(0, 5), (2, 2), (10, 5)])
def test_pretrain_batch_factor_limits_the_extra_pretraining_steps(factor, pretrain_steps):
    """50 samples, batch 32: the code's one step per epoch; min_batches=5 asks for five. A
    factor of 2 allows two in pre-training (batches of 25), 0 or 10 leave the five; the
    contrastive epoch keeps its five steps whatever the factor. Counted as Adam steps."""
    _assert_adam_steps(pretrain_steps, pretrain_batch_factor=factor)


def test_select_preset_limit_binds_only_under_512_samples():
    """The select preset's pre-training limit (four times the code's N // 256 batches per
    epoch, at least one, against min_batches = 8) changes the batches only where N < 512:
    among the Beyond page's sets, Multi-COIL-20 and -10 and the generated sets but Blobs-40.
    Where it binds, pre-training makes four steps per epoch (drop_last), not eight."""
    from cmmc import experiments
    from cmmc.data import get_spec

    cfg = make_config(None, "full", preset="select")
    assert cfg.pretrain_batch_factor == 4 and cfg.min_batches == 8
    sets = experiments.experiment_specs()["beyond_select"]["datasets"]
    generated = ["Blobs-10", "Blobs-20", "Blobs-30", "Blobs-40",
                 "Blobs3-12", "Blobs3-20", "Blobs3-30", "Blobs3-40"]  # fmt: skip
    binds = set()
    for name in [*sets, *generated]:
        n = int(get_spec(name)["N"])
        code_batches = max(1, n // 256)
        assert cfg.pretrain_limit_binds(n) == (4 * code_batches < 8), name
        steps = n // cfg.batch_for(n, pretrain=True)
        assert steps == (4 if 4 * code_batches < 8 else n // min(256, n // 8)), name
        if cfg.pretrain_limit_binds(n):
            binds.add(name)
    assert len(sets) == 14
    assert binds == {"Multi-COIL-20", "Multi-COIL-10", *generated} - {"Blobs-40"}
    assert not cfg.replace(pretrain_batch_factor=0).pretrain_limit_binds(240)


def test_pretrain_batch_factor_rejects_a_negative_value():
    with pytest.raises(ValueError, match="pretrain_batch_factor"):
        Config(pretrain_batch_factor=-1)


def test_entropy_weight_scales_the_term():
    g = torch.Generator().manual_seed(0)
    qs = [torch.softmax(torch.randn(12, 4, generator=g, dtype=torch.float64), 1) for _ in "ab"]
    out, xs = {"q": qs}, [torch.zeros(12, 1)] * 2

    def by_hand(q):  # log K - H(mean of q)
        p = q.mean(0)
        return math.log(4) + float((p * p.log()).sum())

    expected = sum(by_hand(q) for q in qs)  # two views: each counted M - 1 = 1 time
    for w in (1.0, 0.5, 3.0):
        got = TERMS["entropy"](out, xs, Config(entropy_weight=w), 0.5, 1.0)
        assert got.item() == pytest.approx(w * expected, rel=1e-12)


def test_presets_are_config_fields():
    assert PRESETS["faithful"] == {} and VARIANTS is PRESETS  # the former name
    assert make_config(None, "full", preset="faithful") == make_config(None, "full")
    robust = make_config("BDGP", "full", preset="robust")
    assert robust.contrastive_epochs == 10  # the profile's schedule stays
    for field, value in PRESETS["robust"].items():
        assert getattr(robust, field) == value
    assert make_config(None, preset="robust", min_batches=2).min_batches == 2  # overrides last
    assert make_config("BDGP", variant="robust") == robust  # the former keyword, still read
    with pytest.raises(ValueError, match="unknown preset 'sturdy'"):
        make_config(None, preset="sturdy")
    with pytest.raises(ValueError, match="name two presets"):
        make_config(None, preset="robust", variant="fast")


def test_estimator_preset_then_keywords():
    est = CMMC(3, preset="robust", min_batches=3)
    cfg = est._resolved_config()
    assert cfg.min_batches == 3 and cfg.fused_adam is PRESETS["robust"]["fused_adam"]
    assert CMMC(3, variant="robust", min_batches=3)._resolved_config() == cfg
    assert CMMC(3)._resolved_config() == Config()
    with pytest.raises(ValueError, match="unknown preset"):
        CMMC(3, preset="nope")._resolved_config()
    with pytest.raises(ValueError, match="name two presets"):
        CMMC(3, preset="robust", variant="select")._resolved_config()


def test_experiments_name_their_precision(monkeypatch):
    plan = importlib.import_module("cmmc.experiments.plan")  # the module, not the function
    specs = plan.experiment_specs()
    spec = {**specs["fastpath"], "variants": {"auto": {"precision": "auto"}}}
    monkeypatch.setattr(plan, "experiment_specs", lambda: {**specs, "fastpath": spec})
    with pytest.raises(ValueError, match="names its precision"):
        plan.plan("fastpath", seeds=1)


def test_cli_variant(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", X1=rng.normal(size=(30, 3)), X2=rng.normal(size=(30, 2)))
    tiny = ["--profile", "quick", "--quiet", "--set", "pretrain_epochs=1", "contrastive_epochs=1",
            "finetune_epochs=1", "kmeans_restarts=1"]  # fmt: skip
    args = ["train", "--data", str(tmp_path / "v.npz"), "--n-clusters", "3", "--variant", "robust"]
    assert main([*args, *tiny]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["min_batches"] == PRESETS["robust"]["min_batches"]


def test_spectral_pseudo_labels_find_separated_groups():
    from sklearn.metrics import adjusted_rand_score

    from cmmc.pseudo_labels import spectral_pseudo_labels

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 30)
    centres = rng.normal(0, 10, (3, 4))
    hs = [torch.from_numpy(centres[truth] + rng.normal(0, 0.3, (90, 4))) for _ in range(2)]
    labels = spectral_pseudo_labels(hs, 3, seed=0)
    assert len(labels) == 2 and np.array_equal(labels[0], labels[1])
    assert adjusted_rand_score(truth, labels[0]) == 1.0
    with pytest.raises(ValueError, match="pseudo_labels"):
        Config(pseudo_labels="dbscan")
    assert Config().to_dict()["pseudo_labels"] == "kmeans"


def test_records_rate_the_pseudo_labels_of_every_view():
    """A record's pseudo-label entry per view against closed forms: a relabelled copy of the
    truth scores 1 with all K clusters; a single cluster scores the largest class's share."""
    from types import SimpleNamespace

    from cmmc.experiments.kinds import fitted_body

    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    perm = np.array([2, 0, 3, 1])[y]
    model = SimpleNamespace(
        labels_=perm, history_=[{"phase": "finetune", "loss": 1.0}], phase_seconds_={},
        pseudo_labels_=[perm, np.zeros_like(y)],
    )  # fmt: skip
    ds = SimpleNamespace(labels=y, n_clusters=4, views=None)
    body = fitted_body({"options": {}, "seed": 0}, ds, model)
    first, second = body["pseudo_labels"]
    assert first["ACC"] == pytest.approx(1.0) and first["clusters_used"] == 4
    assert second["ACC"] == pytest.approx(0.4) and second["clusters_used"] == 1
    assert second["NMI"] == pytest.approx(0.0, abs=1e-9)
