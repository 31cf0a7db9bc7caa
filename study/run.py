"""Run a study: `python -m study.run [--preset demo|smoke|paper|search] ...`.

One Ray Tune trial per configuration; each trains every fold in lockstep and reports the
cross-validated score that Optuna searches on and ASHA prunes by. Results land in
RESULTS/NAME/: epochs.parquet, trials.parquet (rewritten as trials end), study.json,
optuna.db (for a search) and tune/ (Ray's experiment folder, from which --resume continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from mtl.data import build_synthetic_store, holdout_patients, open_store, split_label
from mtl.train import split_rows
from study.presets import PRESETS, StudyConfig, apply_overrides, get_preset
from study.storage import (
    check_storage,
    check_store_on_nodes,
    fetch_store,
    is_uri,
    store_cache,
)

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a cross-validated study of the multi-task U-Net with Ray Tune: one "
        "trial per configuration (a grid, or an Optuna search pruned by ASHA), each trained on "
        "every fold. Results go to RESULTS/NAME/ (epochs.parquet, trials.parquet, study.json). "
        "Rerunning an existing NAME resumes it.",
    )
    p.add_argument(
        "--preset",
        default="demo",
        choices=list(PRESETS),
        help="demo (default): a short search on synthetic data, minutes on a laptop "
        "CPU; smoke: seconds, for tests; paper: the original six configurations; "
        "search: Optuna + ASHA over alpha, epochs, losses and balancers",
    )
    p.add_argument("--data", help="a patch store (python -m mtl.data) instead of synthetic data")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--name", help="study name, the sub-folder of RESULTS (default: the preset's)")
    p.add_argument("--num-samples", type=int, help="Optuna trials of a search")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (0: no limit)")
    p.add_argument(
        "--gpus-per-fold",
        type=float,
        help="GPUs per fold worker (default: 1 with GPUs, folds in the trial's "
        "process without); 0.5 packs two fold workers per GPU",
    )
    p.add_argument(
        "--address",
        help="join a running Ray cluster ('auto' or HOST:PORT); "
        "default: a new local Ray sized to this machine",
    )
    p.add_argument(
        "--storage",
        help="where Ray keeps the experiment and its checkpoints (default: RESULTS/NAME); on "
        "a cluster an s3:// or gs:// URI, or a shared folder with --storage-shared",
    )
    p.add_argument(
        "--storage-shared",
        action="store_true",
        help="--storage is a network folder mounted at the same path on every node",
    )
    p.add_argument(
        "--cpus",
        type=int,
        default=os.cpu_count(),
        help="CPUs of the local Ray instance (default: all of this machine's)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study NAME (rerunning an existing NAME does it too)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field, e.g. --set epochs=3 (repeatable)",
    )
    p.add_argument(
        "--test-patients",
        type=float,
        metavar="FRACTION",
        help="hold this fraction of the patients out of every fold (stratified by pattern) "
        "and evaluate the best configuration on them at the end (default: the preset's; "
        "demo and search 0.2, paper 0)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="repeated cross-validation: this many k-fold splits with different seeds "
        "(default 1; needs --set folds=stratified)",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    return p.parse_args(argv)


def resolve_study(args: argparse.Namespace) -> StudyConfig:
    study = get_preset(args.preset)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data if is_uri(args.data) else Path(args.data).resolve()}")
    study = apply_overrides(study, overrides)
    changes = {
        "name": args.name,
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "gpus_per_fold": args.gpus_per_fold,
        "test_patients": args.test_patients,
        "repeats": args.repeats,
    }
    return dataclasses.replace(study, **{k: v for k, v in changes.items() if v is not None})


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
    """Whether FOLDER holds this study to continue; refuses one with another configuration."""
    saved = folder / "study.json"
    if not saved.exists():
        if resume:
            raise ValueError(f"--resume: there is no study in {folder}")
        return False
    mine = json.loads(json.dumps(dataclasses.asdict(study), default=str))
    theirs = json.loads(saved.read_text())
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(
            f"{folder} holds a study with another configuration ({', '.join(differ)} differ); "
            "choose a new --name, or rerun with the same preset and settings to resume it"
        )
    return True


def connect(address: str | None, cpus: int, verbose: bool) -> None:
    """A fresh local Ray, or the cluster at ADDRESS (a clear error within seconds if none)."""
    import ray

    if address is None:
        # address="local": always a new instance, never a stray cluster named by RAY_ADDRESS.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                 log_to_driver=verbose, configure_logging=verbose)  # fmt: skip
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as error:
            raise ConnectionError(f"no Ray cluster at {address}: {error}") from None
    try:
        ray.init(address=address, log_to_driver=verbose, configure_logging=verbose)
    except ConnectionError as error:
        raise ConnectionError(f"cannot join the Ray cluster at {address}: {error}") from None


def fold_placement(study: StudyConfig) -> tuple[object, dict | None, int]:
    """(Tune resources of a trial, fold actor options or None for in-process folds, threads)."""
    import ray
    from ray import tune

    gpus = study.gpus_per_fold
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus == 0 and not study.fold_resources:
        return {"cpu": study.cpus_per_trial}, None, max(1, int(study.cpus_per_trial))
    bundle = {"CPU": study.cpus_per_fold, "GPU": gpus, **study.fold_resources}
    folds = study.folds
    # An empty head bundle: the trial itself only coordinates; bundle i is fold i's.
    resources = tune.PlacementGroupFactory(
        [{}] + [bundle] * len(folds), strategy=study.fold_strategy
    )
    options = {"num_cpus": study.cpus_per_fold, "num_gpus": gpus}
    if study.fold_resources:
        options["resources"] = dict(study.fold_resources)
    return resources, options, max(1, int(study.cpus_per_fold))


def build_tuner(
    study: StudyConfig,
    folder: Path,
    experiment: str,
    *,
    resume: bool,
    verbose: bool,
    trainer: type | None = None,
):
    """The Tuner of the study (restored from EXPERIMENT/tune when resuming); tables and the
    Optuna database go to FOLDER."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from study.progress import LiveView, ResultsWriter
    from study.search import asha, optuna_search, tune_space
    from study.trial import run_trial

    resources, actor_options, threads = fold_placement(study)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=study.train,
            folds=study.folds,
            score_metrics=study.score_metrics,
            store_hash=open_store(fetch_store(study.train.data, store_cache())).content_hash,
            actor_options=actor_options,
            threads=threads,
            **({"trainer": trainer} if trainer else {}),
        ),
        resources,
    )
    if resume:
        return tune.Tuner.restore(
            f"{experiment}/tune", trainable, resume_unfinished=True, resume_errored=False
        )
    if study.space:
        search_alg, param_space = (
            optuna_search(study.name, folder, study.seed, study.warm_start),
            tune_space(study.space),
        )
    else:
        # Each configuration is one point to evaluate; every point names every varying field
        # (the base value where it has none), so nothing is ever sampled at random.
        keys = study.varying
        base = dataclasses.asdict(study.train)
        points = [{k: c.get(k, base[k]) for k in keys} for c in study.configurations] or [{}]
        param_space = {k: tune.choice([p[k] for p in points]) for k in keys}
        search_alg = BasicVariantGenerator(points_to_evaluate=points)
    scheduler = (
        asha(study.max_epochs, study.grace_period, study.reduction_factor)
        if study.scheduler == "asha"
        else None
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="cv_score",
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=study.num_trials,
            max_concurrent_trials=study.max_concurrent or None,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=experiment,
            verbose=2 if verbose else 0,
            callbacks=[ResultsWriter(study, folder)] + ([] if verbose else [LiveView(study)]),
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            # Keep the latest checkpoint only; every new one also syncs the experiment state,
            # so a killed driver resumes from where its trials really were.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def run_study(
    study: StudyConfig,
    results: Path,
    *,
    resume: bool = False,
    verbose: bool = False,
    trainer: type | None = None,
    storage: str | None = None,
):
    """Run (or continue) the study on the Ray instance already initialised; return its tables.

    Tables, study.json and optuna.db go to RESULTS/NAME; Ray's experiment to STORAGE/NAME/tune
    (default RESULTS/NAME/tune). `trainer` replaces mtl.train.FoldTrainer (tests use
    scripted stand-ins).
    """
    if not verbose:
        # Ray's newer console output ignores verbose=0; the legacy reporter honours it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Every checkpoint syncs the experiment state on purpose (see build_tuner).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    folder = (results / study.name).resolve()
    resume = check_resumable(study, folder, resume)
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        text = json.dumps(dataclasses.asdict(study), indent=2, default=str)
        (folder / "study.json").write_text(text + "\n")
    experiment = f"{storage.rstrip('/')}/{study.name}" if storage else str(folder)
    (folder / "run.json").write_text(json.dumps({"experiment": f"{experiment}/tune"}) + "\n")
    build_tuner(study, folder, experiment, resume=resume, verbose=verbose, trainer=trainer).fit()
    epochs, trials = (pd.read_parquet(folder / f"{t}.parquet") for t in ("epochs", "trials"))
    drop_checkpoints(f"{experiment}/tune", trials, study.keep_checkpoints)
    finish(study, folder, epochs, trials)
    return epochs, trials


