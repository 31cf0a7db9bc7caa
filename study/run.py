"""Run a study: `python -m study.run [--preset demo|smoke|paper|search | --config FILE] ...`.

One Ray Tune trial per configuration; each trains every fold in lockstep and reports the
cross-validated score that Optuna searches on and ASHA prunes by. Results land in
RESULTS/NAME/: epochs.parquet, trials.parquet (rewritten as trials end), study.json,
optuna.db (for a search) and tune/ (Ray's experiment folder, from which --resume continues).
The study itself is assembled and run by study/tuner.py; this file reads the command line,
starts or joins Ray, and prints the report. A study comes from a preset (study/presets.py) or
a file (study/record.py: an earlier study's study.json, or YAML/JSON written by hand); the
other flags apply on top of either.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape  # an error may quote [brackets]

from mtl import add_overrides_option, add_version_option
from study.guard import StudyBusyError, StudyInterrupted, check_results_folder, study_lock
from study.placement import PlacementError
from study.presets import PRESETS, StudyConfig, apply_overrides, get_preset
from study.record import load_study_file
from study.storage import check_storage, check_store_on_nodes, is_uri
from study.trackers import TRACKERS, check_trackers
from study.tuner import check_resumable, prepare_data, run_study

console = Console()


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
        "search: Optuna + ASHA over alpha, epochs, losses and balancers",
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
        "study.export and the test estimate), best first (default 1; 0 keeps all)",
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
        "--tracker",
        action="append",
        choices=list(TRACKERS),
        default=[],
        help="also log to an experiment tracker (repeat for both): one run per trial with its "
        "active parameters and cross-validated metrics, and a study run with the report. "
        "mlflow: MLFLOW_TRACKING_URI, default RESULTS/NAME/mlflow.db; wandb: offline into "
        "RESULTS/NAME/wandb unless logged in. Needs pip install 'hep2-mtl[mlflow]' or [wandb]",
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
    study = apply_overrides(study, overrides)
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
    }
    return dataclasses.replace(study, **{k: v for k, v in changes.items() if v is not None})


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


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    results = Path(args.results)
    try:
        trackers = check_trackers(args.tracker)
        study = resolve_study(args)
        storage = args.storage or str((results / study.name).resolve())
        # Joining a cluster counts as multi-node even when it has one node now: an autoscaler
        # adds GPU workers only once trials ask for them.
        check_storage(storage, multi_node=args.address is not None, shared=args.storage_shared)
        study = prepare_data(study, results)
        check_resumable(study, (results / study.name).resolve(), args.resume)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2

    try:
        # One driver per study folder, from here until the report is written.
        with study_lock((results / study.name).resolve()):
            return run_and_report(args, study, results, started, trackers)
    except StudyBusyError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2


def run_and_report(
    args, study: StudyConfig, results: Path, started: float, trackers: tuple[str, ...] = ()
) -> int:
    """Run the checked study on Ray, then write its report (and give it to the trackers);
    the exit status."""
    import ray

    started_here = not ray.is_initialized()
    try:
        # Before Ray starts: a bad folder costs no start-up (run_study checks again, for
        # callers that start Ray themselves).
        check_results_folder(results / study.name)
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
            study, results, resume=args.resume, verbose=args.verbose, storage=args.storage,
            trackers=trackers,
        )  # fmt: skip
    except (ConnectionError, PlacementError, OSError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        return 2
    except StudyInterrupted as stop:
        interrupted = stop
    else:
        interrupted = None
    finally:
        if started_here:
            ray.shutdown()

    from study.report import write_report

    written = write_report(results / study.name, console=console)
    if trackers:
        from study.trackers import log_study

        log_study(trackers, study.name, results / study.name, written)
    if interrupted is not None:
        console.print(f"[yellow]{escape(str(interrupted))}[/yellow]")
        return interrupted.exit_status
    console.print(f"results, report and plots: {(results / study.name).resolve()}")
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    console.print(f"elapsed: {minutes} min {seconds:02d} s")
    failed = trials[trials.status == "errored"]
    for row in failed.itertuples():
        console.print(f"[red]trial {row.trial_id} failed:[/red] {row.error}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
