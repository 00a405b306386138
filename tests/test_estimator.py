"""The CMMC estimator: end-to-end learning, determinism, scikit-learn contract, bad input."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from cmmc import CMMC
from cmmc.config import Config, make_config
from cmmc.metrics import cluster_acc
from cmmc.synthetic import make_multiview_blobs

TINY = dict(
    pretrain_epochs=2,
    contrastive_epochs=2,
    finetune_epochs=2,
    batch_size=32,
    kmeans_restarts=2,
    progress=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests share 2 cores; one torch thread avoids oversubscription stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def blobs():
    return make_multiview_blobs(96, 3, 2, dim=5, seed=1)


def test_learns_what_no_single_view_shows():
    views, y = make_multiview_blobs(384, 4, 2, seed=0)
    single = max(cluster_acc(y, KMeans(4, n_init=10, random_state=0).fit_predict(v)) for v in views)
    model = CMMC(
        4,
        random_state=0,
        progress=False,
        pretrain_epochs=5,
        contrastive_epochs=25,
        finetune_epochs=5,
        batch_size=64,
        kmeans_restarts=10,
        eval_every=0,
    ).fit(views)
    acc = cluster_acc(y, model.labels_)
    assert single < 0.5
    assert acc > 0.9
    assert acc > single + 0.3


def test_same_seed_same_labels_and_losses(blobs):
    views, y = blobs
    a = CMMC(3, random_state=7, **TINY).fit(views, y)
    b = CMMC(3, random_state=7, **TINY).fit(views, y)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert [r["loss"] for r in a.history_] == [r["loss"] for r in b.history_]
    for pa, pb in zip(a.pseudo_labels_, b.pseudo_labels_, strict=True):
        np.testing.assert_array_equal(pa, pb)
    c = CMMC(3, random_state=8, **TINY).fit(views, y)
    assert [r["loss"] for r in a.history_] != [r["loss"] for r in c.history_]


def test_sklearn_contract_and_history(blobs):
    views, y = blobs
    model = CMMC(3, random_state=0, **TINY)
    assert model.fit(views, y) is model
    assert model.labels_.shape == (96,)
    np.testing.assert_array_equal(model.predict(views), model.labels_)
    assert model.transform(views).shape == (96, 2 * 128)
    emb = model.embed(views)
    assert [z.shape for z in emb["z"]] == [(96, 512)] * 2
    np.testing.assert_allclose(emb["q"][0].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb["h"][1], axis=1), 1.0, rtol=1e-5)
    phases = [r["phase"] for r in model.history_]
    assert phases == ["pretrain"] * 2 + ["contrastive"] * 2 + ["finetune"] * 2
    assert set(model.phase_seconds_) == {"pretrain", "contrastive", "pseudo_labels", "finetune"}
    last = model.history_[-1]
    assert {"ACC", "NMI", "PUR", "ARI", "finetune", "seconds"} <= set(last)
    assert {"feature", "label", "entropy", "reconstruction"} <= set(model.history_[2])


def test_loss_terms_are_composed_by_name(blobs):
    views, _ = blobs
    model = CMMC(3, random_state=0, **{**TINY, "losses": ("feature",), "finetune_epochs": 0})
    model.fit(views)
    contrastive = [r for r in model.history_ if r["phase"] == "contrastive"]
    assert all(set(r) == {"epoch", "phase", "loss", "feature", "seconds"} for r in contrastive)
    assert model.pseudo_labels_ is None


def test_paper_forms_and_three_views_run():
    views, y = make_multiview_blobs(64, 3, 3, dim=4, seed=2)
    kw = {**TINY, "recon_form": "sum", "entropy_form": "view", "finetune_form": "ce"}
    model = CMMC(3, random_state=0, **kw).fit(views, y)
    assert model.labels_.shape == (64,)
    assert len(model.pseudo_labels_) == 3


def test_batch_larger_than_n_is_clamped():
    views, y = make_multiview_blobs(20, 2, 2, dim=3, seed=3)
    model = CMMC(2, random_state=0, **{**TINY, "batch_size": 256}).fit(views, y)
    assert len(model.history_) == 6


@pytest.mark.parametrize(
    ("views", "k", "message"),
    [
        ([np.zeros((10, 3))], 2, "at least 2 views"),
        ([np.zeros((10, 3)), np.zeros((9, 3))], 2, "different numbers of samples"),
        ([np.zeros((10, 3)), np.zeros(10)], 2, "view 1 must be 2-D"),
        ([np.zeros((10, 3)), np.zeros((10, 0))], 2, "view 1 is empty"),
        ([np.full((10, 3), np.nan), np.zeros((10, 3))], 2, "view 0 holds 30 NaN/Inf"),
        ([np.zeros((10, 3)), np.array([[np.inf] * 3] * 10)], 2, "view 1 holds"),
        ([np.zeros((10, 3)), np.zeros((10, 3))], 1, "2 <= K <= N=10"),
        ([np.zeros((10, 3)), np.zeros((10, 3))], 11, "2 <= K <= N=10"),
        (np.zeros((2, 10, 3)), 2, "list of 2-D arrays"),
    ],
)
def test_bad_input_is_named(views, k, message):
    with pytest.raises(ValueError, match=message):
        CMMC(k, **TINY).fit(views)


def test_bad_labels_and_unfitted_and_wrong_dims(blobs):
    views, y = blobs
    with pytest.raises(ValueError, match="labels must have length N=96"):
        CMMC(3, **TINY).fit(views, y[:-1])
    with pytest.raises(ValueError, match="not fitted"):
        CMMC(3, **TINY).predict(views)
    model = CMMC(3, **TINY).fit(views)
    with pytest.raises(ValueError, match="view 1 has 4 features"):
        model.predict([views[0], views[1][:, :4]])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"losses": ("feature", "typo")}, "unknown loss terms"),
        ({"recon_form": "max"}, "recon_form"),
        ({"tau_f": 0}, "tau_f"),
        ({"batch_size": 0}, "batch_size"),
        ({"pretrain_epochs": -1}, "pretrain_epochs"),
    ],
)
def test_bad_config_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(**kw)


def test_make_config_uses_registry_schedule():
    assert make_config("BDGP").contrastive_epochs == 10
    assert make_config("Fashion").contrastive_epochs == 100
    assert make_config("MNIST-USPS").pretrain_epochs == 200
    assert make_config("MNIST-USPS", "quick").pretrain_epochs < 200
    with pytest.raises(ValueError, match="unknown config keys"):
        make_config("BDGP", tau=1)
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("BDGP", "slow")


def test_cuda_request_without_cuda_is_clear(blobs):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        CMMC(3, device="cuda", **TINY).fit(blobs[0])
