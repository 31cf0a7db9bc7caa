"""Running a prepared study (study/driver/prepare.py): its Tuner (Optuna or a grid, ASHA),
and what follows the trials (the tables compacted, checkpoints kept, the fold-paired
statistics, the test estimate).

`run_study(request)` is the whole of a study, prepared and run; the command line
(study/run.py) and the Python API (study/api.py) are adapters around `prepare` and `execute`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pandas as pd
from rich.console import Console

from study.driver.guard import StudyInterrupted, graceful_stop
from study.driver.prepare import PreparedStudy, StudyRequest, prepare
from study.results.files import TABLES
from study.results.rebuild import rebuild
from study.spec.presets import StudyConfig
from study.spec.record import run_settings, study_record

console = Console()


def build_tuner(prepared: PreparedStudy):
    """The Tuner of the study (restored from EXPERIMENT/tune when resuming); tables and the
    Optuna database go to the study folder."""
    from ray import tune

    from study.driver.callbacks import LiveView, ResultsWriter
    from study.driver.checkpoints import CheckpointKeeper
    from study.driver.folds import TrialSetup
    from study.driver.search import (
        WithBaselines,
        asha,
        grid_search,
        limit_concurrency,
        optuna_search,
    )
    from study.driver.trial import run_trial
    from study.provenance import code_version

    study, folder, experiment = prepared.study, prepared.folder, prepared.experiment
    placement = prepared.placement
    setup = TrialSetup(
        base=study.train,
        folds=study.folds,
        score_metrics=study.score_metrics,
        store_hash=prepared.store_hash,
        fold_log=experiment,
        actor_options=placement.actor_options,
        threads=placement.threads,
        offload=placement.offload,
        # The driver's, on every trial: what a node's own copy says may differ or be
        # missing (a job's uploaded working_dir has no .git).
        code=code_version(),
        trainer=prepared.trainer,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), placement.resources
    )
    # The tracker callbacks are not given to the Tuner: it pickles its callbacks into
    # tuner.pkl, and a study resumed without --tracker (or without the package) would then
    # need them. They are set on the Tuner afterwards, as on a restored one (_set_callbacks).
    callbacks = [ResultsWriter(study, folder, experiment), CheckpointKeeper(study, experiment)]
    callbacks += [] if prepared.verbose else [LiveView(study)]
    this_run = callbacks
    if prepared.trackers:
        from study.trackers.callbacks import tracker_callbacks

        this_run = callbacks + tracker_callbacks(prepared.trackers, study, folder)
    if prepared.resume:
        tuner = tune.Tuner.restore(
            f"{experiment}/tune", trainable, resume_unfinished=True, resume_errored=False
        )
        # This run's limit on trials at once (a run setting; see study/driver/search.py).
        config = tuner._local_tuner._tune_config
        config.search_alg = limit_concurrency(config.search_alg, study.max_concurrent)
        return _set_callbacks(tuner, this_run)
    if study.space:
        # The space is Optuna's (define-by-run, conditional); Tune's stays empty.
        search_alg = optuna_search(
            study.name, folder, study.seed, study.space, study.train, study.warm_start,
            study.sampler, study.objectives, study.balancer_budgets,
        )  # fmt: skip
        if study.baseline_points:
            search_alg = WithBaselines(search_alg, study.baseline_points)
        param_space = {}
    else:
        # Each configuration is one point to evaluate; every point names every varying field
        # (the base value where it has none), so nothing is ever sampled at random.
        keys = study.varying
        base = dataclasses.asdict(study.train)
        configurations = (*(study.configurations or ({},)), *study.baseline_points)
        points = [{k: c.get(k, base[k]) for k in keys} for c in configurations]
        for point in points:  # tasks as --set writes them: Tune would take a tuple apart
            if not isinstance(point.get("tasks", ""), str):
                point["tasks"] = ",".join(point["tasks"])
        param_space = {k: tune.choice([p[k] for p in points]) for k in keys}
        search_alg = grid_search(points, study.max_concurrent)
    scheduler = (
        asha(
            study.max_epochs,
            study.grace_period,
            study.reduction_factor,
            study.warm_start,
            study.baseline_points,
        )  # fmt: skip
        if study.scheduler == "asha"
        else None
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="cv_score",
            mode="max",
            search_alg=limit_concurrency(search_alg, study.max_concurrent),
            scheduler=scheduler,
            num_samples=study.num_trials,
            # A finished trial's process runs the next one: no new process importing torch
            # and smp (seconds each) per trial. A stopped trial still busy in its epoch is
            # not reused; Tune starts a new process then.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=experiment,
            verbose=2 if prepared.verbose else 0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            # Tune keeps every checkpoint; CheckpointKeeper drops them (its num_to_keep would
            # force a save of the whole experiment state at every few checkpoints: a cost that
            # grows with the study, docs/performance.md). Tune saves that state every 10 s or
            # more; a killed driver's trials resume from the checkpoints it names.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    return _set_callbacks(tuner, this_run)


def _set_callbacks(tuner, callbacks: list):
    """The Tuner with this run's callbacks: a restored one would otherwise run those pickled by
    the first run, and trackers are this run's choice (--tracker)."""
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def run_study(request: StudyRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole of a study: prepared (every check once), run, finished; its epochs and
    trials tables. Raises StudyInterrupted (after the tables are written) when a signal
    stopped it."""
    with prepare(request) as prepared:
        return execute(prepared)


def execute(prepared: PreparedStudy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or continue) the prepared study; its epochs and trials tables.

    Tables, study.json and optuna.db go to RESULTS/NAME; Ray's experiment to
    EXPERIMENT/tune. Raises StudyInterrupted, after the tables are written, when SIGINT or
    SIGTERM stopped the trials.
    """
    from study.driver.checkpoints import drop_checkpoints

    if not prepared.verbose:
        # Ray's newer console output ignores verbose=0; the legacy reporter honours it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Every checkpoint syncs the experiment state on purpose (see build_tuner).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    study, folder, experiment = prepared.study, prepared.folder, prepared.experiment
    write_study_file(prepared)
    (folder / "run.json").write_text(json.dumps({"experiment": f"{experiment}/tune"}) + "\n")
    if prepared.resume and any((folder / f"{t}.parquet").is_file() for t in TABLES):
        rebuild(folder)  # tables in one file each, as an earlier version wrote them
    with graceful_stop() as received:
        build_tuner(prepared).fit()
    # Written again here, from the experiment and the fold logs, and compacted: a stopped
    # Tune may end without telling the callbacks about the trials it stopped.
    tables = rebuild(folder)
    epochs, trials = tables.epochs, tables.trials
    unfinished = int((trials.status == "unfinished").sum()) if len(trials) else 0
    if received or unfinished:  # only a signal stops fit() with trials left unfinished
        raise StudyInterrupted(received[0] if received else signal.SIGINT, unfinished)
    drop_checkpoints(f"{experiment}/tune", trials, study.keep_checkpoints)
    finish(study, folder, epochs, trials)
    write_study_file(prepared, ended=True)
    return epochs, trials


def write_study_file(prepared: PreparedStudy, ended: bool = False) -> None:
    """study.json: the study's configuration, and its provenance (the data, and one record per
    run of the driver: command, code and library versions, run settings, where it ran and
    how it was placed, start and end times). A resumed study adds a run; what defines it
    never changes (prepare.check_resumable), and its run settings at the top level are this
    run's, so that `--config study.json` runs it as it ran last."""
    from study.provenance import command, environment, now

    study, path = prepared.study, prepared.folder / "study.json"
    record = json.loads(path.read_text()) if prepared.resume or ended else None
    if record is None:
        record = study_record(study)
        record["provenance"] = {
            "store_hash": prepared.store_hash, "store_path": study.train.data, "runs": [],
        }  # fmt: skip
    runs = record["provenance"]["runs"]
    if ended:
        runs[-1]["ended"] = now()
    else:
        this_run = run_settings(study)
        for key, value in this_run.items():
            if key.startswith("train."):
                record["train"][key.removeprefix("train.")] = value
            else:
                record[key] = value
        settings = {
            **this_run,
            "storage": prepared.experiment,
            "trackers": list(prepared.trackers),
            "placement": prepared.placement.plan.describe(),
            "ray_address": _ray_address(),
        }
        runs.append({
            "command": command(), "started": now(), "ended": None, **environment(),
            "settings": settings,
        })  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _ray_address() -> str | None:
    """The address of the Ray cluster this driver is connected to (None: not connected)."""
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def finish(study: StudyConfig, folder: Path, epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """After the trials: the fold-paired statistics (stats.parquet, stats.csv), the per-task
    front (front.parquet) and, with a test set, the chosen configuration's test estimate
    (test.parquet)."""
    from mtl import TASKS, write_parquet
    from study.driver.holdout import evaluate_test_set
    from study.stats import compare_to_best, write_stats
    from study.stats.front import task_front
    from study.stats.selection import study_per_fold, task_counts

    # The single-task baselines have no score: they are compared in Δm, not with the others.
    per_fold = study_per_fold(epochs, trials[task_counts(trials) == len(TASKS)])
    if len(per_fold):
        stats = compare_to_best(per_fold, folds_per_repeat=study.train.num_folds)
        write_stats(stats, folder, study.name)
        front = task_front(per_fold, study.task_metrics, folds_per_repeat=study.train.num_folds)
        write_parquet(front, folder / "front.parquet", "front", study.name)
    (folder / "test.parquet").unlink(missing_ok=True)  # never a stale one beside new trials
    if not study.train.held_out:
        return
    if not ((trials.status == "completed") & trials.cv_score.notna()).any():
        console.print("no completed trial with a score: no test estimate")
        return
    with console.status("test estimate: the best configuration on the held-out patients"):
        try:
            evaluate_test_set(folder, study.name, epochs, trials, study.repeats, study.seed)
        except FileNotFoundError as error:  # e.g. the best trial's checkpoint was deleted
            console.print(f"[yellow]no test estimate:[/yellow] {error}")
