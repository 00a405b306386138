"""One Trainer for one run or K stacked members: members against separate runs, stopping and
resuming between phases, the stage caches and what they are keyed by."""

import dataclasses

import numpy as np
import pytest
import torch

from cmmc.config import Config, make_config
from cmmc.estimator import CMMC
from cmmc.phases import PHASES, stage_fields, stage_key
from cmmc.synthetic import make_multiview_blobs
from cmmc.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**kw):
    base = dict(pretrain_epochs=2, contrastive_epochs=2, finetune_epochs=2, kmeans_restarts=2,
                hidden=(64, 64, 128))  # fmt: skip
    return make_config(None, "full", **{**base, "batch_size": 64, "eval_every": 1, **kw})


def fit_members(views, y, seeds, configs, **kw):
    tr = Trainer.for_members(views, y, 4, seeds, configs, progress=False, **kw).fit()
    return [CMMC.from_trainer(tr, i) for i in range(len(seeds))]


def assert_follow_separate_runs(views, y, seeds, configs, members):
    """Each member against CMMC.fit with its seed and config: same phases, pseudo labels and
    final labels; losses equal up to float summation order."""
    for seed, c, m in zip(seeds, configs, members, strict=True):
        ref = CMMC(4, random_state=seed, config=c, progress=False).fit(views, y)
        assert [r["phase"] for r in m.history_] == [r["phase"] for r in ref.history_]
        for a, b in zip(ref.history_, m.history_, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
            assert a["ACC"] == pytest.approx(b["ACC"], abs=0.02)
        for p, q in zip(ref.pseudo_labels_, m.pseudo_labels_, strict=True):
            np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(ref.labels_, m.labels_)
        assert m.random_state == seed and m.config_ == c


def three_members_follow_their_runs(seeds: list[int]):
    """Three members (the second with other temperatures) trained at once, each checked
    against its separate run; returns the data, configs and members for further checks."""
    views, y = make_multiview_blobs(200, 4, 2, seed=5)
    cfg = small_config()
    configs = [cfg, cfg.replace(tau_f=0.3, tau_l=0.7), cfg]
    members = fit_members(views, y, seeds, configs)
    assert_follow_separate_runs(views, y, seeds, configs, members)
    return views, y, configs, members


@pytest.mark.slow
def test_members_follow_their_separate_runs():
    """Each member (own seed, own temperatures) matches CMMC.fit with that seed and config:
    the same pseudo labels and final labels, losses equal up to float summation order."""
    three_members_follow_their_runs([0, 1, 2])


def test_members_with_one_seed_share_pretraining_and_still_follow_their_runs():
    """A temperature grid: members 0 and 1 share seed 0, so pre-training runs once for them;
    every member must still match its separate run, and the shared pre-training must give
    both exactly the same pre-training history."""
    seeds = [0, 0, 1]
    views, y, configs, members = three_members_follow_their_runs(seeds)
    pre = [[r for r in m.history_ if r["phase"] == "pretrain"] for m in members]
    assert pre[0] == pre[1] and pre[0] != pre[2]
    # the same batch without sharing: the same labels (only float rounding may differ)
    apart = fit_members(views, y, seeds, configs, share_pretraining=False)
    for a, b in zip(members, apart, strict=True):
        np.testing.assert_array_equal(a.labels_, b.labels_)


def test_members_must_share_everything_but_seed_and_temperatures():
    views, y = make_multiview_blobs(100, 3, 2, seed=0)
    cfg = small_config()
    with pytest.raises(ValueError, match=r"member 1 .*\['lr'\]"):
        Trainer.for_members(views, y, 3, [0, 1], [cfg, cfg.replace(lr=1e-3)])
    with pytest.raises(ValueError, match="same .seed, tau_f, tau_l. twice"):
        Trainer.for_members(views, y, 3, [0, 0], [cfg, cfg])
    with pytest.raises(ValueError, match="one config per seed"):
        Trainer.for_members(views, y, 3, [0, 1], [cfg])


def _state(tr: Trainer):
    """Everything a run leaves behind, without the wall times."""
    hist = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in tr.histories]
    pseudo = [[p.tolist() for p in m] for m in tr.pseudo_labels or []]
    weights = {n: p.detach().clone() for n, p in tr.params.items()}
    return hist, pseudo, tr.read_out().tolist(), weights


def assert_same_state(a: Trainer, b: Trainer) -> None:
    (ha, pa, la, wa), (hb, pb, lb, wb) = _state(a), _state(b)
    assert ha == hb and pa == pb and la == lb
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


