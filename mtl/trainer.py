"""mtl's trainer of one fold (`FoldTrainer`), which keeps the contract of mtl/loop.py.

A trainer is opened from a configuration and a fold (`FoldTrainer(config, fold)`, or
`open_trainer(config, fold, checkpoint)` to continue a checkpoint), runs one epoch at a time
(`run_epoch() -> EpochMetrics`), and saves and restores its whole state (`state_dict()`,
`load_state_dict()`). `mtl.loop.train_epochs` is the one loop over epochs, with checkpoints
and a per-epoch callback: `python -m mtl.train`, the study's fold workers and the benches all
train through it. Test doubles implement the same five members.

`FoldTrainer` holds the fold's whole state (model, the network's optimizer, the balancer
with its own optimizer and L(0), the RNG state, the epoch); its checkpoint is read back with
`torch.load(weights_only=True)`. Data order and augmentation are functions of (seed, epoch),
so a fold resumed from the checkpoint of epoch k trains epochs k+1.. on a CPU exactly as the
uninterrupted run does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mtl.balancing import balancer_from_config
from mtl.config import TrainConfig, check_registry
from mtl.data import (
    PatchDataset,
    PatchStore,
    build_augmentation,
    make_loader,
    open_store,
    split_rows,
)
from mtl.loop import read_checkpoint, write_checkpoint
from mtl.losses import task_losses
from mtl.metrics import RunningSums, majority_votes
from mtl.model import MultiTaskUNet
from mtl.schema import TASKS, EpochMetrics, SplitMetrics

CHECKPOINT_VERSION = 1


def _auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA device is available")
    return torch.device("cuda")


# TrainConfig.device: name -> the torch device it means on this machine.
DEVICES = {"auto": _auto_device, "cpu": lambda: torch.device("cpu"), "cuda": _cuda_device}
check_registry("device", DEVICES)


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    return DEVICES[name]()


def open_checked_store(config: TrainConfig) -> PatchStore:
    if not config.data:
        raise ValueError("config.data must name a patch store (python -m mtl.data)")
    store = open_store(config.data)
    if store.size != config.image_size:
        raise ValueError(
            f"image_size is {config.image_size} but the store {config.data} holds "
            f"{store.size}x{store.size} patches"
        )
    return store


# TrainConfig.lr_schedule: name -> the factor on lr during epoch e (1-based) of E epochs.
# constant (the original; epoch k of a longer run equals a k-epoch run, which ASHA and an
# epochs search rely on) or cosine decay to zero over the E epochs, per epoch.
LR_SCHEDULES = {
    "constant": lambda epoch, epochs: 1.0,
    "cosine": lambda epoch, epochs: 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs)),
}
check_registry("lr_schedule", LR_SCHEDULES)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The network's learning rate during `epoch` (1-based); a function of the epoch alone."""
    return config.lr * LR_SCHEDULES[config.lr_schedule](epoch, config.epochs)


