"""The searcher's bookkeeping without Ray: the conditional space, telling Optuna exactly and
idempotently, the warm start, and the combinations a study refuses."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from ray.tune.search import Searcher

from mtl import parse_overrides, tiny
from study.driver.search import (
    MAX_REPEATED_PROPOSALS,
    REPEATS,
    grid_search,
    limit_concurrency,
    optuna_search,
)
from study.spec.presets import StudyConfig, apply_overrides, get_preset, smoke
from study.spec.space import Choice, IntRange, LogUniform

SPACE = {
    "balancer": Choice(("equal", "gradnorm", "uncertainty", "dwa")),
    "alpha": LogUniform(0.01, 3.0),
    "balancer_lr": LogUniform(1e-4, 0.1),
    "seg_loss": Choice(("dice", "bce")),
}
READS = {"equal": set(), "gradnorm": {"alpha", "balancer_lr"}, "uncertainty": {"balancer_lr"},
         "dwa": set()}  # fmt: skip


def _searcher(tmp_path, warm_start=(), space=SPACE, sampler="tpe"):
    return optuna_search("s", tmp_path, 0, space, tiny(), warm_start, sampler)


def _study(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_balancer_s_fields_exist_only_for_the_balancers_that_read_them(tmp_path, sampler):
    searcher = _searcher(tmp_path, sampler=sampler)
    numbers = {}
    for i in range(24):
        config = searcher.suggest(f"t{i}")
        numbers[config["optuna_trial"]] = f"t{i}"
        searcher.on_trial_complete(f"t{i}", {"cv_score": 0.5, "epoch": 1, "epochs": 1})
        searched = set(config) - {"balancer", "seg_loss", "optuna_trial"}
        assert searched == READS[config["balancer"]], config
    trials = _study(tmp_path).trials
    assert {t.params["balancer"] for t in trials} == set(READS)  # every branch drawn
    trained = [t for t in trials if REPEATS not in t.user_attrs]
    assert len(trained) == 24
    for trial in trained:
        assert set(trial.params) - {"balancer", "seg_loss"} == READS[trial.params["balancer"]]
        assert trial.user_attrs["tune_trial_id"] == numbers[trial.number]
        assert trial.user_attrs["study_folder"] == str(tmp_path.resolve())


def test_values_are_the_last_score_and_telling_is_idempotent(tmp_path):
    searcher = _searcher(tmp_path)
    for trial_id in ("done", "stopped", "failed"):
        assert searcher.suggest(trial_id)["optuna_trial"] == len(searcher._ot_trials) - 1
    for epoch, score in ((1, 0.5), (2, 0.6)):
        for trial_id in ("done", "stopped"):
            searcher.on_trial_result(trial_id, {"cv_score": score, "epoch": epoch, "epochs": 3})
    searcher.on_trial_result("done", {"cv_score": 0.7, "epoch": 3, "epochs": 3})
    searcher.on_trial_complete("done", {"cv_score": 0.7, "epoch": 3, "epochs": 3})
    # ASHA's stop: Tune passes the result that triggered it to on_trial_complete only.
    searcher.on_trial_complete("stopped", {"cv_score": 0.55, "epoch": 3, "epochs": 4})
    searcher.on_trial_complete("failed", None, error=True)
    # Told again (a restored searcher, a second completion): nothing changes.
    searcher.on_trial_complete("stopped", {"cv_score": 0.9, "epoch": 4, "epochs": 4})
    searcher.on_trial_complete("stopped", None, error=True)
    searcher.on_trial_result("stopped", {"cv_score": 0.9, "epoch": 4, "epochs": 4})
    trials = {t.user_attrs["tune_trial_id"]: t for t in _study(tmp_path).trials}
    done, stopped, failed = trials["done"], trials["stopped"], trials["failed"]
    assert done.state.name == "COMPLETE" and done.value == 0.7
    assert done.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    assert stopped.state.name == "PRUNED" and stopped.value == 0.55
    assert stopped.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.55}
    assert failed.state.name == "FAIL"


def test_an_optuna_error_while_telling_leaves_the_trial_as_it_was(tmp_path, monkeypatch):
    searcher = _searcher(tmp_path)
    searcher.suggest("t")
    searcher.on_trial_result("t", {"cv_score": 0.5, "epoch": 1, "epochs": 2})

    def broken(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(searcher._ot_study, "tell", broken)
    searcher.on_trial_complete("t", {"cv_score": 0.5, "epoch": 1, "epochs": 2})  # no raise
    (trial,) = _study(tmp_path).trials
    assert trial.state.name == "RUNNING"  # never FAIL for a trial that did not fail


def test_a_seeded_search_evaluates_the_given_configurations_first(tmp_path):
    points = [
        {"balancer": "equal", "seg_loss": "bce"},
        {"balancer": "gradnorm", "seg_loss": "dice", "alpha": 0.06, "balancer_lr": 1e-4},
    ]
    searcher = _searcher(tmp_path, warm_start=points)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    for config, point in zip(first, points, strict=False):
        assert {k: v for k, v in config.items() if k != "optuna_trial"} == point


def test_the_search_preset_starts_from_the_original_six():
    search = get_preset("search")
    assert len(search.warm_start) == 6
    assert {(p["seg_loss"], p["epochs"], p["alpha"]) for p in search.warm_start} == {
        (c["seg_loss"], c["epochs"], c["alpha"]) for c in get_preset("paper").configurations
    }
    assert all(p["balancer"] == "gradnorm" for p in search.warm_start)
    # Fixing the balancer keeps the points, less the fields the balancer does not read.
    equal = apply_overrides(search, parse_overrides(["balancer=equal"]))
    assert all(set(p) == {"seg_loss", "epochs"} for p in equal.warm_start)


def test_asha_with_searched_epochs_under_a_cosine_schedule_is_refused():
    base = dataclasses.replace(smoke(), configurations=())
    fair = dict(space={"epochs": IntRange(2, 4, 2)}, num_samples=2, scheduler="asha")
    StudyConfig(**{**dataclasses.asdict(base), "train": base.train, **fair,
                   "synthetic": base.synthetic})  # fmt: skip
    for unfair in (
        {"train": base.train.replace(lr_schedule="cosine")},
        {"train": base.train,
         "space": {**fair["space"], "lr_schedule": Choice(("constant", "cosine"))}},
    ):  # fmt: skip
        with pytest.raises(ValueError, match="scheduler='asha' with a searched epochs and "
                           "lr_schedule='cosine'.*scheduler='none'.*--set epochs=N.*"
                           "lr_schedule=constant"):  # fmt: skip
            StudyConfig(**{**dataclasses.asdict(base), **fair, **unfair,
                           "synthetic": base.synthetic})  # fmt: skip
    # The demo (fixed epochs, cosine) and the search preset (constant) are valid.
    assert get_preset("demo").train.lr_schedule == "cosine"
    assert get_preset("search").train.lr_schedule == "constant"


# --- no configuration trained twice -----------------------------------------------------------

LOSSES = {"seg_loss": Choice(("dice", "bce"))}  # with the base's `equal`: two configurations


def test_a_proposal_of_a_finished_configuration_is_told_its_result_not_trained(tmp_path):
    searcher = _searcher(tmp_path, space=LOSSES, sampler="random")
    first = searcher.suggest("a")
    second = searcher.suggest("b")
    if first["seg_loss"] == second["seg_loss"]:
        pytest.fail("the second proposal repeats the first; it should have been skipped")
    searcher.on_trial_complete("a", {"cv_score": 0.6, "epoch": 2, "epochs": 2})
    searcher.on_trial_result("b", {"cv_score": 0.4, "epoch": 1, "epochs": 2})
    searcher.on_trial_complete("b", {"cv_score": 0.45, "epoch": 1, "epochs": 2})  # pruned
    # Both configurations are trained: every further proposal repeats one, and the search
    # ends instead of training either again.
    assert searcher.suggest("c") == Searcher.FINISHED
    assert set(searcher._ot_trials) == {"a", "b"}
    trials = _study(tmp_path).trials
    original = {t.user_attrs["tune_trial_id"]: t for t in trials if "tune_trial_id" in t.user_attrs}
    repeats = [t for t in trials if REPEATS in t.user_attrs]
    assert len(repeats) == MAX_REPEATED_PROPOSALS and len(trials) == 2 + len(repeats)
    for repeat in repeats:
        source = original[repeat.user_attrs[REPEATS]]
        assert repeat.params == source.params
        assert (repeat.state, repeat.value) == (source.state, source.value)
        assert repeat.intermediate_values == source.intermediate_values
    assert {r.state.name for r in repeats} == {"COMPLETE", "PRUNED"}


def test_a_proposal_of_a_running_configuration_is_told_when_that_trial_ends(tmp_path):
    searcher = _searcher(tmp_path, space=LOSSES, sampler="random")
    searcher.suggest("a"), searcher.suggest("b")
    assert searcher.suggest("c") == Searcher.FINISHED  # both still running
    repeats = [t for t in _study(tmp_path).trials if REPEATS in t.user_attrs]
    assert all(t.state.name == "RUNNING" for t in repeats)
    searcher.on_trial_complete("a", {"cv_score": 0.6, "epoch": 2, "epochs": 2})
    searcher.on_trial_complete("b", None, error=True)
    told = {t.user_attrs[REPEATS]: t for t in _study(tmp_path).trials if REPEATS in t.user_attrs}
    by_source = {}
    for t in _study(tmp_path).trials:
        if REPEATS in t.user_attrs:
            by_source.setdefault(t.user_attrs[REPEATS], set()).add((t.state.name, t.value))
    assert by_source["a"] == {("COMPLETE", 0.6)}
    assert by_source.get("b", {("FAIL", None)}) == {("FAIL", None)}
    assert told


def test_a_grid_or_warm_start_naming_a_configuration_twice_is_refused():
    with pytest.raises(
        ValueError, match=r"configurations\[0\] and configurations\[2\] are the same"
    ):
        dataclasses.replace(
            smoke(),
            configurations=(
                {"seg_loss": "dice"},
                {"seg_loss": "bce"},
                {"seg_loss": "dice", "alpha": 0.3},  # alpha means nothing to `equal`
            ),
        )
    demo = get_preset("demo")
    with pytest.raises(ValueError, match=r"warm_start\[0\] and warm_start\[4\]"):
        dataclasses.replace(demo, warm_start=(*demo.warm_start, demo.warm_start[0]))


# --- trials at once: a run setting ------------------------------------------------------------


def test_a_restored_search_runs_with_this_run_s_concurrency(tmp_path):
    """Tune restores a searcher's saved state over the one it is given, the first run's
    concurrency limit included: the study's limit is this run's."""
    first = limit_concurrency(_searcher(tmp_path), 4)
    saved = first.get_state()
    resumed = limit_concurrency(first, 1)  # what build_tuner does with the restored one
    resumed.set_state(saved)  # what Tune's restore does next
    assert resumed.max_concurrent == 1 and resumed.searcher is first.searcher
    assert limit_concurrency(first, 0) is first.searcher  # 0: no limit

    grid = grid_search([{"seg_loss": "dice"}, {"seg_loss": "bce"}], 3)
    saved = grid.get_state()
    grid = limit_concurrency(grid, 1)
    grid.set_state(saved)
    assert grid._max_concurrent == 1


def test_a_restored_search_does_not_hand_out_its_baselines_again(tmp_path):
    """--baselines in a search: the baselines go to the first trials, Optuna never hears of
    them, and a study saved and restored as Tune does it (SearchGenerator's save_to_dir and
    restore_from_dir, which walk the wrappers) goes on with Optuna's proposals."""
    from ray.tune.search import SearchGenerator

    from study.driver.search import WithBaselines

    baselines = ({"tasks": "seg"}, {"tasks": "pattern"}, {"tasks": "intensity"})

    def searcher(folder):
        chain = limit_concurrency(WithBaselines(_searcher(folder), baselines), 4)
        return SearchGenerator(chain)

    first = searcher(tmp_path)
    chain = first.searcher
    assert [chain.suggest(f"t{k}") for k in range(2)] == list(baselines[:2])
    chain.on_trial_complete("t0", {"cv_score": float("nan"), "epoch": 1, "epochs": 1})
    assert chain.suggest("t2") == baselines[2]
    first.save_to_dir(str(tmp_path), session_str="first")

    restored = searcher(tmp_path)
    restored.restore_from_dir(str(tmp_path))
    proposal = restored.searcher.suggest("t3")
    assert "tasks" not in proposal and "optuna_trial" in proposal  # Optuna's, not a baseline
    assert len(_study(tmp_path).trials) == 1  # only that proposal: no baseline was told
