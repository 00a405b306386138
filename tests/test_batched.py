"""Batched training (several seeds/temperatures at once) against separate single runs."""

import numpy as np
import pytest

from cmmc import runner
from cmmc.batched import fit_batched
from cmmc.config import make_config
from cmmc.estimator import CMMC
from cmmc.synthetic import make_multiview_blobs


def small_config(**kw):
    base = dict(pretrain_epochs=2, contrastive_epochs=2, finetune_epochs=2, kmeans_restarts=2)
    return make_config(None, "paper", batch_size=64, eval_every=1, **{**base, **kw})


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
    members = fit_batched(views, y, 4, seeds, configs, progress=False)
    assert_follow_separate_runs(views, y, seeds, configs, members)
    return views, y, configs, members


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
    apart = fit_batched(views, y, 4, seeds, configs, progress=False, share_pretraining=False)
    for a, b in zip(members, apart, strict=True):
        np.testing.assert_array_equal(a.labels_, b.labels_)


def test_members_must_share_everything_but_seed_and_temperatures():
    views, y = make_multiview_blobs(100, 3, 2, seed=0)
    cfg = small_config()
    with pytest.raises(ValueError, match=r"member 1 .*\['lr'\]"):
        fit_batched(views, y, 3, [0, 1], [cfg, cfg.replace(lr=1e-3)], progress=False)
    with pytest.raises(ValueError, match="same .seed, tau_f, tau_l. twice"):
        fit_batched(views, y, 3, [0, 0], [cfg, cfg], progress=False)
    with pytest.raises(ValueError, match="one config per seed"):
        fit_batched(views, y, 3, [0, 1], [cfg], progress=False)


def test_batches_group_only_runs_that_differ_in_seed_or_temperature(tmp_path):
    tasks = runner.plan(
        "main", datasets=["BDGP"], seeds=[0, 1, 2], results_dir=tmp_path, profile="quick"
    )  # code s0..s2, paper s0..s2
    groups = runner.batches(tasks, 2)
    got = [[(t["variant"], t["seed"]) for t in g] for g in groups]
    assert got == [
        [("code", 0), ("code", 1)],
        [("code", 2)],
        [("paper", 0), ("paper", 1)],
        [("paper", 2)],
    ]
    temps = runner.plan("temperature", datasets=["BDGP"], seeds=[0], results_dir=tmp_path)
    assert [len(g) for g in runner.batches(temps, 10)] == [10, 10, 5]
    sub = runner.plan("main", datasets=["BDGP"], seeds=[0, 1], results_dir=tmp_path, n_samples=50)
    assert all(len(g) == 1 for g in runner.batches(sub, 10))  # the subset depends on the seed
    assert [len(g) for g in runner.batches(tasks, 1)] == [1] * 6