def finish(study: StudyConfig, folder: Path, epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """After the trials: the fold-paired statistics (stats.parquet, stats.csv) and, with a
    test set, the chosen configuration's test estimate (test.parquet)."""
    from study.holdout import evaluate_test_set
    from study.stats import compare_to_best, study_per_fold, write_stats

    per_fold = study_per_fold(epochs, trials)
    if len(per_fold):
        stats = compare_to_best(per_fold, folds_per_repeat=study.train.num_folds)
        write_stats(stats, folder)
    (folder / "test.parquet").unlink(missing_ok=True)  # never a stale one beside new trials
    if not study.train.held_out:
        return
    if not (trials.status == "completed").any():
        console.print("no completed trial: no test estimate")
        return
    with console.status("test estimate: the best configuration on the held-out patients"):
        try:
            evaluate_test_set(folder, study.name, study.repeats, study.seed)
        except FileNotFoundError as error:  # e.g. checkpoints kept on s3://, not here
            console.print(f"[yellow]no test estimate:[/yellow] {error}")


def drop_checkpoints(experiment: str, trials: pd.DataFrame, keep: int) -> list[str]:
    """Delete the checkpoints of finished trials beyond the `keep` best (0: keep all);
    completed trials rank before pruned and errored ones, then by cross-validated score.

    Unfinished trials keep theirs: a later --resume continues from them.
    """
    from pyarrow import fs

    if keep == 0:
        return []
    finished = trials[trials.status.isin(["completed", "pruned", "errored"])]
    if "cv_score" not in finished:  # no trial ever reported
        finished = finished.assign(cv_score=float("nan"))
    ranked = finished.assign(rank=finished.status.ne("completed")).sort_values(
        ["rank", "cv_score"], ascending=[True, False]
    )
    if is_uri(experiment):
        filesystem, root = fs.FileSystem.from_uri(experiment)
    else:
        filesystem, root = fs.LocalFileSystem(), experiment
    trial_folders = filesystem.get_file_info(fs.FileSelector(root))
    dropped = []
    for trial_id in ranked.trial_id.iloc[keep:]:
        for folder in trial_folders:
            if folder.type == fs.FileType.Directory and f"_{trial_id}_" in folder.base_name:
                for item in filesystem.get_file_info(fs.FileSelector(folder.path)):
                    if item.base_name.startswith("checkpoint_"):
                        filesystem.delete_dir(item.path)
                        dropped.append(item.path)
    return dropped


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    results = Path(args.results)
    try:
        study = resolve_study(args)
        storage = args.storage or str((results / study.name).resolve())
        # Joining a cluster counts as multi-node even when it has one node now: an autoscaler
        # adds GPU workers only once trials ask for them.
        check_storage(storage, multi_node=args.address is not None, shared=args.storage_shared)
        study = prepare_data(study, results)
        check_resumable(study, (results / study.name).resolve(), args.resume)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2

    import ray

    started_here = not ray.is_initialized()
    try:
        if started_here:
            connect(args.address, args.cpus, args.verbose)
        unreadable = check_store_on_nodes(study.train.data)
        if unreadable:
            raise ConnectionError(
                f"the data store {study.train.data} cannot be read on "
                + "; ".join(unreadable)
                + ". Put it on a folder every node mounts, or give an s3:// or gs:// URI"
            )
        epochs, trials = run_study(
            study, results, resume=args.resume, verbose=args.verbose, storage=args.storage
        )
    except ConnectionError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    finally:
        if started_here:
            ray.shutdown()

    from study.report import write_report

    write_report(results / study.name, console=console)
    console.print(f"results, report and plots: {(results / study.name).resolve()}")
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    console.print(f"elapsed: {minutes} min {seconds:02d} s")
    failed = trials[trials.status == "errored"]
    for row in failed.itertuples():
        console.print(f"[red]trial {row.trial_id} failed:[/red] {row.error}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
