"""The Trainer's configuration: set_config applies a new config whole, or refuses it, and the
Trainer's pseudo labels are those of cmmc.pseudo_labels.pseudo_labels, as the config says."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from cmmc.config import Config
from cmmc.phases import embed
from cmmc.pseudo_labels import pseudo_labels
from cmmc.synthetic import make_multiview_blobs
from cmmc.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = Config(pretrain_epochs=1, contrastive_epochs=1, finetune_epochs=1, batch_size=32,
              kmeans_restarts=2, eval_every=0, hidden=(64, 64, 128))  # fmt: skip


@pytest.fixture(scope="module")
def blobs():
    return make_multiview_blobs(96, 3, 2, dim=5, seed=1)


def test_set_config_before_training_rebuilds_batch_optimiser_and_temperatures(blobs):
    views, _ = blobs
    tr = Trainer.for_data(views, None, 3, TINY, seed=0, progress=False)
    assert tr.batch == 32 and tr.opt.param_groups[0]["lr"] == pytest.approx(3e-4)
    tr.set_config(TINY.replace(batch_size=64, lr=1e-3, tau_f=0.2, min_batches=4))
    assert tr.batch == 96 // 4  # min_batches caps the batch at N // 4 = 24
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert tr.config.tau_f == 0.2


def test_set_config_after_a_phase_refuses_that_phase_s_fields_and_takes_later_ones(blobs):
    views, _ = blobs
    tr = Trainer.for_data(views, None, 3, TINY, seed=0, progress=False).fit(until="pretrain")
    with pytest.raises(ValueError, match=r"already ran with other \['lr'\]"):
        tr.set_config(TINY.replace(lr=1e-3))
    with pytest.raises(ValueError, match="batch_size"):
        tr.set_config(TINY.replace(batch_size=16))
    tr.set_config(TINY.replace(finetune_form="ce", tau_l=0.5))  # phases still to run
    assert tr.config.finetune_form == "ce" and tr.config.tau_l == 0.5
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_trainer_pseudo_labels_follow_the_config_and_match_a_direct_kmeans(blobs):
    views, _ = blobs
    for form in ("kmeans", "spectral"):
        cfg = TINY.replace(pseudo_labels=form)
        tr = Trainer.for_data(views, None, 3, cfg, seed=5, progress=False).fit()
        # the Trainer's labels come from the end of the contrastive phase: rebuild that point
        again = Trainer.for_data(views, None, 3, cfg, seed=5, progress=False)
        again.fit(until="contrastive")
        hs = embed(again.net, again.xs)["h"]
        expected = pseudo_labels(hs, 3, cfg, 5)
        for mine, theirs in zip(tr.state.pseudo_labels, expected, strict=True):
            np.testing.assert_array_equal(mine, theirs)
        if form == "kmeans":  # independently: sklearn's KMeans on min-max scaled h, per view
            for h, labels in zip(hs, expected, strict=True):
                h = h.double().numpy()
                scaled = (h - h.min(0)) / np.where(np.ptp(h, 0) > 0, np.ptp(h, 0), 1.0)
                km = KMeans(3, n_init=cfg.kmeans_restarts, random_state=5).fit_predict(scaled)
                np.testing.assert_array_equal(labels, km)
        else:
            assert np.array_equal(expected[0], expected[1])  # one clustering for every view
