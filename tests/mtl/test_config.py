import importlib

import pytest

from mtl.config import CHOICES, TrainConfig, check_registry, tiny


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seg_loss": "focal"}, "seg_loss"),
        ({"head": "dense"}, "head"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"image_size": 100}, "image_size"),
        ({"folds": "random"}, "folds"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny().replace(**changes)


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        TrainConfig().epochs = 3  # type: ignore[misc]


# Where each closed field's factories live: name -> factory, checked on import against CHOICES.
REGISTRIES = {
    "folds": ("mtl.data.folds", "FOLD_SCHEMES"),
    "augment": ("mtl.data.augment", "AUGMENTATIONS"),
    "head": ("mtl.model", "HEADS"),
    "seg_loss": ("mtl.losses", "SEG_LOSSES"),
    "balancer": ("mtl.balancing", "BALANCERS"),
    "lr_schedule": ("mtl.trainer", "LR_SCHEDULES"),
    "device": ("mtl.trainer", "DEVICES"),
}


def test_every_closed_field_has_a_registry():
    assert set(REGISTRIES) == set(CHOICES)


@pytest.mark.parametrize("field", sorted(REGISTRIES))
def test_the_config_names_are_the_registry_names(field):
    module, name = REGISTRIES[field]
    assert tuple(getattr(importlib.import_module(module), name)) == CHOICES[field]


def test_a_registry_that_disagrees_with_the_config_is_refused():
    check_registry("seg_loss", {"dice": None, "bce": None})
    with pytest.raises(ImportError, match=r"has dice, bce, focal but .* lists dice, bce"):
        check_registry("seg_loss", {"dice": None, "bce": None, "focal": None})


def test_a_bad_name_lists_the_choices_and_the_closest():
    with pytest.raises(ValueError, match=r"one of equal, gradnorm, .*'gradnrom' \(did you mean"):
        TrainConfig(balancer="gradnrom")
    with pytest.raises(ValueError, match=r"one of dice, bce; got 'focal'$"):
        TrainConfig(seg_loss="focal")
