import pytest

from mtl.config import TrainConfig, tiny


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
