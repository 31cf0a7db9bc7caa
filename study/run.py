"""Run a study: `python -m study.run [--preset demo|smoke|paper|search | --config FILE] ...`.

One Ray Tune trial per configuration; each trains every fold in lockstep and reports the
cross-validated score that Optuna searches on and ASHA prunes by. Results land in
RESULTS/NAME/: epochs.parquet, trials.parquet (a file per trial as each ends), study.json,
optuna.db (for a search) and tune/ (Ray's experiment folder, from which --resume continues).
This file turns the command line into a StudyRequest; study/driver/prepare.py checks it
(each check once) and study/driver/tuner.py runs it; then the report is written and
printed. A study comes from a preset (study/spec/presets.py) or a file
(study/spec/record.py: an earlier study's study.json, or YAML/JSON written by hand); the
other flags apply on top of either.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape  # an error may quote [brackets]

from mtl import add_overrides_option, add_version_option, parse_overrides
from study.driver.guard import StudyBusyError, StudyInterrupted
from study.driver.placement import PlacementError
from study.driver.prepare import StudyRequest, prepare
from study.driver.tuner import execute
from study.spec.presets import PRESETS, StudyConfig, apply_overrides, get_preset
from study.spec.record import load_study_file
from study.spec.space import Choice
from study.storage import is_uri
from study.trackers.backends import TRACKERS

console = Console()
# What refuses a study before or while it runs, each naming what is wrong: exit status 2.
STUDY_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, OSError, ConnectionError, PlacementError,
    StudyBusyError,
)  # fmt: skip


def _auto_or_number(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a cross-validated study of the multi-task U-Net with Ray Tune: one "
        "trial per configuration (a grid, or an Optuna search pruned by ASHA), each trained on "
        "every fold. Results go to RESULTS/NAME/ (epochs.parquet, trials.parquet, study.json). "
        "Rerunning an existing NAME resumes it. --config FILE runs a study file (an earlier "
        "study's study.json, or YAML/JSON written by hand) instead of a preset.",
    )
    # --preset has no default here (resolve_study picks demo): argparse lets an exclusive
    # option through when its value is its default object, as `--preset demo` can be.
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="demo (default): a short search on synthetic data, minutes on a laptop "
        "CPU; smoke: seconds, for tests; paper: the original six configurations; "
        "search: Optuna + ASHA over alpha, epochs, losses and balancers; balancers: every "
        "balancer under one tuning budget, against tuned fixed weights",
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        help="a study file: an earlier study's RESULTS/NAME/study.json, or a YAML/JSON file "
        "with the same fields (README: A study from a file); flags apply on top",
    )
    p.add_argument("--data", help="a patch store (python -m mtl.data) instead of synthetic data")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument(
        "--name",
        help="study name, the sub-folder of RESULTS (default: the preset's or the file's)",
    )
    p.add_argument("--num-samples", type=int, help="Optuna trials of a search")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (0: no limit)")
    p.add_argument(
        "--gpus-per-fold",
        type=_auto_or_number,
        metavar="auto|G",
        help="GPUs per fold worker (default auto: a trial's folds packed on one node's GPUs, "
        "every GPU busy, within each GPU's memory; docs/cluster.md); 0.5 puts two fold "
        "workers on each GPU, 0 trains on CPUs",
    )
    p.add_argument(
        "--cpus-per-fold",
        type=_auto_or_number,
        metavar="auto|C",
        help="CPUs per fold worker (default auto: a node's CPUs shared by its fold workers)",
    )
    p.add_argument(
        "--fold-memory-gib",
        type=float,
        metavar="GIB",
        help="GPU memory one fold worker needs (default: the figure measured for this model "
        "by bench/gpu_check.sh, else one training step probed on a GPU at study start); "
        "the automatic placement packs fold workers by it (docs/cluster.md)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        metavar="N",
        help="finished trials that keep their last checkpoint (every fold's weights, for "
        "study.results.export and the test estimate), best first (default 1; 0 keeps all)",
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
    add_overrides_option(p)
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
    p.add_argument(
        "--objective",
        choices=("score", "tasks"),
        help="what Optuna searches for: the score (default), or each task's headline metric "
        "as an objective of its own (a multi-objective search whose Optuna best_trials are "
        "the front); ASHA still stops trials on the score",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        default=None,
        help="also train the three single-task baselines (the base configuration on seg, "
        "pattern or intensity alone, the study's epochs, folds and seeds) and report Δm, "
        "every configuration's gain over them per task, with fold-paired verdicts",
    )
    p.add_argument(
        "--trials-per-balancer",
        type=int,
        metavar="N",
        help="give every balancer of the search space exactly N Optuna trials (num_samples "
        "becomes N x the balancers): one tuning budget for all, as the balancers preset "
        "compares them",
    )
    p.add_argument(
        "--tracker",
        action="append",
        choices=list(TRACKERS),
        default=[],
        help="also log to an experiment tracker (repeat for both): one run per trial with its "
        "active parameters and cross-validated metrics, and a study run with the report. "
        "mlflow: MLFLOW_TRACKING_URI, default RESULTS/NAME/mlflow.db; wandb: offline into "
        "RESULTS/NAME/wandb unless logged in. Needs pip install 'hep2-mtl[mlflow]' or [wandb]",
    )
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="end with the report's tables and report.md but no PNGs (seconds less per "
        "study; python -m study.report RESULTS/NAME draws them later)",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's own output")
    add_version_option(p)
    return p.parse_args(argv)


def resolve_study(args: argparse.Namespace) -> StudyConfig:
    """The preset or the study file, with the command line's flags applied on top."""
    data = ""
    if args.data:
        data = args.data if is_uri(args.data) else str(Path(args.data).resolve())
    if args.config:
        # --data goes in before the file's study is checked: a file may leave it out.
        study = load_study_file(args.config, data=data)
    else:
        study = get_preset(args.preset or "demo")
    overrides = list(args.overrides) + ([f"data={data}"] if data else [])
    study = apply_overrides(study, parse_overrides(overrides))
    changes = {
        "name": args.name,
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "gpus_per_fold": args.gpus_per_fold,
        "cpus_per_fold": args.cpus_per_fold,
        "fold_memory_gib": args.fold_memory_gib,
        "keep_checkpoints": args.keep_checkpoints,
        "test_patients": args.test_patients,
        "repeats": args.repeats,
        "baselines": args.baselines,
        "objective": args.objective,
    }
    if args.trials_per_balancer is not None:
        # num_samples follows: this many for each balancer of the space.
        balancers = study.space.get("balancer")
        count = len(balancers.values) if isinstance(balancers, Choice) else 0
        changes["trials_per_balancer"] = args.trials_per_balancer
        if changes["num_samples"] is None:
            changes["num_samples"] = args.trials_per_balancer * count or study.num_samples
    return dataclasses.replace(study, **{k: v for k, v in changes.items() if v is not None})


