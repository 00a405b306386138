"""Config: every field's type is checked with an error that names the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cmmc.config import Config, ConfigTypeError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", "abc", "Config.lr must be a number, got 'abc'"),
        ("pretrain_epochs", 2.5, "Config.pretrain_epochs must be an integer, got 2.5"),
        ("batch_size", True, "Config.batch_size must be an integer, got True"),
        ("losses", "feature", "Config.losses must be a list of loss-term names, got 'feature'"),
        ("losses", ["feature", 3], "Config.losses must be a list of loss-term names"),
        ("fused_adam", 1, "Config.fused_adam must be True or False, got 1"),
        ("fused_adam", "yes", "Config.fused_adam must be True or False"),
        ("precision", 16, "Config.precision must be a string, got 16"),
        ("hidden", "500", "Config.hidden must be a list of layer sizes, got '500'"),
        ("hidden", [500, 2.5], "Config.hidden must be a list of layer sizes"),
        ("selection", None, "Config.selection must be a string, got None"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(field, value, message):
    with pytest.raises(ConfigTypeError) as err:
        Config(**{field: value})
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)  # the CLI reports ValueErrors as clean messages


def test_numbers_of_other_python_and_numpy_types_are_accepted_unchanged():
    cfg = Config(tau_f=1, pretrain_epochs=np.int64(3), lr=np.float32(0.001), losses=["feature"])
    assert cfg.tau_f == 1 and isinstance(cfg.tau_f, int)  # kept as given: keys hash the value
    assert cfg.losses == ("feature",)


def test_every_field_has_a_checked_type():
    # a new field whose annotation the checker does not know would go unchecked
    from cmmc.config import _FIELD_TYPES

    unknown = [f.name for f in dataclasses.fields(Config) if f.type not in _FIELD_TYPES]
    assert unknown == []


def test_hidden_sizes_the_network_and_keys_ignore_its_default():
    from cmmc.members import build_members
    from cmmc.phases import stage_key

    cfg = Config(hidden=[8, 16], low_dim=4, high_dim=3)
    assert cfg.hidden == (8, 16)
    (net,), _ = build_members([5, 7], 2, [0], [cfg], torch.device("cpu"))
    shapes = [tuple(p.shape) for p in net.encoders[1].parameters()]
    assert shapes == [(8, 7), (8,), (16, 8), (16,), (4, 16), (4,)]
    shapes = [tuple(p.shape) for p in net.decoders[0].parameters()]
    assert shapes == [(16, 4), (16,), (8, 16), (8,), (5, 8), (5,)]
    assert Config(hidden=[8]).to_dict()["hidden"] == [8]
    ident = {"dataset": "BDGP", "seed": 0}
    assert stage_key(Config(hidden=[500, 500, 2000]), "pretrain", ident) == stage_key(
        Config(), "pretrain", ident
    )
    assert stage_key(Config(hidden=[8]), "pretrain", ident) != stage_key(
        Config(), "pretrain", ident
    )
    with pytest.raises(ValueError, match="hidden layer sizes must be >= 1"):
        Config(hidden=[8, 0])
