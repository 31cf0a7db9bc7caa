"""Studies as presets: functions returning a frozen StudyConfig.

A study is a base TrainConfig, a grid of values for some of its fields (one trial per
combination; every trial is evaluated on all folds), and where the data comes from.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mtl.config import TrainConfig, parse_overrides, tiny
from mtl.data import SynthSpec


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    name: str
    train: TrainConfig
    # TrainConfig field -> the values to try; the study runs every combination.
    grid: Mapping[str, tuple] = field(default_factory=dict)
    # Where the data comes from when train.data is empty: generated once, then cached.
    synthetic: SynthSpec | None = None
    cpus_per_trial: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, values in self.grid.items():
            if key not in fields:
                raise ValueError(f"grid: {key!r} is not a TrainConfig field")
            if not values:
                raise ValueError(f"grid: {key!r} has no values")
        if not self.train.data and self.synthetic is None:
            raise ValueError("the study needs data: set train.data (--data) or synthetic")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be positive, got {self.cpus_per_trial}")
        self.configurations()  # every combination must be a valid TrainConfig

    def configurations(self) -> list[dict]:
        """Every grid combination as a dict of overrides, validated against TrainConfig."""
        keys = list(self.grid)
        combos = [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*self.grid.values())
        ]
        for combo in combos:
            self.train.replace(**combo)
        return combos


def demo() -> StudyConfig:
    """Dice vs BCE on synthetic 64 px data, 5 folds: a few minutes on a 2-core laptop."""
    train = TrainConfig(
        encoder="tu-resnet10t",
        decoder_channels=(64, 32, 16, 8, 8),
        head="pool",
        head_hidden=64,
        image_size=64,
        epochs=6,
        batch_size=16,
        lr=5e-4,
    )
    return StudyConfig(
        name="demo",
        train=train,
        grid={"seg_loss": ("dice", "bce")},
        synthetic=SynthSpec(patients=60, size=64, specimens=1, seed=0),
    )


def smoke() -> StudyConfig:
    """Seconds: the tiny model, 10 synthetic patients, two epochs; for tests."""
    return StudyConfig(
        name="smoke",
        train=tiny(),
        grid={"seg_loss": ("dice", "bce")},
        synthetic=SynthSpec(patients=10, size=64, specimens=1, seed=0),
    )


PRESETS: dict[str, Callable[[], StudyConfig]] = {"demo": demo, "smoke": smoke}


def get_preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(study: StudyConfig, pairs: Sequence[str]) -> StudyConfig:
    """Apply `--set key=value` pairs to the study's TrainConfig.

    A key that the grid varies is fixed to the one value. Unknown keys and values of the
    wrong type are errors that name the field.
    """
    changes = parse_overrides(pairs)
    grid = {key: values for key, values in study.grid.items() if key not in changes}
    return dataclasses.replace(study, train=study.train.replace(**changes), grid=grid)
