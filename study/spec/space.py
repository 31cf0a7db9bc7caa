"""A study's search space: the small frozen domains a preset or a study file describes it
with (Choice, LogUniform, IntRange), the fields a trial with a given balancer samples, and
every value a finite domain can take. Optuna draws from them in study.driver.search."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mtl import is_active


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Choice needs at least one value")


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")


@dataclass(frozen=True)
class IntRange:
    """low, low + step, ..., high (inclusive)."""

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.step < 1 or self.high < self.low or (self.high - self.low) % self.step:
            raise ValueError(f"IntRange({self.low}, {self.high}, {self.step}) is not a range")

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1, self.step))


Domain = Choice | LogUniform | IntRange


def active_space(space: Mapping[str, Domain], balancer: str) -> list[str]:
    """The keys of `space` a trial with `balancer` samples, balancer first."""
    keys = sorted(space, key=lambda key: key != "balancer")
    return [key for key in keys if is_active(key, balancer)]


def domain_values(domain: Domain) -> tuple:
    """Every value a finite domain can take (for validation against TrainConfig)."""
    if isinstance(domain, Choice):
        return domain.values
    if isinstance(domain, IntRange):
        return domain.values()
    return (domain.low, domain.high)
