"""The trainer contract and the one epoch loop, apart from any model: what a study's fold
workers, `python -m mtl.train` and the benches step a fold with, and a checkpoint's file.

The contract (`Trainer`): a trainer runs one epoch at a time (`run_epoch() -> EpochMetrics`)
and saves and restores its whole state (`state_dict()`, `load_state_dict()`); mtl's own is
`FoldTrainer` (mtl/trainer.py). This module loads no model library, so a process that steps
a scripted trainer never loads segmentation-models-pytorch; and torch only where a checkpoint
of tensors is written or read, so a trial process whose folds are actors on other processes
never loads it (seconds and hundreds of MB per trial on a cluster's head node), nor a process
that steps a model-free trainer (mtl.ScriptedTrainer: the tests' and benches' studies).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def checkpoint_name(fold: str) -> str:
    """The file a fold's checkpoint is kept in, in any folder (a run's, a Tune checkpoint's)."""
    return f"fold-{fold}.pt"


def write_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """The checkpoint's bytes (`checkpoint_bytes`) to `path` atomically: readers see the old
    file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if "torch" in sys.modules:
        import torch

        torch.save(state, tmp)  # streamed: a GPU model's state is not held twice in memory
    else:
        tmp.write_bytes(checkpoint_bytes(state))
    os.replace(tmp, path)
    return path


def checkpoint_bytes(state: dict) -> bytes:
    """A fold's state as the bytes of a checkpoint file (to send from a worker on another
    node): torch.save's file; or, in a process that never loaded torch (a model-free trainer,
    such as mtl.ScriptedTrainer, whose state can hold no tensor), a pickle of plain values,
    so that such a process needs no torch (seconds and hundreds of MB per process)."""
    if "torch" not in sys.modules:
        return pickle.dumps(state)
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class _PlainValues(pickle.Unpickler):
    """Reads a pickle of plain values (numbers, strings, lists, dicts), and refuses anything
    else: no class or function is ever looked up, so a file cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"a checkpoint without tensors holds plain values only, not {module}.{name}"
        )


def read_checkpoint(source: str | os.PathLike | bytes) -> dict:
    """A fold's state from a checkpoint file or its bytes, on the CPU: RNG states stay CPU
    tensors, and the trainer moves the rest to its device.

    weights_only: a checkpoint holds tensors and plain containers, never pickled code; one
    written without torch (checkpoint_bytes) is read without it, as plain values only.
    """
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as stream:
        if stream.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            stream.seek(0)
            return _PlainValues(stream).load()
        stream.seek(0)
        import torch

        return torch.load(stream, map_location="cpu", weights_only=True)


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
