"""The fast path: fused Adam and precision "auto" (bf16 only where the device has it natively)."""

import json
import warnings

import numpy as np
import pytest
import torch

import cmmc.device as device
from cmmc import CMMC, make_config
from cmmc.config import Config
from cmmc.device import adam, resolve_precision
from cmmc.experiments.records import V1_LATER_FIELDS
from cmmc.phases import stage_key
from cmmc.train import Trainer


def adam_by_hand(w0, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, Algorithm 1) in float64, one step per gradient."""
    w, m, v = w0.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return w


@pytest.mark.parametrize("fused", [False, True])
def test_adam_follows_the_algorithm(fused):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = adam([p], Config(lr=0.01, fused_adam=fused))
    assert bool(opt.defaults.get("fused")) is fused
    for g in grads:
        p.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), adam_by_hand(w0, grads, 0.01), atol=2e-6)


def test_keys_hash_only_the_fields_that_differ_from_their_defaults():
    # a field added with a default keeps every key made before it: a stage key of the defaults
    # hashes nothing of the Config, one with fused Adam hashes that field alone (by hand)
    import hashlib

    def sha(payload):
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    cfg = Config()
    assert Config().to_dict()["fused_adam"] is False
    assert stage_key(cfg, "pretrain") == sha({})
    assert stage_key(cfg.replace(fused_adam=True), "pretrain") == sha({"fused_adam": True})
    assert stage_key(cfg.replace(tau_f=0.1), "pretrain") == sha({})  # not a pre-training field
    assert stage_key(cfg.replace(hidden=(8,)), "pretrain") == sha({"hidden": [8]})
    assert set(V1_LATER_FIELDS) <= set(Config().__dataclass_fields__)
    with pytest.raises(ValueError, match="fused_adam"):
        Config(fused_adam="yes")


def test_precision_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(device, "bf16_native", lambda device="cpu": False)
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.warns(UserWarning, match="emulated"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(device, "bf16_native", lambda device="cpu": True)
    assert resolve_precision("auto", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu") == "bf16"


def test_trainer_records_the_precision_it_used(monkeypatch):
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(40, 6)).astype(np.float32) for _ in range(2)]
    cfg = make_config(None, "quick", precision="auto", batch_size=16)
    for native, used in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(device, "bf16_native", lambda device="cpu", n=native: n)
        tr = Trainer.for_data(views, None, 2, cfg, 0, progress=False)
        assert tr.config.precision == used
        with device.autocast(tr.device, tr.config):
            out = torch.ones(2, 2) @ torch.ones(2, 2)
        assert out.dtype == (torch.bfloat16 if used == "bf16" else torch.float32)


def test_fused_run_trains_and_resumes(tmp_path):
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(48, 5)).astype(np.float32) for _ in range(2)]
    cfg = make_config(None, "quick", batch_size=16, fused_adam=True)
    whole = Trainer.for_data(views, None, 3, cfg, 0, progress=False).fit()
    part = Trainer.for_data(views, None, 3, cfg, 0, progress=False).fit(until="pretrain")
    part.save(tmp_path / "p.pt")
    resumed = Trainer.for_data(views, None, 3, cfg, 0, progress=False)
    resumed.load(tmp_path / "p.pt")
    resumed.fit()
    np.testing.assert_array_equal(whole.read_out(), resumed.read_out())
    # a fused checkpoint is not taken for a loop run's
    loop = Trainer.for_data(views, None, 3, cfg.replace(fused_adam=False), 0, progress=False)
    with pytest.raises(ValueError, match="fused_adam"):
        loop.load(tmp_path / "p.pt")
    # the fused and the loop runs follow one path up to rounding: after pre-training they are
    # far closer to each other than to where they started
    start = {n: p.detach().clone() for n, p in loop.params.items()}
    loop.fit(until="pretrain")
    gap = sum((p - part.params[n]).norm() ** 2 for n, p in loop.params.items()) ** 0.5
    moved = sum((p - start[n]).norm() ** 2 for n, p in loop.params.items()) ** 0.5
    assert moved > 0 and gap < 0.01 * moved


def test_estimator_takes_the_fast_path_by_keyword():
    est = CMMC(3, precision="auto", fused_adam=True)
    assert est.get_params()["fused_adam"] is True
    cfg = est._resolved_config()
    assert cfg.fused_adam is True and cfg.precision == "auto"
