"""Assembling and running a study's Tuner: the data and resumption checks before Ray, the
placement of fold workers, the Tuner itself (Optuna or a grid, ASHA), and what follows the
trials (checkpoints kept, the fold-paired statistics, the test estimate).

`run_study` is the whole of it on a Ray instance already started; `python -m study.run`
(study/run.py) is the command line around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from mtl import build_synthetic_store, holdout_patients, open_store, split_label, split_rows
from study.guard import StudyInterrupted, check_results_folder, graceful_stop, study_lock
from study.placement import Placement
from study.presets import StudyConfig
from study.record import run_settings, study_from_record, study_identity, study_record
from study.results import rebuild
from study.storage import fetch_store, read_store_hash, store_cache

console = Console()


def prepare_data(study: StudyConfig, results: Path) -> StudyConfig:
    """Make sure the study's patch store exists and fits every configuration, before Ray."""
    if study.train.data:
        # A URI stays the study's data: every node fetches (and checks) its own copy.
        store = open_store(fetch_store(study.train.data, store_cache()))
    else:
        spec = study.synthetic
        name = f"synthetic-{spec.size}px-{spec.patients}p-{spec.specimens}s-seed{spec.seed}"
        path = (results / "data" / name).resolve()
        try:
            store = open_store(path)
        except FileNotFoundError:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"generating {path}", total=spec.num_patches)
                store = build_synthetic_store(
                    path, spec, progress=lambda n: progress.advance(task, n)
                )
        study = dataclasses.replace(study, train=study.train.replace(data=str(path)))
    if study.test_patients:
        # Chosen once, before any trial, and written into study.json as patient ids: every
        # trial (and a resumed study) holds out the same patients.
        held_out = holdout_patients(store.index, study.test_patients, study.train.fold_seed)
        if study.train.held_out and tuple(study.train.held_out) != held_out:
            raise ValueError(
                "test_patients and held_out both choose a test set, and they differ: give one"
            )
        study = dataclasses.replace(study, train=study.train.replace(held_out=held_out))
    unknown = set(study.train.held_out) - set(store.index.patient)
    if unknown:
        raise ValueError(f"held_out: patients {sorted(unknown)[:5]} are not in {store.path}")
    for config in study.train_configs():
        if store.size != config.image_size:
            raise ValueError(
                f"image_size is {config.image_size} but {store.path} holds {store.size} px patches"
            )
        for label in study.folds:
            repeat, fold = split_label(label)
            split = config.replace(fold_seed=config.fold_seed + repeat)
            train, val = split_rows(split, store.index, fold)
            if not len(val) or len(train) < config.batch_size:
                raise ValueError(f"fold {label} of {store.path} is too small to train or validate")
    return study


def check_resumable(study: StudyConfig, folder: Path, resume: bool) -> bool:
    """Whether FOLDER holds this study to continue. Refuses one that is another study: a field
    that defines it differs (named), or its data has another content hash. How it runs
    (resources, concurrency, storage, device: presets.RUN_SETTINGS) may change."""
    saved = folder / "study.json"
    if not saved.exists():
        if resume:
            raise ValueError(f"--resume: there is no study in {folder}")
        return False
    mine = study_record(study)
    theirs = json.loads(saved.read_text())
    provenance = theirs.get("provenance") or {}
    # A file written before the domains were tagged compares equal to the new form; one this
    # version cannot read is compared as it is.
    with contextlib.suppress(ValueError):
        theirs = study_record(study_from_record(theirs, source=str(saved)))
    mine, theirs = study_identity(mine), study_identity(theirs)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        first = differ[0]
        raise ValueError(
            f"{folder} holds another study: {', '.join(differ)} differ ({first} is "
            f"{theirs.get(first)!r} there, {mine.get(first)!r} here); choose a new --name, "
            "or rerun with the same study to resume it (resources, concurrency, storage and "
            "device may change)"
        )
    recorded = provenance.get("store_hash")
    found = read_store_hash(study.train.data) if recorded and study.train.data else recorded
    if found != recorded:
        raise ValueError(
            f"{folder} holds a study of the data with content hash {recorded}, but "
            f"{study.train.data} has {found}; choose a new --name, or give the study's own data"
        )
    return True


class TrialPlacement(NamedTuple):
    """What fold_placement decided: a trial's Tune resources, its fold actors' options (None:
    the folds run in the trial's process), torch threads per fold, whether idle folds' states
    wait in host memory, and the plan itself (study/placement.py)."""

    resources: object
    actor_options: dict | None
    threads: int
    offload: bool
    plan: Placement