def request(args: argparse.Namespace) -> StudyRequest:
    """The study the command line asks for, and how to run it."""
    return StudyRequest(
        study=resolve_study(args),
        results=Path(args.results),
        resume=args.resume,
        storage=args.storage,
        storage_shared=args.storage_shared,
        address=args.address,
        cpus=args.cpus,
        verbose=args.verbose,
        trackers=tuple(args.tracker),
    )


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    from study.report.document import write_report  # pandas, matplotlib: not for --help

    try:
        asked = request(args)
        with prepare(asked) as prepared:
            try:
                _, trials = execute(prepared)
            except StudyInterrupted as stop:
                interrupted, trials = stop, None
            else:
                interrupted = None
            written = write_report(prepared.folder, console=console, figures=not args.no_figures)
    except STUDY_ERRORS as error:
        # soft_wrap: a path in the message stays whole (copyable), however narrow the console
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return 2
    folder = asked.folder
    if asked.trackers:
        from study.trackers.backends import log_study

        log_study(asked.trackers, asked.study.name, folder, written)
    if interrupted is not None:
        console.print(f"[yellow]{escape(str(interrupted))}[/yellow]")
        return interrupted.exit_status
    console.print(f"results, report and plots: {folder}", soft_wrap=True)
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    console.print(f"elapsed: {minutes} min {seconds:02d} s")
    failed = trials[trials.status == "errored"]
    for row in failed.itertuples():
        console.print(
            f"[red]trial {row.trial_id} failed:[/red] {escape(str(row.error))}", soft_wrap=True
        )
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
