"""One fold of a trial, wherever it runs: a Ray actor of the trial's placement group, or an
object in the trial's own process (study/driver/trial.py). Apart from the trainable so that a
fold actor imports neither Ray Tune nor a model library it does not use (seconds per actor);
torch is imported where a fold is made, by its trainer, so that a trial whose folds are actors
never loads it, nor a fold whose trainer is model-free (mtl.ScriptedTrainer).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import ray

from mtl import (
    EpochMetrics,
    TrainConfig,
    Trainer,
    checkpoint_bytes,
    open_store,
    read_checkpoint,
    split_label,
    train_epochs,
)
from study.provenance import environment
from study.storage import fetch_store, store_cache


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
        self.trainer_class, self.offload = setup.trainer or fold_trainer(), setup.offload
        if "torch" in sys.modules:  # a model-free trainer (a test's, a bench's) loads none
            import torch

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
        self.trainer: Trainer | None = self.trainer_class(self.config, self.letter)
        self.parked: bytes | None = None  # the offloaded state, between epochs
        self.device_name = _device_name(self.trainer)
        self.code = setup.code

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
        import torch

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

    def versions(self) -> dict:
        """The code and library versions and the GPU of this fold's process (provenance):
        where the fold trains, which a trial's own process (torch-free when its folds are
        actors, perhaps on another node) would not tell. A fold whose trainer loaded no torch
        used no GPU: its GPU is None, and torch is not loaded to say so."""
        return environment(self.code, gpu="torch" in sys.modules)

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
    if str(trainer.device) == "cpu":
        return "cpu"
    import torch

    device = torch.device(trainer.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
