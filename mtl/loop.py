"""The trainer contract and the one epoch loop, apart from any model: what a study's fold
workers, `python -m mtl.train` and the benches step a fold with, and a checkpoint's file.

The contract (`Trainer`): a trainer runs one epoch at a time (`run_epoch() -> EpochMetrics`)
and saves and restores its whole state (`state_dict()`, `load_state_dict()`); mtl's own is
`FoldTrainer` (mtl/trainer.py). This module loads no model library, so a process that steps
a scripted trainer never loads segmentation-models-pytorch; and torch only where a checkpoint
is written or read, so a trial process whose folds are actors on other processes never loads
it (seconds and hundreds of MB per trial on a cluster's head node).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mtl.config import TrainConfig
from mtl.schema import EpochMetrics

if TYPE_CHECKING:
    import torch


class Trainer(Protocol):
    """What `study`, the CLI and the benches need of a fold's trainer (see the module doc)."""

    epoch: int  # epochs completed
    device: torch.device | str  # where it trains (a fold's rows name the device)

    def run_epoch(self, progress: Callable[[int], None] | None = None) -> EpochMetrics: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def checkpoint_name(fold: str) -> str:
    """The file a fold's checkpoint is kept in, in any folder (a run's, a Tune checkpoint's)."""
    return f"fold-{fold}.pt"


def write_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save to `path` atomically: readers see the old file or the new one."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_bytes(state: dict) -> bytes:
    """A fold's state as the bytes of a checkpoint file (to send from a worker on another
    node)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_checkpoint(source: str | os.PathLike | bytes) -> dict:
    """A fold's state from a checkpoint file or its bytes, on the CPU: RNG states stay CPU
    tensors, and the trainer moves the rest to its device.

    weights_only: a checkpoint holds tensors and plain containers, never pickled code.
    """
    import torch

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return torch.load(source, map_location="cpu", weights_only=True)


def checkpoint_due(config: TrainConfig, epoch: int) -> bool:
    """Whether a fold (or a trial) checkpoints after `epoch`: every `checkpoint_every`
    epochs and after the last one."""
    return epoch % config.checkpoint_every == 0 or epoch == config.epochs


def train_epochs(
    trainer: Trainer,
    epochs: int,
    *,
    save: Callable[[], object] | None = None,
    due: Callable[[int], bool] = lambda epoch: True,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[EpochMetrics]:
    """The one loop over a fold's epochs: from the trainer's epoch to `epochs`, train one
    epoch, `save()` when `due(epoch)`, call `on_epoch(metrics)`, and yield the metrics.

    A generator, so that callers step it as they need: the CLI runs it to the end, a
    study's fold worker one epoch per lockstep round. `progress(n)` after every batch.
    """
    while trainer.epoch < epochs:
        metrics = trainer.run_epoch(progress)
        if save is not None and due(metrics.epoch):
            save()
        if on_epoch is not None:
            on_epoch(metrics)
        yield metrics