def fold_placement(study: StudyConfig) -> TrialPlacement:
    """Where a trial's folds run, planned on the cluster Ray is connected to
    (study/placement.py) with the fold workers' GPU memory (study/memory.py), and said in the
    log with its reason.

    Raises PlacementError at once when no trial could ever be placed.
    """
    from ray import tune

    from study.memory import fold_memory
    from study.placement import cluster_nodes, plan_placement

    nodes = cluster_nodes()
    memory = None
    if study.gpus_per_fold == "auto" and any(n.gpus >= 1 for n in nodes):
        memory = fold_memory(study, [i for n in nodes for i in n.cuda_nodes])
    plan = plan_placement(
        nodes,
        len(study.folds),
        gpus_per_fold=study.gpus_per_fold,
        cpus_per_fold=study.cpus_per_fold,
        cpus_per_trial=study.cpus_per_trial,
        fold_memory_gib=memory.worker_gib if memory else None,
        resident_gib=memory.resident_gib if memory else None,
        memory_source=memory.source if memory else "",
        fold_resources=study.fold_resources,
    )
    trials = min(plan.trials_at_once, study.max_concurrent or study.num_trials, study.num_trials)
    console.print(f"placement: {plan.describe().rsplit(';', 1)[0]}; {trials} trial(s) at once")
    if memory is not None and memory.worker_gib is None:
        console.print(
            "fold worker GPU memory: not measured (no stored figure for this model and no "
            "CUDA GPU to probe); workers are not limited by memory: give --fold-memory-gib, "
            "or run bash bench/gpu_check.sh on the GPU machine"
        )
    if not plan.actors:
        resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
        return TrialPlacement(resources, None, plan.threads, plan.offload, plan)
    # An empty head bundle: the trial itself only coordinates; bundle i is fold i's.
    resources = tune.PlacementGroupFactory(
        [{}] + [dict(plan.bundle)] * len(study.folds), strategy=study.fold_strategy
    )
    options = {"num_cpus": plan.cpus_per_fold, "num_gpus": plan.gpus_per_fold}
    if study.fold_resources:
        options["resources"] = dict(study.fold_resources)
    return TrialPlacement(resources, options, plan.threads, False, plan)


