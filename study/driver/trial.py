"""The Tune trainable: one trial is one configuration, trained on every fold in lockstep.

Each fold is a `FoldWorker` around mtl's `FoldTrainer`: a Ray actor in the trial's
placement group (one GPU or a fraction of one) on a cluster, or an object in the trial's own
process on a machine without GPUs. Every epoch each fold trains and validates once; the
trial reports the fold-mean (cross-validated) metrics that ASHA and Optuna see plus every
fold's score, writes every fold's rows to its fold log (study/results/tables.py), and every
`checkpoint_every` epochs saves a checkpoint holding all folds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import ray
import torch
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mtl import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    checkpoint_bytes,
    checkpoint_due,
    checkpoint_name,
    open_store,
    read_checkpoint,
    split_label,
    train_epochs,
)
from study.provenance import environment
from study.results.foldlog import epoch_report, fold_log_entry, write_fold_log
from study.results.tables import train_overrides
from study.storage import fetch_store, store_cache

logger = logging.getLogger(__name__)
# Read from the installed packages: importing segmentation-models-pytorch costs seconds, in
# every trial process, and a scripted trainer (the tests') needs none of it.
VERSIONS = {
    "torch": torch.__version__,
    "segmentation_models_pytorch": metadata.version("segmentation_models_pytorch"),
}


def allotted_device(device: str) -> str:
    """The device a fold trains on inside a Ray actor: the CPU when Ray allotted it no GPU.

    Ray 2.60 no longer hides the GPUs from a process allotted none, so `auto` would find
    cuda:0 and train there behind Ray's back, beside the folds that were given it. Outside
    an actor (a test, a bench) the device stays as configured.
    """
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return device
    if ray.get_runtime_context().get_assigned_resources().get("GPU", 0) > 0:
        return device
    if device == "cuda":
        raise ValueError(
            "device='cuda' but Ray allotted this fold no GPU: give --gpus-per-fold a "
            "fraction (or auto), or --set device=auto"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA is first initialised here
    return "cpu"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares, given to the trainable once (tune.with_parameters)
    and to each of its fold workers."""

    base: TrainConfig  # a trial's configuration is this with the trial's overrides
    folds: tuple[str, ...]
    score_metrics: tuple[str, ...]
    store_hash: str  # every node's copy of the data must have it
    fold_log: str  # where the fold logs go: the study's experiment folder or URI
    actor_options: dict | None = None  # the fold actors' (None: folds in the trial's process)
    threads: int = 1  # torch threads per fold
    offload: bool = False  # idle folds' states wait in host memory (FoldWorker)
    # The driver's code version (commit, dirty), recorded instead of what a node's copy says
    # (which may differ, or lack .git).
    code: tuple[str, bool | None] | None = None
    trainer: type | None = None  # mtl's Trainer contract (None: FoldTrainer); tests script one


class FoldWorker:
    """One fold of a trial: a trainer (mtl's `Trainer` contract; FoldTrainer, or a test
    double) stepped one epoch per lockstep round through mtl's epoch loop.

    `offload`: between its epochs the fold's whole state waits in host memory as checkpoint
    bytes and its trainer (model, optimizers, loaders) is released, so that the folds of a
    trial that share one GPU hold one fold's state on it at a time; the trainer is opened
    again from those bytes for the next epoch (the same state: training goes on exactly).
    """

    def __init__(self, config: TrainConfig, fold: str, setup: TrialSetup):
        torch.set_num_threads(setup.threads)
        self.fold = fold
        # Repeated CV: fold "2C" is fold C of the split drawn with fold_seed + 1.
        repeat, self.letter = split_label(fold)
        # A URI is fetched once per node into a local cache; a path must be readable here.
        local = fetch_store(config.data, store_cache())
        found = open_store(local).content_hash
        if found != setup.store_hash:
            node = ray.util.get_node_ip_address()
            raise ValueError(
                f"node {node}: the store at {config.data} has content hash {found}, "
                f"the study's is {setup.store_hash}"
            )
        self.config = config.replace(
            data=str(local),
            fold_seed=config.fold_seed + repeat,
            device=allotted_device(config.device),
        )
        self.trainer_class, self.offload = setup.trainer or fold_trainer(), setup.offload
        self.trainer: Trainer | None = self.trainer_class(self.config, self.letter)
        self.parked: bytes | None = None  # the offloaded state, between epochs
        self.device_name = _device_name(self.trainer)

    def run_epoch(self) -> tuple[EpochMetrics, dict]:
        trainer = self._trainer()
        metrics = next(train_epochs(trainer, self.config.epochs))
        if self.offload:
            self._park()
        return metrics, self.node

    def _trainer(self) -> Trainer:
        if self.trainer is None:
            self.trainer = self.trainer_class(self.config, self.letter)
            self.trainer.load_state_dict(read_checkpoint(self.parked))
            self.parked = None
        return self.trainer

    def _park(self) -> None:
        self.parked = checkpoint_bytes(self.trainer.state_dict())
        self.trainer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next fold's step gets the memory back

    @property
    def node(self) -> dict:
        """Where this fold trains: host name, IP, Ray's node id, and the device's name."""
        return {
            "node": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address() if ray.is_initialized() else None,
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "device": self.device_name,
        }

    def state(self) -> bytes:
        if self.trainer is None:
            return self.parked
        return checkpoint_bytes(self.trainer.state_dict())

    def load(self, state: bytes) -> None:
        if self.trainer is None:
            self.parked = state
        else:
            self.trainer.load_state_dict(read_checkpoint(state))


