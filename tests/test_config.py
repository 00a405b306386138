"""Config: every field's type is checked with an error that names the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

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