def build_tuner(
    study: StudyConfig,
    folder: Path,
    experiment: str,
    *,
    resume: bool,
    verbose: bool,
    trainer: type | None = None,
    placement: tuple | None = None,
    trackers: Sequence[str] = (),
):
    """The Tuner of the study (restored from EXPERIMENT/tune when resuming); tables and the
    Optuna database go to FOLDER. `placement`: fold_placement's answer, if already asked;
    `trackers`: study/trackers.py's names, checked."""
    from ray import tune

    from study.callbacks import LiveView, ResultsWriter
    from study.checkpoints import CheckpointKeeper
    from study.provenance import code_version
    from study.search import asha, grid_search, limit_concurrency, optuna_search
    from study.trial import run_trial

    resources, actor_options, threads, offload, _ = placement or fold_placement(study)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=study.train,
            folds=study.folds,
            score_metrics=study.score_metrics,
            store_hash=open_store(fetch_store(study.train.data, store_cache())).content_hash,
            actor_options=actor_options,
            threads=threads,
            offload=offload,
            fold_log=experiment,
            # The driver's, on every trial: what a node's own copy says may differ or be
            # missing (a job's uploaded working_dir has no .git).
            code=code_version(),
            **({"trainer": trainer} if trainer else {}),
        ),
        resources,
    )
    # The tracker callbacks are not given to the Tuner: it pickles its callbacks into
    # tuner.pkl, and a study resumed without --tracker (or without the package) would then
    # need them. They are set on the Tuner afterwards, as on a restored one (_set_callbacks).
    callbacks = [ResultsWriter(study, folder, experiment), CheckpointKeeper(study, experiment)]
    callbacks += [] if verbose else [LiveView(study)]
    this_run = callbacks
    if trackers:
        from study.tracker_callbacks import tracker_callbacks

        this_run = callbacks + tracker_callbacks(trackers, study, folder)
    if resume:
        tuner = tune.Tuner.restore(
            f"{experiment}/tune", trainable, resume_unfinished=True, resume_errored=False
        )
        # This run's limit on trials at once (a run setting; see study/search.py).
        config = tuner._local_tuner._tune_config
        config.search_alg = limit_concurrency(config.search_alg, study.max_concurrent)
        return _set_callbacks(tuner, this_run)
    if study.space:
        # The space is Optuna's (define-by-run, conditional); Tune's stays empty.
        search_alg = optuna_search(
            study.name, folder, study.seed, study.space, study.train, study.warm_start,
            study.sampler,
        )  # fmt: skip
        param_space = {}
    else:
        # Each configuration is one point to evaluate; every point names every varying field
        # (the base value where it has none), so nothing is ever sampled at random.
        keys = study.varying
        base = dataclasses.asdict(study.train)
        points = [{k: c.get(k, base[k]) for k in keys} for c in study.configurations] or [{}]
        param_space = {k: tune.choice([p[k] for p in points]) for k in keys}
        search_alg = grid_search(points, study.max_concurrent)
    scheduler = (
        asha(study.max_epochs, study.grace_period, study.reduction_factor, study.warm_start)
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
            verbose=2 if verbose else 0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            # The latest two checkpoints: a trial whose latest fails to load (a truncated
            # file) resumes from the one before (trial.restore). Every new one also syncs the
            # experiment state, so a killed driver resumes from where its trials really were.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return _set_callbacks(tuner, this_run)


def _set_callbacks(tuner, callbacks: list):
    """The Tuner with this run's callbacks: a restored one would otherwise run those pickled by
    the first run, and trackers are this run's choice (--tracker)."""
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def run_study(
    study: StudyConfig,
    results: Path,
    *,
    resume: bool = False,
    verbose: bool = False,
    trainer: type | None = None,
    storage: str | None = None,
    trackers: Sequence[str] = (),
):
    """Run (or continue) the study on the Ray instance already initialised; return its tables.

    Tables, study.json and optuna.db go to RESULTS/NAME; Ray's experiment to STORAGE/NAME/tune
    (default RESULTS/NAME/tune). `trainer` replaces mtl.train.FoldTrainer (tests use
    scripted stand-ins). `trackers`: "mlflow", "wandb" (study/trackers.py), one run per trial.
    """
    if not verbose:
        # Ray's newer console output ignores verbose=0; the legacy reporter honours it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Every checkpoint syncs the experiment state on purpose (see build_tuner).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    folder = (results / study.name).resolve()
    placement = fold_placement(study)  # an impossible placement fails before any file
    with study_lock(folder):  # one driver per study folder
        return _run_locked(study, folder, resume, verbose, trainer, storage, placement, trackers)


def _run_locked(study, folder, resume, verbose, trainer, storage, placement, trackers):
    from study.checkpoints import drop_checkpoints
    from study.memory import check_disk, disk_need

    resume = check_resumable(study, folder, resume)
    check_results_folder(folder)
    experiment = f"{storage.rstrip('/')}/{study.name}" if storage else str(folder)
    check_disk(experiment, disk_need(study, placement.plan.trials_at_once))
    write_study_file(study, folder, resume, settings={
        "storage": experiment, "trackers": list(trackers), "placement": placement.plan.describe(),
    })  # fmt: skip
    (folder / "run.json").write_text(json.dumps({"experiment": f"{experiment}/tune"}) + "\n")
    with graceful_stop() as received:
        build_tuner(
            study, folder, experiment, resume=resume, verbose=verbose, trainer=trainer,
            placement=placement, trackers=trackers,
        ).fit()  # fmt: skip
    # Written again here, from the experiment and the fold logs: a stopped Tune may end
    # without telling the callbacks about the trials it stopped.
    rebuild(folder)
    epochs, trials = (pd.read_parquet(folder / f"{t}.parquet") for t in ("epochs", "trials"))
    unfinished = int((trials.status == "unfinished").sum()) if len(trials) else 0
    if received or unfinished:  # only a signal stops fit() with trials left unfinished
        raise StudyInterrupted(received[0] if received else signal.SIGINT, unfinished)
    drop_checkpoints(f"{experiment}/tune", trials, study.keep_checkpoints)
    finish(study, folder, epochs, trials)
    write_study_file(study, folder, resume=True, ended=True)
    return epochs, trials


def write_study_file(
    study: StudyConfig,
    folder: Path,
    resume: bool,
    ended: bool = False,
    settings: dict | None = None,
) -> None:
    """study.json: the study's configuration, and its provenance (the data, and one record per
    run of the driver: command, code and library versions, run settings, start and end
    times). A resumed study adds a run; what defines it never changes (check_resumable), and
    its run settings at the top level are this run's, so that `--config study.json` runs it
    as it ran last. `settings`: this run's where and how beyond the study's own fields
    (storage, trackers, the placement chosen)."""
    from study.provenance import command, environment, now

    path = folder / "study.json"
    record = json.loads(path.read_text()) if resume and path.exists() else None
    if record is None:
        record = study_record(study)
        store = open_store(fetch_store(study.train.data, store_cache()))
        record["provenance"] = {
            "store_hash": store.content_hash, "store_path": study.train.data, "runs": [],
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
        runs.append({
            "command": command(), "started": now(), "ended": None, **environment(),
            "settings": {**this_run, **(settings or {}), "ray_address": _ray_address()},
        })  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _ray_address() -> str | None:
    """The address of the Ray cluster this driver is connected to (None: not connected)."""
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def finish(study: StudyConfig, folder: Path, epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """After the trials: the fold-paired statistics (stats.parquet, stats.csv) and, with a
    test set, the chosen configuration's test estimate (test.parquet)."""
    from study.holdout import evaluate_test_set
    from study.stats import compare_to_best, write_stats
    from study.summary import study_per_fold

    per_fold = study_per_fold(epochs, trials)
    if len(per_fold):
        stats = compare_to_best(per_fold, folds_per_repeat=study.train.num_folds)
        write_stats(stats, folder, study.name)
    (folder / "test.parquet").unlink(missing_ok=True)  # never a stale one beside new trials
    if not study.train.held_out:
        return
    if not (trials.status == "completed").any():
        console.print("no completed trial: no test estimate")
        return
    with console.status("test estimate: the best configuration on the held-out patients"):
        try:
            evaluate_test_set(folder, study.name, epochs, trials, study.repeats, study.seed)
        except FileNotFoundError as error:  # e.g. the best trial's checkpoint was deleted
            console.print(f"[yellow]no test estimate:[/yellow] {error}")