class Waited:
    """Iterates a loader and adds up the time spent waiting for its batches: a data loader
    that cannot keep up shows as a large share of the epoch (`EpochMetrics.data_seconds`)."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch


class FoldTrainer:
    """Trains on every fold but `fold` and validates on `fold`, one epoch per `run_epoch()`."""

    def __init__(self, config: TrainConfig, fold: str, store: PatchStore | None = None):
        self.config, self.fold = config, fold
        self.store = store or open_checked_store(config)
        train_rows, val_rows = split_rows(config, self.store.index, fold)
        if len(train_rows) < config.batch_size:
            raise ValueError(f"fold {fold}: {len(train_rows)} training patches, fewer than a batch")
        if not len(val_rows):
            raise ValueError(f"fold {fold} has no patients in {config.data}")
        self.val_index = self.store.index.iloc[val_rows].reset_index(drop=True)

        self.device = resolve_device(config.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: training drops the last batch
        torch.manual_seed(config.seed)
        self.model = MultiTaskUNet.from_config(config).to(self.device)
        if cuda:
            self.model = self.model.channels_last()
        # Fused Adam (one kernel for all parameters) on the CPU too: 8% off a training step
        # of the small model there, at 1 and 2 threads (bench/cpu_step.py).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=fused)
        self.balancer = balancer_from_config(config, self.model).to(self.device)
        # Positions in TASKS of the tasks trained: the balancer sees their losses only.
        self.trained = [TASKS.index(task) for task in config.tasks]
        options = {"num_workers": config.num_workers, "pin_memory": cuda, "seed": config.seed}
        augment = build_augmentation(config.augment)
        self.train_loader = make_loader(
            PatchDataset(self.store, train_rows, augment),
            config.batch_size,
            shuffle=True,
            **options,
        )
        self.val_loader = make_loader(
            PatchDataset(self.store, val_rows), config.batch_size, shuffle=False, **options
        )
        self.epoch = 0  # epochs completed
        self._buffers = list(self.model.buffers())  # BatchNorm's running statistics
        self._saved_buffers = [b.clone() for b in self._buffers]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train_loader) + len(self.val_loader)

    def run_epoch(self, progress: Callable[[int], None] | None = None) -> EpochMetrics:
        """Train one epoch, validate, and return its metrics. `progress(n)` after each batch."""
        start = time.perf_counter()
        self.epoch += 1
        # Data order and augmentation depend on (seed, epoch) only: any epoch can be replayed.
        self.train_loader.batch_sampler.set_epoch(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.epoch)
        self.model.train()
        sums = RunningSums(self.device, self.config.threshold)
        batches = Waited(self.train_loader)
        skipped: dict[str, int] = {}  # task -> steps skipped for its non-finite loss
        steps = 0
        for batch in batches:
            steps += 1
            for task in self.train_step(self._to_device(batch), sums):
                skipped[task] = skipped.get(task, 0) + 1
            if progress:
                progress(1)
        skipped_steps = steps - sums.steps
        if skipped_steps > self.config.max_skipped_share * steps:
            tasks = ", ".join(f"{task} loss in {n}" for task, n in skipped.items())
            raise FloatingPointError(
                f"fold {self.fold}, epoch {self.epoch}: {skipped_steps} of {steps} training "
                f"steps had a non-finite loss ({tasks}), more than max_skipped_share="
                f"{self.config.max_skipped_share:g}; the fold diverged"
            )
        train = sums.result().only(self.config.tasks)
        self.balancer.end_epoch([getattr(train, f"loss_{task}") for task in self.config.tasks])
        val = self.evaluate(progress)
        for task in self.config.tasks:
            if not math.isfinite(getattr(val, f"loss_{task}")):
                raise FloatingPointError(
                    f"fold {self.fold}, epoch {self.epoch}: the validation {task} loss is not "
                    "finite (the model's outputs are not); the fold diverged"
                )
        return EpochMetrics(
            epoch=self.epoch,
            train=train,
            val=val,
            weights=self._task_weights(),
            skipped_steps=skipped_steps,
            seconds=time.perf_counter() - start,
            data_seconds=batches.seconds,
        )

    def train_step(self, batch: dict[str, torch.Tensor], sums: RunningSums) -> tuple[str, ...]:
        """One optimisation step on `batch`, added to `sums`. A step with a non-finite task
        loss changes nothing (weights, optimizer and balancer states, BatchNorm statistics)
        and stays out of `sums`; it returns the names of those tasks (else ())."""
        # The forward pass updates BatchNorm's running statistics before the loss is known:
        # keep a copy to put back (one fused copy; the buffers are small).
        torch._foreach_copy_(self._saved_buffers, self._buffers)
        # FAMO's second forward replays this one's random numbers (EfficientNet's stochastic
        # depth): the losses then differ by the step alone.
        rng = self._rng_state() if self.balancer.wants_losses_after_step else None
        with self._autocast():
            output = self.model(batch["image"], split=self.balancer.needs_split)
        losses = task_losses(output, batch, self.config.seg_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.balancer.backward([losses[i] for i in self.trained], output.split)
        if self.balancer.nonfinite_tasks:
            torch._foreach_copy_(self._buffers, self._saved_buffers)
            return tuple(self.config.tasks[i] for i in self.balancer.nonfinite_tasks)
        self.optimizer.step()
        sums.update(output, batch, losses)
        if rng is not None:
            self._losses_after_step(batch, rng)
        return ()

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = self.device.type == "cuda"
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None

    @torch.no_grad()
    def _losses_after_step(self, batch: dict[str, torch.Tensor], rng: tuple) -> None:
        """The same batch's task losses after the optimizer step, for the balancer (FAMO):
        forward in training mode with the step's own random numbers, as the step's losses
        were; BatchNorm's running statistics and the generators' states are put back
        afterwards (this pass is a measurement, not a step)."""
        torch._foreach_copy_(self._saved_buffers, self._buffers)
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._autocast():
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.device)
            output = self.model(batch["image"])
        losses = task_losses(output, batch, self.config.seg_loss)
        torch._foreach_copy_(self._buffers, self._saved_buffers)
        self.balancer.after_step([losses[i] for i in self.trained])

    @torch.inference_mode()
    def evaluate(self, progress: Callable[[int], None] | None = None) -> SplitMetrics:
        """Validation metrics at patch level and by majority vote per image and patient."""
        self.model.eval()
        sums = RunningSums(self.device, self.config.threshold)
        pattern_probs, intensity_probs = [], []
        for batch in self.val_loader:
            batch = self._to_device(batch)
            with self._autocast():
                output = self.model(batch["image"])
            sums.update(output, batch, task_losses(output, batch, self.config.seg_loss))
            pattern_probs.append(output.pattern.float().softmax(1))
            intensity_probs.append(output.intensity.float().sigmoid())
            if progress:
                progress(1)
        votes = majority_votes(
            self.val_index,
            torch.cat(pattern_probs).cpu().numpy(),
            torch.cat(intensity_probs).cpu().numpy(),
        )
        return sums.result(**votes).only(self.config.tasks)

    def _task_weights(self) -> tuple[float, ...]:
        """The balancer's weights in TASKS order, NaN for a task not trained."""
        weights = dict(zip(self.config.tasks, self.balancer.weights.tolist(), strict=True))
        return tuple(weights.get(task, math.nan) for task in TASKS)

    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "fold": self.fold,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != CHECKPOINT_VERSION or state.get("fold") != self.fold:
            raise ValueError(
                f"checkpoint of fold {state.get('fold')!r} (version {state.get('version')}) "
                f"cannot resume fold {self.fold!r} (version {CHECKPOINT_VERSION})"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        # RNG states are CPU byte tensors whatever the device (read_checkpoint keeps them
        # there); a checkpoint from a machine with more GPUs restores the ones present.
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            for device, rng in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng.cpu(), device)
        self.epoch = int(state["epoch"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fold's state atomically (temporary file, then rename)."""
        return write_checkpoint(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(read_checkpoint(path))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def _autocast(self):
        # bf16 on CUDA needs no GradScaler; on a CPU autocast is much slower, so it stays fp32.
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda")


def open_trainer(
    config: TrainConfig, fold: str, checkpoint: str | os.PathLike | None = None
) -> FoldTrainer:
    """A fold's trainer, new or continuing the checkpoint of an earlier run."""
    trainer = FoldTrainer(config, fold)
    if checkpoint is not None:
        trainer.load(checkpoint)
    return trainer
