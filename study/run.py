"""Run a study: `python -m study.run [--preset demo|smoke] ...`.

Starts a local Ray instance sized to this machine, runs one Tune trial per configuration
(each evaluated on all folds), writes <results>/<name>/{epochs,trials}.parquet and
study.json, and prints the comparison table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from mtl.data import build_synthetic_store, fold_names, open_store
from mtl.tables import ID_COLUMNS
from mtl.train import split_rows
from study.presets import PRESETS, StudyConfig, apply_overrides, get_preset
from study.report import comparison_table, print_comparison
from study.results import epoch_rows, fold_summary, write_parquet

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a cross-validated study of the multi-task U-Net with Ray Tune: one "
        "trial per configuration of the preset's grid, each trained on every fold. Results go "
        "to RESULTS/NAME/{epochs.parquet,trials.parquet,study.json}.",
    )
    parser.add_argument(
        "--preset",
        default="demo",
        choices=sorted(PRESETS),
        help="the study to run (default: demo, synthetic data, a few minutes on a CPU)",
    )
    parser.add_argument(
        "--data", help="a patch store to use instead of the preset's synthetic data"
    )
    parser.add_argument("--results", default="results", help="results folder (default: ./results)")
    parser.add_argument(
        "--name", help="study name, the sub-folder of RESULTS (default: the preset's)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field, e.g. --set epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=os.cpu_count(),
        help="CPUs of the local Ray instance (default: all of this machine's)",
    )
    parser.add_argument("--verbose", action="store_true", help="show Ray's own output")
    return parser.parse_args(argv)  # fmt: skip


def resolve_study(args: argparse.Namespace) -> StudyConfig:
    study = get_preset(args.preset)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={Path(args.data).resolve()}")
    study = apply_overrides(study, overrides)
    if args.name:
        study = dataclasses.replace(study, name=args.name)
    return study


def prepare_data(study: StudyConfig, results: Path) -> StudyConfig:
    """Make sure the study's patch store exists and fits, before any trial starts."""
    if study.train.data:
        store = open_store(study.train.data)
    else:
        spec = study.synthetic
        path = (
            results
            / "data"
            / f"synthetic-{spec.size}px-{spec.patients}p-{spec.specimens}s-seed{spec.seed}"
        )
        try:
            store = open_store(path)
        except FileNotFoundError:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(
                    f"generating synthetic data in {path}", total=spec.num_patches
                )
                store = build_synthetic_store(
                    path, spec, progress=lambda n: progress.advance(task, n)
                )
        study = dataclasses.replace(study, train=study.train.replace(data=str(path.resolve())))
    for overrides in study.configurations():
        config = study.train.replace(**overrides)
        if store.size != config.image_size:
            raise ValueError(
                f"image_size is {config.image_size} but {store.path} holds {store.size} px patches"
            )
        for fold in fold_names(config.num_folds):
            train, val = split_rows(config, store.index, fold)
            if not len(val) or len(train) < config.batch_size:
                raise ValueError(f"fold {fold} of {store.path} is too small to train or validate")
    return study


def run_study(
    study: StudyConfig, results: Path, *, verbose: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the study with Ray Tune on the Ray instance already initialised; write Parquet."""
    if not verbose:
        # Ray's newer console output ignores verbose=0; the legacy reporter honours it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from study.progress import StudyProgress
    from study.trial import run_trial

    out = (results / study.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(
        json.dumps(dataclasses.asdict(study), indent=2, default=str) + "\n"
    )
    folds = fold_names(study.train.num_folds)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=study.train, folds=folds, threads=max(1, int(study.cpus_per_trial))
        ),
        {"cpu": study.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(list(values)) for key, values in study.grid.items()},
        tune_config=tune.TuneConfig(metric="cv_score", mode="max"),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            verbose=2 if verbose else 0,
            callbacks=[] if verbose else [StudyProgress(study)],
        ),
    )
    grid = tuner.fit()
    epochs, trials = collect(grid, study)
    write_parquet(epochs, out / "epochs.parquet")
    write_parquet(trials, out / "trials.parquet")
    return epochs, trials


def collect(grid, study: StudyConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The epochs and trials tables from a Tune ResultGrid."""
    epoch_frames, trial_rows = [], []
    for result in grid:
        reports = result.metrics_dataframe
        if reports is None:
            reports = pd.DataFrame()
        # A trial that failed before its first report has no trial_id metric: use its folder.
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        epoch_frames.append(epoch_rows(trial_id, reports))
        config = study.train.replace(**result.config)
        epochs_run = int(reports["epoch"].max()) if "epoch" in reports else 0
        if result.error:
            status = "errored"
        else:
            status = "completed" if epochs_run == config.epochs else "pruned"
        trial_rows.append(
            {
                "trial_id": trial_id,
                **dataclasses.asdict(config),
                "status": status,
                "epochs_run": epochs_run,
                "error": str(result.error) if result.error else None,
            }
        )
    frames = [f for f in epoch_frames if not f.empty]
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ID_COLUMNS)
    trials = pd.DataFrame(trial_rows)
    if frames:
        trials = trials.merge(fold_summary(epochs), on="trial_id", how="left")
    return epochs, trials.sort_values("trial_id", ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = resolve_study(args)
        results = Path(args.results)
        study = prepare_data(study, results)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2

    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # address="local": always a fresh instance, never a stray cluster from RAY_ADDRESS.
        ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=args.verbose,
            configure_logging=args.verbose,
        )
    try:
        epochs, trials = run_study(study, results, verbose=args.verbose)
    finally:
        if started_here:
            ray.shutdown()
    print_comparison(console, comparison_table(trials, study), study)
    console.print(f"results: {(results / study.name).resolve()}/{{epochs,trials}}.parquet")
    errored = trials[trials.status == "errored"]
    for row in errored.itertuples():
        console.print(f"[red]trial {row.trial_id} failed:[/red] {row.error}")
    return 1 if len(errored) else 0


if __name__ == "__main__":
    sys.exit(main())
