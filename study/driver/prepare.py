"""Preparing a study: every check once, in order of cost, before anything is trained.

`prepare(request)` is the one way in, for the command line (study/run.py) and the Python API
(study/api.py) alike. Before Ray: the trackers, the storage, the data (the patch store made
or opened, its content hash read once, the held-out patients chosen, every fold checked),
the study folder's lock, whether the folder holds this study to resume, and whether it can
be written. Then Ray (a new local instance, or the cluster at an address; one already
started is used as it is): the store readable on every node, the fold workers' placement,
and the disk the checkpoints need. What it yields, a PreparedStudy, is all that
study/driver/tuner.py runs; the lock and Ray are held until the block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rich.console import Console
from rich.progress import Progress

from mtl import build_synthetic_store, holdout_patients, open_store, split_label, split_rows
from study.driver.guard import check_results_folder, study_lock
from study.driver.memory import check_disk, disk_need, fold_memory
from study.driver.placement import Placement, cluster_nodes, plan_placement
from study.spec.presets import StudyConfig
from study.spec.record import study_from_record, study_identity, study_record
from study.storage import (
    check_storage,
    check_store_on_nodes,
    fetch_store,
    read_store_hash,
    store_cache,
)
from study.trackers.backends import check_trackers

console = Console()


@dataclass(frozen=True)
class StudyRequest:
    """What a user asks for: a study, where its results go, and how to run it."""

    study: StudyConfig
    results: Path = Path("results")
    resume: bool = False  # refuse to start a new study: continue the one in RESULTS/NAME
    storage: str | None = None  # Ray's experiment and checkpoints (default RESULTS/NAME)
    storage_shared: bool = False  # `storage` is a folder every node mounts at that path
    address: str | None = None  # a Ray cluster to join; None: a new local Ray
    cpus: int | None = None  # of the new local Ray (default: every CPU)
    verbose: bool = False  # Ray's own output
    trackers: tuple[str, ...] = ()  # "mlflow", "wandb"
    # The Trainer behind every fold (default mtl's FoldTrainer); tests give scripted ones.
    trainer: type | None = None

    @property
    def folder(self) -> Path:
        return (Path(self.results) / self.study.name).resolve()


class TrialPlacement(NamedTuple):
    """Where a trial's folds run: its Tune resources, its fold actors' options (None: the
    folds run in the trial's process), torch threads per fold, whether idle folds' states
    wait in host memory, and the plan itself (study/driver/placement.py)."""

    resources: object
    actor_options: dict | None
    threads: int
    offload: bool
    plan: Placement


@dataclass(frozen=True)
class PreparedStudy:
    """A study that passed every check, with what the checks found."""

    study: StudyConfig  # its data resolved and its held-out patients chosen
    folder: Path  # RESULTS/NAME: tables, study.json, optuna.db, the report
    experiment: str  # STORAGE/NAME: Ray's experiment (tune/), fold logs, checkpoints
    resume: bool  # the folder holds this study, to continue
    store_hash: str
    placement: TrialPlacement
    trackers: tuple[str, ...]
    verbose: bool
    trainer: type | None


@contextlib.contextmanager
def prepare(request: StudyRequest) -> Iterator[PreparedStudy]:
    """Check the request once, in order of cost, and hold the study folder's lock and Ray
    while the block runs. Raises ValueError, FileNotFoundError or FileExistsError (the
    study, its data or its folder), OSError (storage, disk), StudyBusyError (another driver
    runs it), ConnectionError (Ray, or a node that cannot read the data) or PlacementError
    (no trial could ever be placed), each naming what is wrong."""
    trackers = check_trackers(request.trackers)
    folder = request.folder
    storage = request.storage.rstrip("/") if request.storage else None
    experiment = f"{storage}/{request.study.name}" if storage else str(folder)
    # Joining a cluster counts as multi-node even when it has one node now: an autoscaler
    # adds GPU workers only once trials ask for them.
    check_storage(
        storage or str(folder),
        multi_node=request.address is not None,
        shared=request.storage_shared,
    )
    study = prepare_data(request.study, Path(request.results))
    store_hash = read_store_hash(study.train.data)
    with study_lock(folder):  # one driver per study folder, until the block ends
        resume = check_resumable(study, folder, request.resume, store_hash)
        check_results_folder(folder)
        with ray_session(request.address, request.cpus, request.verbose):
            if request.address is not None or _nodes() > 1:  # one machine read it already
                check_data_on_nodes(study.train.data, store_hash)
            placement = fold_placement(study)
            check_disk(experiment, disk_need(study, placement.plan.trials_at_once))
            yield PreparedStudy(
                study=study,
                folder=folder,
                experiment=experiment,
                resume=resume,
                store_hash=store_hash,
                placement=placement,
                trackers=trackers,
                verbose=request.verbose,
                trainer=request.trainer,
            )


def prepare_data(study: StudyConfig, results: Path) -> StudyConfig:
    """The study with its patch store made (synthetic) or opened, its held-out patients
    chosen, and every configuration and fold checked against the store."""
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
    checked = set()
    for config in study.train_configs():
        if store.size != config.image_size:
            raise ValueError(
                f"image_size is {config.image_size} but {store.path} holds {store.size} px patches"
            )
        # A configuration's folds depend on these fields alone: a thousand configurations
        # that share them are checked once.
        dealt = (config.folds, config.num_folds, config.fold_seed, config.held_out)
        if (dealt, config.batch_size) in checked:
            continue
        checked.add((dealt, config.batch_size))
        for label in study.folds:
            repeat, fold = split_label(label)
            split = config.replace(fold_seed=config.fold_seed + repeat)
            train, val = split_rows(split, store.index, fold)
            if not len(val) or len(train) < config.batch_size:
                raise ValueError(f"fold {label} of {store.path} is too small to train or validate")
    return study


def check_resumable(study: StudyConfig, folder: Path, resume: bool, store_hash: str) -> bool:
    """Whether FOLDER holds this study to continue. Refuses one that is another study: a field
    that defines it differs (named), or its data has another content hash than `store_hash`.
    How it runs (resources, concurrency, storage, device: presets.RUN_SETTINGS) may change."""
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
    if recorded and recorded != store_hash:
        raise ValueError(
            f"{folder} holds a study of the data with content hash {recorded}, but "
            f"{study.train.data} has {store_hash}; choose a new --name, or give the study's "
            "own data"
        )
    return True


def check_data_on_nodes(location: str, store_hash: str) -> None:
    """Raise ConnectionError, naming them, when nodes of the cluster cannot read the store."""
    unreadable = check_store_on_nodes(location, content_hash=store_hash)
    if unreadable:
        raise ConnectionError(
            f"the data store {location} cannot be read on " + "; ".join(unreadable)
            + ". Put it on a folder every node mounts, or give an s3:// or gs:// URI"
        )  # fmt: skip


def _nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int | None, verbose: bool) -> Iterator[None]:
    """Ray for the block: the instance this process already started (left running), else a
    new local one sized to `cpus`, or the cluster at ADDRESS ('auto' or HOST:PORT; a clear
    error within seconds if none), shut down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    connect(address, cpus, verbose)
    try:
        yield
    finally:
        ray.shutdown()


def connect(address: str | None, cpus: int | None, verbose: bool) -> None:
    """A fresh local Ray, or the cluster at ADDRESS (a clear error within seconds if none)."""
    import ray

    if address is None:
        # address="local": always a new instance, never a stray cluster named by RAY_ADDRESS.
        ray.init(address="local", num_cpus=cpus or os.cpu_count(), include_dashboard=False,
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


def fold_placement(study: StudyConfig) -> TrialPlacement:
    """Where a trial's folds run, planned on the cluster Ray is connected to
    (study/driver/placement.py) with the fold workers' GPU memory (study/driver/memory.py),
    and said in the log with its reason.

    Raises PlacementError at once when no trial could ever be placed.
    """
    from ray import tune

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
