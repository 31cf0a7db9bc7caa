"""The Tune trainable: one trial is one configuration, trained on every fold in lockstep.

Each fold is a `FoldWorker` (study/driver/folds.py) around mtl's `FoldTrainer`: a Ray actor
in the trial's placement group (one GPU or a fraction of one) on a cluster, or an object in
the trial's own process on a machine without GPUs. Every epoch each fold trains and
validates once; the trial reports the fold-mean (cross-validated) metrics that ASHA and
Optuna see plus every fold's score, writes every fold's rows to its fold log
(study/results/foldlog.py), and every `checkpoint_every` epochs saves a checkpoint holding
all folds.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import ray
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mtl import (
    TrainConfig,
    checkpoint_due,
    checkpoint_name,
)
from study.driver.checkpoints import trial_checkpoints
from study.driver.folds import FoldWorker, TrialSetup
from study.results.foldlog import epoch_report, fold_log_entry, write_fold_log
from study.results.tables import train_overrides

logger = logging.getLogger(__name__)


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

    def call_first(self, method: str):
        """`method` of the first fold's worker alone."""
        first = self.workers[0]
        return ray.get(getattr(first, method).remote()) if self.actors else getattr(first, method)()

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
    workers = Folds(config, setup)
    versions = workers.call_first("versions")  # a fold's process: where training runs
    checkpoint_versions = {  # what study.results.export records in model.json
        "torch": versions["torch"], "segmentation_models_pytorch": versions["smp"],
    }  # fmt: skip
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
            meta = {"epoch": epoch, "store_hash": store_hash, "versions": checkpoint_versions}
            (Path(folder) / "trial.json").write_text(json.dumps(meta))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def restore(workers: Folds, checkpoint: tune.Checkpoint, folds: tuple[str, ...]) -> int:
    """Load the trial's latest checkpoint into its folds and return its epoch. One that fails
    to load (a truncated file, a lost write) gives way to the one before it, with a warning:
    a running trial keeps two (study/driver/checkpoints.py), and the epochs between are
    trained again (an epoch's fold log is replaced, never doubled)."""
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
    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    return [
        tune.Checkpoint(path=path, filesystem=checkpoint.filesystem)
        for path in reversed(trial_checkpoints(checkpoint.filesystem, parent))
        if path.rstrip("/").rsplit("/", 1)[1] < name
    ]
