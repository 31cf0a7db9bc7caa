"""Studies as presets: functions returning a frozen StudyConfig.

A study is a base TrainConfig, a grid of values for some of its fields (one trial per
combination; every trial is evaluated on all folds), and where the data comes from.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mtl.config import TrainConfig, tiny
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
    train_changes: dict[str, object] = {}
    grid = dict(study.grid)
    hints = typing.get_type_hints(TrainConfig)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            raise ValueError(f"--set {key}: no such field; fields are: {known}")
        value = parse_value(key, text.strip(), hints[key])
        train_changes[key] = value
        grid.pop(key, None)
    return dataclasses.replace(study, train=study.train.replace(**train_changes), grid=grid)


def parse_value(key: str, text: str, hint: object) -> object:
    """Turn the text of `--set key=text` into the field's type, or raise naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is typing.Literal:
            return text
        if origin is tuple:
            return tuple(parse_value(key, part.strip(), args[0]) for part in text.split(","))
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        raise ValueError(
            f"--set {key}={text}: not a valid {getattr(hint, '__name__', hint)}"
        ) from None
    raise ValueError(f"--set {key}: fields of type {hint} cannot be set from the command line")