@pytest.mark.parametrize("stacked", [False, True])
def test_until_stops_there_and_a_saved_state_continues_exactly(tmp_path, stacked):
    """fit(until=...) stops after that phase; saved there, loaded into a fresh trainer and
    fitted on, it ends bit for bit where an uninterrupted run ends (weights, Adam state,
    shuffle generators and records all travel in the file)."""
    views, y = make_multiview_blobs(150, 3, 2, seed=2)
    cfg = small_config(batch_size=32, eval_every=2)

    def fresh():
        if stacked:
            configs = [cfg, cfg.replace(tau_f=0.3)]
            return Trainer.for_members(views, y, 3, [0, 0], configs, progress=False)
        return Trainer.for_data(views, y, 3, cfg, 4, progress=False)

    whole = fresh().fit()
    part = fresh().fit(until="pretrain")
    assert part.phases_done == ["pretrain"]
    assert {r["phase"] for h in part.histories for r in h} == {"pretrain"}
    part.save(tmp_path / "pretrain.pt")
    part.fit(until="contrastive")
    assert [r["phase"] for r in part.histories[0]][-1] == "contrastive"
    assert part.pseudo_labels is None and "finetune" not in part.phase_seconds
    part.save(tmp_path / "contrastive.pt")
    for i, stage in enumerate(PHASES[:2]):
        resumed = fresh()
        resumed.load(tmp_path / f"{stage}.pt")
        assert resumed.phases_done == list(PHASES[: i + 1])
        assert_same_state(resumed.fit(), whole)
    assert resumed.phases_done == list(PHASES)
    rows = len(resumed.histories[0])
    assert len(resumed.fit().histories[0]) == rows  # nothing is left to run


def test_load_refuses_a_file_of_other_settings(tmp_path):
    views, y = make_multiview_blobs(100, 3, 2, seed=0)
    cfg = small_config()
    tr = Trainer.for_data(views, y, 3, cfg, 0, progress=False).fit(until="pretrain")
    tr.save(tmp_path / "p.pt")
    other = Trainer.for_data(views, y, 3, cfg.replace(lr=1e-3), 0, progress=False)
    with pytest.raises(ValueError, match=r"other \['lr'\]"):
        other.load(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="seeds"):
        Trainer.for_data(views, y, 3, cfg, 1, progress=False).load(tmp_path / "p.pt")
    # a setting of a later phase does not matter to the end of pre-training
    Trainer.for_data(views, y, 3, cfg.replace(tau_f=0.2), 0, progress=False).load(tmp_path / "p.pt")


@pytest.mark.slow
def test_stage_caches_are_read_back_and_equal_a_fresh_run(tmp_path):
    views, y = make_multiview_blobs(120, 3, 2, seed=1)
    cfg = small_config(batch_size=32)
    kw = dict(cache_dir=tmp_path, cache_identity={"dataset": "blobs"})
    stages = ("pretrain", "contrastive")

    def fresh(c=cfg):
        return Trainer.for_data(views, y, 3, c, 0, progress=False)

    first = fresh().fit(until="contrastive", cache_stages=stages, **kw)
    assert first.loaded_stage is None
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["contrastive", "pretrain"]
    again = fresh().fit(until="contrastive", cache_stages=stages, **kw)
    assert again.loaded_stage == "contrastive"
    assert_same_state(again, first)
    assert_same_state(again.fit(), fresh().fit())
    # other temperatures: the pre-training is read, the contrastive phase runs
    warm = fresh(cfg.replace(tau_f=0.3)).fit(cache_stages=stages, **kw)
    assert warm.loaded_stage == "pretrain"
    assert_same_state(warm, fresh(cfg.replace(tau_f=0.3)).fit())
    assert fresh().fit(until="contrastive", refresh_cache=True, **kw).loaded_stage is None
    other_data = Trainer.for_data([v + 1 for v in views], y, 3, cfg, 0, progress=False)
    assert other_data.fit(until="pretrain", **kw).loaded_stage is None


def test_every_config_field_belongs_to_one_phase_and_keys_follow_them():
    per_phase = [
        set(stage_fields(p)) - (set(stage_fields(PHASES[i - 1])) if i else set())
        for i, p in enumerate(PHASES)
    ]
    names = [f.name for f in dataclasses.fields(Config)]
    assert sorted(set().union(*per_phase)) == sorted(names)
    assert sum(len(s) for s in per_phase) == len(names)
    cfg = Config()
    ident = {"dataset": "BDGP", "seed": 0}
    key = stage_key(cfg, "pretrain", ident)
    assert len(key) == 16 and int(key, 16) >= 0
    assert stage_key(cfg.replace(tau_f=0.1), "pretrain", ident) == key
    assert stage_key(cfg.replace(lr=1e-3), "pretrain", ident) != key
    assert stage_key(cfg, "pretrain", {**ident, "seed": 1}) != key
    c = stage_key(cfg, "contrastive", ident)
    assert stage_key(cfg.replace(tau_f=0.1), "contrastive", ident) != c
    assert stage_key(cfg.replace(finetune_form="ce"), "contrastive", ident) == c
    with pytest.raises(ValueError, match="repeats config fields"):
        stage_key(cfg, "pretrain", {"lr": 1})
    with pytest.raises(ValueError, match="unknown stage"):
        stage_fields("warmup")


def test_a_diverging_run_stops_at_its_first_non_finite_epoch_naming_it():
    """A learning rate of 1e30 overflows the weights within a few steps: the run must stop with
    NonFiniteLoss naming the seed and a phase, before k-means sees NaN features."""
    from cmmc.phases import NonFiniteLoss

    views, y = make_multiview_blobs(100, 3, 2, seed=0)
    tr = Trainer.for_data(views, y, 3, small_config(lr=1e30), 7, progress=False)
    with pytest.raises(NonFiniteLoss, match=r"seed 7: (pretrain|contrastive) epoch \d+"):
        tr.fit()
    assert tr.pseudo_labels is None  # stopped before the fine-tuning's k-means
