"""Search spaces, the Optuna searcher and the ASHA scheduler of a study.

A preset describes its space with the small frozen domains below; `tune_space` turns them
into Tune's, which Ray's Optuna searcher converts into Optuna distributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch


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


def tune_space(space: Mapping[str, Domain]) -> dict:
    def convert(domain: Domain):
        if isinstance(domain, Choice):
            return tune.choice(list(domain.values))
        if isinstance(domain, LogUniform):
            return tune.loguniform(domain.low, domain.high)
        return tune.qrandint(domain.low, domain.high, domain.step)

    return {key: convert(domain) for key, domain in space.items()}


def domain_values(domain: Domain) -> tuple:
    """Every value a finite domain can take (for validation against TrainConfig)."""
    if isinstance(domain, Choice):
        return domain.values
    if isinstance(domain, IntRange):
        return domain.values()
    return (domain.low, domain.high)


class PruneAwareOptunaSearch(OptunaSearch):
    """Ray's Optuna searcher, except that trials ASHA stopped are told as PRUNED.

    Ray tells Optuna every trial that ends without error as COMPLETE with its last score, so
    a configuration stopped at epoch 4 would count as fully evaluated. A trial reports the
    epochs it was asked to train (`epochs`) and the epoch it reached (`epoch`); when it
    stopped short, Optuna gets PRUNED, with the last score as its last intermediate value.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not error and result and result.get("epoch", 0) < result.get("epochs", 0):
            import optuna

            ot_trial = self._ot_trials[trial_id]
            # The per-epoch scores were already reported (on_trial_result); PRUNED uses them.
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def optuna_search(
    name: str, folder: Path, seed: int, warm_start: Sequence[Mapping] = ()
) -> PruneAwareOptunaSearch:
    """An Optuna searcher whose study lives in FOLDER/optuna.db (SQLite).

    `optuna-dashboard sqlite:///FOLDER/optuna.db` and Optuna's plots open it, and a later
    study with the same name extends it. The metric and mode come from the TuneConfig.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live view says what happens
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'optuna.db').resolve()}")
    return PruneAwareOptunaSearch(
        sampler=optuna.samplers.TPESampler(seed=seed),
        study_name=name,
        storage=storage,
        # Enqueued in the Optuna study: the first trials evaluate these, in this order.
        points_to_evaluate=[dict(p) for p in warm_start] or None,
    )


def asha(max_epochs: int, grace_period: int, reduction_factor: float) -> ASHAScheduler:
    """ASHA by epoch on the metric of the TuneConfig (the cross-validated score)."""
    return ASHAScheduler(
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
