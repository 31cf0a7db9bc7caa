"""The Optuna searcher and the ASHA scheduler of a study.

A preset describes its space with the small frozen domains of study/spec/space.py. The
space is conditional (define-by-run, `ConditionalSpace`): a balancer's own fields (`alpha`
for GradNorm, `balancer_lr` for the balancers with learned weights: each balancer class's
`reads`, asked through `mtl.is_active`) are sampled only for the trials whose balancer reads
them, so no trial carries a number that did nothing, and TPE does not model one.

The Optuna study and the tables are linked: every trial's configuration carries its Optuna
trial number (`optuna_trial`, a column of trials.parquet), and every Optuna trial the Tune
trial id and the study folder as user attributes.

No configuration is trained twice: a proposal equal in its active parameters to a trial
already finished or running is told the earlier trial's result (Optuna's recipe for
duplicated samples: the earlier value, not a new evaluation) and another is asked for. The
warm-start configurations are trained to the end (`WarmStartASHA`): they are what the search
is compared with, so a study always compares them.

The single-task baselines of a study (StudyConfig.baselines) are not the search's: they are
handed to Tune before its first proposal (`WithBaselines`), Optuna never hears of them, and
ASHA neither stops them nor counts their scores in its rungs (their score, the mean of three
tasks' metrics, is undefined with one task).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from mtl import METRIC_DIRECTIONS, TrainConfig
from study.results.tables import OPTUNA_TRIAL, REPEATS
from study.spec.space import Choice, Domain, LogUniform, active_space

logger = logging.getLogger(__name__)
# Proposals in a row that repeat a configuration before the search is taken as exhausted (a
# small finite space: every configuration it holds has been trained or is training).
MAX_REPEATED_PROPOSALS = 20


class ConditionalSpace:
    """Optuna's define-by-run space: the balancer first (when searched), then every other
    field of the space that the balancer reads. A class, not a closure: Tune pickles the
    searcher, space included, into its experiment state."""

    def __init__(self, space: Mapping[str, Domain], base: TrainConfig):
        self.space, self.base_balancer = dict(space), base.balancer

    def __call__(self, trial) -> dict:
        balancer = self.base_balancer
        if "balancer" in self.space:
            balancer = _suggest(trial, "balancer", self.space["balancer"])
        for key in active_space(self.space, balancer):
            if key != "balancer":
                _suggest(trial, key, self.space[key])
        return {OPTUNA_TRIAL: trial.number}


def _suggest(trial, key: str, domain: Domain):
    if isinstance(domain, Choice):
        return trial.suggest_categorical(key, list(domain.values))
    if isinstance(domain, LogUniform):
        return trial.suggest_float(key, domain.low, domain.high, log=True)
    return trial.suggest_int(key, domain.low, domain.high, step=domain.step)


class PruneAwareOptunaSearch(OptunaSearch):
    """Ray's Optuna searcher, with exact bookkeeping.

    - Intermediate values are the trial's cross-validated scores by epoch (`epoch`, not
      Tune's iteration count, which a restored trial would shift).
    - A trial ASHA stopped is told as PRUNED, not COMPLETE. Tune does not pass the result
      that triggered the stop to `on_trial_result`, only to `on_trial_complete`: it is
      reported there, so that the trial's value (the last intermediate value, for a pruned
      trial) is its last reported score, never the epoch before.
    - Telling is idempotent: a trial already finished in the Optuna study (told before, or
      restored from storage) is left as it is, and an error while telling is logged, never
      turned into a failed trial.
    - Each Optuna trial carries the Tune trial id and the study folder as user attributes.
    - With several objectives (`--objective tasks`: the tasks' headline metrics, `metric` a
      list) Optuna takes no intermediate values, and a PRUNED trial no values
      (optuna/optuna#3450): a trial ASHA stopped is told PRUNED, its last values kept as the
      user attribute `last_values`; only a trial trained to the end is COMPLETE, so that
      `best_trials` holds finished configurations only.
    - No configuration is trained twice. A proposal whose parameters equal those of a trial
      already finished or running in this search is not handed to Tune: it is told the
      earlier trial's result (COMPLETE with its value, or PRUNED with its intermediate
      values, as Optuna's FAQ recipe for duplicated samples returns the earlier value), at
      once, or when a running original ends, and another proposal is asked for. After
      MAX_REPEATED_PROPOSALS repeats in a row the space holds nothing new: the search ends.
    """

    def __init__(self, *args, folder: str = "", budgets: Mapping[str, int] | None = None,
                 **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self._folder = folder
        self._repeats: dict[str, list] = {}  # Tune trial id -> repeated proposals of it
        self._budgets = dict(budgets or {})  # balancer -> its Optuna trials (one budget each)

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_REPEATED_PROPOSALS):
            if self._budgets:
                balancer = self._next_balancer()
                if balancer is None:
                    return Searcher.FINISHED
                # Optuna's own way to fix a parameter of its next trial: the rest of the
                # space (that balancer's fields, the shared ones) is sampled as usual.
                self._ot_study.enqueue_trial({"balancer": balancer}, skip_if_exists=False)
            params = super().suggest(trial_id)
            trial = self._ot_trials[trial_id]
            original = self._trained_as(trial)
            if original is None:
                storage = self._ot_study._storage
                storage.set_trial_user_attr(trial._trial_id, "tune_trial_id", trial_id)
                storage.set_trial_user_attr(trial._trial_id, "study_folder", self._folder)
                return params
            del self._ot_trials[trial_id]  # the next super().suggest asks a new one
            self._tell_repeat(trial, original)
        logger.warning(
            "the last %d proposals repeated configurations already trained: the search "
            "space holds nothing new, and the search ends here",
            MAX_REPEATED_PROPOSALS,
        )
        return Searcher.FINISHED

    def _next_balancer(self) -> str | None:
        """The balancer with the fewest Optuna trials so far (repeats count: a balancer with
        nothing left to vary spends its budget on them), or None when each has its budget.

        A trial counts when it is finished or this searcher handed it out (its state, saved
        with Tune's experiment, says which): one asked just before a driver was killed, after
        that state was last saved, stays RUNNING in optuna.db and never trains."""
        ours = {t.number for t in self._ot_trials.values()}
        ours |= {t.number for repeats in self._repeats.values() for t in repeats}
        counts = dict.fromkeys(self._budgets, 0)
        for trial in self._ot_study.get_trials(deepcopy=False):
            if trial.state.is_finished() or trial.number in ours:
                balancer = trial.params.get("balancer")
                if balancer in counts:
                    counts[balancer] += 1
        open_ = [b for b, n in counts.items() if n < self._budgets[b]]
        return min(open_, key=lambda b: counts[b]) if open_ else None

    def _trained_as(self, trial) -> str | None:
        """The Tune trial id of a trial of this search (running or finished) whose
        parameters equal `trial`'s, or None."""
        for tune_id, other in self._ot_trials.items():
            if other is not trial and other.params == trial.params:
                return tune_id
        return None

    def _tell_repeat(self, trial, original: str) -> None:
        """Tell a repeated proposal the original's result, or when the original ends."""
        self._ot_study._storage.set_trial_user_attr(trial._trial_id, REPEATS, original)
        logger.info("Optuna proposed trial %s's configuration again: not trained twice", original)
        if original in self._completed_trials or self._finished(self._ot_trials[original]):
            self._copy_outcome(self._ot_trials[original], trial)
        else:
            self._repeats.setdefault(original, []).append(trial)

    def _copy_outcome(self, original, repeat) -> None:
        import optuna

        frozen = self._ot_study._storage.get_trial(original._trial_id)
        states = optuna.trial.TrialState
        for step, value in sorted(frozen.intermediate_values.items()):
            repeat.report(value, step)
        if "last_values" in frozen.user_attrs:  # a pruned trial of several objectives
            storage = self._ot_study._storage
            storage.set_trial_user_attr(
                repeat._trial_id, "last_values", frozen.user_attrs["last_values"]
            )
        state = frozen.state if frozen.state.is_finished() else states.FAIL
        value = None
        if state == states.COMPLETE:
            value = frozen.values if self._objectives else frozen.value
        try:
            self._ot_study.tell(repeat, value, state=state)
        except Exception as exc:  # the study goes on; the repeat stays as Optuna has it
            logger.warning("Optuna could not record a repeated proposal: %s", exc)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or self._finished(ot_trial):
            self._completed_trials.add(trial_id)
            return
        self._report(trial_id, result or {})
        values = self._values(result or {})
        states = optuna.trial.TrialState
        if error:
            state, value = states.FAIL, None
        elif result and result.get("epoch", 0) < result.get("epochs", 0):
            state, value = states.PRUNED, None  # Optuna takes the last intermediate value
            if self._objectives and values is not None:
                storage = self._ot_study._storage
                storage.set_trial_user_attr(ot_trial._trial_id, "last_values", values)
        elif values is not None:
            state, value = states.COMPLETE, values if self._objectives else values[0]
        else:
            state, value = states.FAIL, None  # no score to tell
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # the study must go on; the trial stays as Optuna has it
            logger.warning("Optuna could not record trial %s as %s: %s", trial_id, state, exc)
        self._completed_trials.add(trial_id)
        for repeat in self._repeats.pop(trial_id, []):
            self._copy_outcome(ot_trial, repeat)

    @property
    def _objectives(self) -> bool:
        return isinstance(self.metric, list)

    def _values(self, result: dict) -> list[float] | None:
        """The result's value of every objective, or None unless all are finite."""
        names = self.metric if self._objectives else [self.metric]
        values = [result.get(name) for name in names]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    def _report(self, trial_id: str, result: dict) -> None:
        """Report the result's score at its epoch, once per epoch (with one objective:
        Optuna keeps no intermediate values of several)."""
        if self._objectives:
            return
        ot_trial = self._ot_trials.get(trial_id)
        score, epoch = result.get(self.metric), result.get("epoch")
        if ot_trial is None or score is None or epoch is None or not math.isfinite(score):
            return
        if trial_id in self._completed_trials or self._finished(ot_trial):
            return
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if int(epoch) not in frozen.intermediate_values:
            ot_trial.report(float(score), int(epoch))

    def _finished(self, ot_trial) -> bool:
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()


def optuna_search(
    name: str,
    folder: Path,
    seed: int,
    space: Mapping[str, Domain],
    base: TrainConfig,
    warm_start: Sequence[Mapping] = (),
    sampler: str = "tpe",
    objectives: Sequence[str] = (),
    budgets: Mapping[str, int] | None = None,
) -> PruneAwareOptunaSearch:
    """An Optuna searcher over the conditional `space`, whose study lives in
    FOLDER/optuna.db (SQLite). It maximises the cross-validated score, or with `objectives`
    (validation metrics) each of their cross-validated values, in their directions
    (mtl.METRIC_DIRECTIONS): a multi-objective study whose `best_trials` is its front.
    `budgets` (balancer -> trials): each balancer gets exactly its number of trials, in
    turn, the others of the space sampled for it (StudyConfig.trials_per_balancer).

    `optuna-dashboard sqlite:///FOLDER/optuna.db` and Optuna's plots open it, and a later
    study with the same name extends it.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live view says what happens
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'optuna.db').resolve()}")
    # Multivariate TPE models the parameters jointly (alpha and epochs interact); `group`
    # splits the trials by which parameters they have, so that a conditional space (alpha
    # only for GradNorm) is modelled per group instead of falling back to independent
    # sampling of every parameter.
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    metric, mode = "cv_score", "max"
    if objectives:
        metric = [f"cv_{m}" for m in objectives]
        mode = ["max" if METRIC_DIRECTIONS[m] > 0 else "min" for m in objectives]
    return PruneAwareOptunaSearch(
        space=ConditionalSpace(space, base),
        metric=metric,
        mode=mode,
        sampler=samplers[sampler](),
        study_name=name,
        storage=storage,
        # Enqueued in the Optuna study: the first trials evaluate these, in this order.
        points_to_evaluate=[dict(p) for p in warm_start] or None,
        folder=str(folder.resolve()),
        budgets=budgets,
    )


def is_baseline(config: Mapping, baselines: Sequence[Mapping]) -> bool:
    """Whether a trial's configuration is one of the single-task baselines."""
    return any(config.get("tasks") == point["tasks"] for point in baselines)


class WithBaselines(Searcher):
    """A searcher whose first trials are the study's single-task baselines, then the wrapped
    searcher's proposals. The baselines' results are never passed on: Optuna models the
    search space, which a baseline is not a point of."""

    def __init__(self, searcher: Searcher, baselines: Sequence[Mapping]):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.baselines = [dict(b) for b in baselines]
        self.given: list[str] = []  # the Tune trial ids the baselines went to, in order

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.given) < len(self.baselines):
            self.given.append(trial_id)
            return dict(self.baselines[len(self.given) - 1])
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.given:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self.given:
            self.searcher.on_trial_complete(trial_id, result, error)

    # Tune saves a wrapper's state (as ConcurrencyLimiter's) apart from the searcher it wraps,
    # which saves itself.
    def get_state(self) -> dict:
        return {"baselines": self.baselines, "given": list(self.given)}

    def set_state(self, state: dict) -> None:
        self.baselines, self.given = state["baselines"], list(state["given"])


class WarmStartASHA(ASHAScheduler):
    """ASHA that trains the warm-start configurations to the end.

    Their scores still fill ASHA's rungs, so the searched trials are stopped against them;
    only the decision to stop them is overruled. They are what the search is compared with
    (the original study's six, the demo's 2 x 2): a study that pruned them could not say
    whether the search found better, and how many configurations complete would be left to
    the order in which trials reach a rung.

    The single-task baselines are in no bracket: never stopped, and their scores (undefined,
    see the module's docstring) never compared.
    """

    def __init__(
        self, *args, warm_start: Sequence[Mapping] = (), baselines: Sequence[Mapping] = (),
        **kwargs,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self._warm_start = [dict(point) for point in warm_start]
        self._baselines = [dict(point) for point in baselines]

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_baseline(trial.config, self._baselines):  # in no bracket, no rung
            super().on_trial_add(tune_controller, trial)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not is_baseline(trial.config, self._baselines):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if not is_baseline(trial.config, self._baselines):
            super().on_trial_remove(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_baseline(trial.config, self._baselines):
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        unfinished = result.get("epoch", 0) < result.get("epochs", 0)
        if decision == TrialScheduler.STOP and unfinished and self._is_warm_start(trial.config):
            return TrialScheduler.CONTINUE
        return decision

    def _is_warm_start(self, config: Mapping) -> bool:
        return any(all(config.get(k) == v for k, v in p.items()) for p in self._warm_start)


def asha(
    max_epochs: int,
    grace_period: int,
    reduction_factor: float,
    warm_start: Sequence[Mapping] = (),
    baselines: Sequence[Mapping] = (),
) -> ASHAScheduler:
    """ASHA by epoch on the metric of the TuneConfig (the cross-validated score); the
    `warm_start` configurations are never stopped, the `baselines` never seen (WarmStartASHA)."""
    return WarmStartASHA(
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        warm_start=warm_start,
        baselines=baselines,
    )


# ------------------------------------------------------------------------- trials at once
# A study's `max_concurrent` is a run setting: a resumed study runs with the new one. Tune
# restores a searcher's saved state, its concurrency limit included, over the one it is given,
# and Tune's own `max_concurrent_trials` applies to a Searcher only (not to a grid's
# generator): the study sets the limit itself, and keeps it through a restore.


class RunConcurrency(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter whose limit is this run's, not the one saved with the study."""

    def set_state(self, state: dict) -> None:
        limit = self.max_concurrent
        super().set_state(state)
        self.max_concurrent = limit


class Grid(BasicVariantGenerator):
    """Tune's generator of a grid's points, whose concurrency limit is this run's."""

    def set_state(self, state: dict) -> None:
        limit = self._max_concurrent
        super().set_state(state)
        self._max_concurrent = limit


def grid_search(points: Sequence[Mapping], max_concurrent: int) -> Grid:
    """The grid's points, evaluated in order, at most `max_concurrent` at once (0: no limit)."""
    return Grid(points_to_evaluate=[dict(p) for p in points], max_concurrent=max_concurrent)


def limit_concurrency(search_alg, max_concurrent: int):
    """`search_alg` running at most `max_concurrent` trials at once (0: no limit), for a new
    study or the one restored from its experiment (whatever limit that one ran with)."""
    if isinstance(search_alg, Grid):
        search_alg._max_concurrent = max_concurrent
        return search_alg
    searcher = search_alg.searcher if isinstance(search_alg, ConcurrencyLimiter) else search_alg
    return RunConcurrency(searcher, max_concurrent) if max_concurrent else searcher
