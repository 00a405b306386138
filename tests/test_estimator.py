"""The CMMC estimator: end-to-end learning, determinism, scikit-learn contract, bad input."""

import inspect

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.utils.estimator_checks import (
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
)

from cmmc import CMMC
from cmmc.config import LOSS_TERMS, Config, config_fields, make_config
from cmmc.losses import TERMS
from cmmc.metrics import cluster_acc
from cmmc.synthetic import make_multiview_blobs
from cmmc.train import Trainer

TINY = dict(
    pretrain_epochs=2,
    contrastive_epochs=2,
    finetune_epochs=2,
    batch_size=32,
    kmeans_restarts=2,
    hidden=(64, 64, 128),  # a small network: the tests check behaviour, not the official sizes
    progress=False,
)
TINY_CONFIG = Config(**{k: v for k, v in TINY.items() if k != "progress"})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs():
    return make_multiview_blobs(96, 3, 2, dim=5, seed=1)


@pytest.mark.slow
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
        ([np.zeros((10, 3)), np.zeros((9, 3))], 2, "view 1 has 9 samples, view 0 has 10"),
        ([np.zeros((10, 3)), np.full((10, 3), "x")], 2, "view 1 has non-numeric dtype"),
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


def test_every_setting_is_a_keyword_with_a_default():
    """scikit-learn's own checks: default-constructible, __init__ stores only; and every Config
    field is reachable as a keyword (None: the base config's value)."""
    check_parameters_default_constructible("CMMC", CMMC())
    check_no_attributes_set_in_init("CMMC", CMMC())
    names = set(inspect.signature(CMMC).parameters)
    fixed = {"n_clusters", "random_state", "device", "config", "preset", "variant", "progress"}
    assert names == fixed | config_fields()
    assert set(CMMC().get_params()) == names


def test_get_params_and_clone_round_trip():
    base = Config(tau_f=0.2, pretrain_epochs=3)
    model = CMMC(5, random_state=3, config=base, lr=1e-3, losses=("feature",), progress=False)
    params = model.get_params()
    assert params["lr"] == 1e-3 and params["config"] is base and params["tau_l"] is None
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    assert not hasattr(twin, "labels_")
    model.set_params(tau_l=0.3, n_clusters=4)
    assert model.get_params()["tau_l"] == 0.3 and model.n_clusters == 4


def test_keywords_override_the_base_config(blobs):
    views, y = blobs
    base = TINY_CONFIG.replace(tau_f=0.2)
    model = CMMC(3, config=base, tau_l=0.4, finetune_epochs=1, progress=False).fit(views, y)
    assert model.config_ == base.replace(tau_l=0.4, finetune_epochs=1)
    assert [r["phase"] for r in model.history_].count("finetune") == 1
    assert CMMC(3).get_params()["config"] is None and Config() == Config(**Config().to_dict())
    with pytest.raises(ValueError, match="random_state must be an integer"):
        CMMC(3, random_state=None, **TINY).fit(views)
    with pytest.raises(ValueError, match="tau_l"):
        CMMC(3, tau_l=-1.0, **TINY).fit(views)


def test_fit_is_idempotent_and_leaves_global_generators_alone(blobs):
    """Fitting twice gives the same labels and losses (no state carries over from the first
    fit), and fit neither reads nor moves numpy's or torch's global generators."""
    views, y = blobs
    model = CMMC(3, random_state=5, **TINY)
    np.random.seed(123)
    torch.manual_seed(123)
    np_before, torch_before = np.random.get_state(), torch.get_rng_state()
    first = model.fit(views, y).labels_.copy()
    losses = [r["loss"] for r in model.history_]
    np_after, torch_after = np.random.get_state(), torch.get_rng_state()
    assert torch.equal(torch_before, torch_after)
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    np.random.seed(7)  # other global states: the same fit
    torch.manual_seed(7)
    np.testing.assert_array_equal(model.fit(views, y).labels_, first)
    assert [r["loss"] for r in model.history_] == losses


def test_from_trainer_gives_the_fitted_estimator(blobs):
    views, y = blobs
    config = TINY_CONFIG
    tr = Trainer.for_data(views, y, 3, config, 2, progress=False).fit()
    model = CMMC.from_trainer(tr)
    ref = CMMC(3, random_state=2, config=config, progress=False).fit(views, y)
    np.testing.assert_array_equal(model.labels_, ref.labels_)
    np.testing.assert_array_equal(model.predict(views), ref.predict(views))
    assert model.history_ == [dict(r, seconds=model.history_[i]["seconds"])
                              for i, r in enumerate(ref.history_)]  # fmt: skip
    assert model.random_state == 2 and model.config_ == config and model.n_clusters == 3
    assert model.network_ is not tr.net  # its own copy: later training leaves it alone


def test_the_loss_table_names_the_default_terms():
    assert set(LOSS_TERMS) == set(TERMS)