def fold_trainer() -> type:
    """mtl's FoldTrainer, imported when a fold first needs it (it loads the model library)."""
    from mtl import FoldTrainer

    return FoldTrainer


def _device_name(trainer: Trainer) -> str:
    """The name of the device a trainer trains on: the GPU's model, or cpu."""
    device = torch.device(trainer.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class Folds:
    """The trial's fold workers, called alike whether they are actors or local objects."""

    def __init__(self, config: TrainConfig, setup: TrialSetup):
        self.actors = setup.actor_options is not None
        if not self.actors:  # no GPUs: the folds share the trial's own process
            self.workers = [FoldWorker(config, fold, setup) for fold in setup.folds]
            return
        group = get_current_placement_group()
        remote = ray.remote(FoldWorker)
        self.workers = [
            remote.options(
                **setup.actor_options,
                # Fold i gets bundle i of the trial's placement group (prepare.fold_placement;
                # Tune leaves the empty head bundle out of the group).
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, i) if group else None,
            ).remote(config, fold, setup)
            for i, fold in enumerate(setup.folds)
        ]

    def call(self, method: str, per_worker: list | None = None) -> list:
        args = [(a,) for a in per_worker] if per_worker is not None else [()] * len(self.workers)
        if not self.actors:
            return [getattr(w, method)(*a) for w, a in zip(self.workers, args, strict=True)]
        calls = [getattr(w, method).remote(*a) for w, a in zip(self.workers, args, strict=True)]
        return ray.get(calls)


def run_trial(overrides: dict, *, setup: TrialSetup) -> None:
    """The trainable: the configuration `setup.base` with the trial's `overrides`, trained on
    every fold in lockstep, each epoch logged, reported and (when due) checkpointed."""
    config = setup.base.replace(**train_overrides(overrides))
    trial_id = tune.get_context().get_trial_id()
    folds, store_hash = setup.folds, setup.store_hash
    versions = environment(setup.code)
    workers = Folds(config, setup)
    checkpoint = tune.get_checkpoint()
    # Epochs completed; a resumed or retried trial continues from its checkpoint.
    done = restore(workers, checkpoint, folds) if checkpoint is not None else 0
    for epoch in range(done + 1, config.epochs + 1):
        results = workers.call("run_epoch")
        by_fold = {fold: metrics for fold, (metrics, _) in zip(folds, results, strict=True)}
        nodes = {fold: node for fold, (_, node) in zip(folds, results, strict=True)}
        # The fold log first: an epoch Tune has seen is always in the log.
        write_fold_log(setup.fold_log, trial_id, fold_log_entry(by_fold, nodes, versions))
        report = epoch_report(by_fold, setup.score_metrics)
        report["epochs"] = config.epochs  # what the trial was asked to train (pruning test)
        if not checkpoint_due(config, epoch):
            tune.report(report)
            continue
        states = workers.call("state")
        with tempfile.TemporaryDirectory() as folder:
            for fold, state in zip(folds, states, strict=True):
                (Path(folder) / checkpoint_name(fold)).write_bytes(state)
            meta = {"epoch": epoch, "store_hash": store_hash, "versions": VERSIONS}
            (Path(folder) / "trial.json").write_text(json.dumps(meta))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def restore(workers: Folds, checkpoint: tune.Checkpoint, folds: tuple[str, ...]) -> int:
    """Load the trial's latest checkpoint into its folds and return its epoch. One that fails
    to load (a truncated file, a lost write) gives way to the one before it, with a warning:
    Tune keeps two (build_tuner), and the epochs between are trained again."""
    candidates = [checkpoint, *earlier_checkpoints(checkpoint)]
    for i, candidate in enumerate(candidates):
        try:
            with candidate.as_directory() as folder:
                states = [(Path(folder) / checkpoint_name(fold)).read_bytes() for fold in folds]
                epoch = json.loads((Path(folder) / "trial.json").read_text())["epoch"]
            workers.call("load", states)
        except Exception as error:  # any failure to load means: try the one before
            reason = " ".join(str(error).split())[:300]
            if i + 1 == len(candidates):
                raise RuntimeError(
                    f"no checkpoint of this trial could be loaded; the last: {reason}"
                ) from error
            logger.warning(
                "checkpoint %s could not be loaded (%s); trying %s",
                candidate.path, reason, candidates[i + 1].path,
            )  # fmt: skip
            continue
        return int(epoch)
    raise AssertionError("unreachable")


def earlier_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints older than `checkpoint`, newest first."""
    from pyarrow import fs

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    found = checkpoint.filesystem.get_file_info(fs.FileSelector(parent))
    names = sorted(
        (f.base_name for f in found if f.type == fs.FileType.Directory),
        reverse=True,
    )
    return [
        tune.Checkpoint(path=f"{parent}/{other}", filesystem=checkpoint.filesystem)
        for other in names
        if other.startswith("checkpoint_") and other < name
    ]
