"""Training of one fold: `train_fold(config, fold)` yields one EpochMetrics per epoch."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtl.balancing import build_balancer
from mtl.config import TrainConfig
from mtl.data import PatchDataset, assign_folds, collate_batch, fold_names, open_store
from mtl.losses import task_losses
from mtl.metrics import EpochMetrics, RunningSums
from mtl.model import MultiTaskUNet


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def split_rows(config: TrainConfig, index, fold: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the training and validation patches when `fold` is held out."""
    names = fold_names(config.num_folds)
    if fold not in names:
        raise ValueError(f"fold must be one of {', '.join(names)}, got {fold!r}")
    folds = assign_folds(index, config.folds, k=config.num_folds, seed=config.fold_seed)
    held_out = index.patient.map(folds).to_numpy() == fold
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def train_fold(config: TrainConfig, fold: str) -> Iterator[EpochMetrics]:
    """Train on every fold but `fold`, validate on `fold`, one EpochMetrics per epoch."""
    if not config.data:
        raise ValueError("config.data must name a patch store (python -m mtl.data)")
    store = open_store(config.data)
    if store.size != config.image_size:
        raise ValueError(
            f"image_size is {config.image_size} but the store {config.data} holds "
            f"{store.size}x{store.size} patches"
        )
    train_rows, val_rows = split_rows(config, store.index, fold)
    if len(train_rows) < config.batch_size:
        raise ValueError(f"fold {fold}: {len(train_rows)} training patches, fewer than a batch")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = MultiTaskUNet.from_config(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    balancer = build_balancer(
        config.balancer, model.shared_parameters(), alpha=config.alpha, lr=config.balancer_lr
    ).to(device)
    train_data = PatchDataset(store, train_rows)
    val_loader = _loader(PatchDataset(store, val_rows), config, shuffle=False)

    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        # The data order depends on (seed, epoch) only, so any epoch can be replayed.
        order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        train_loader = _loader(train_data, config, shuffle=True, generator=order)
        model.train()
        skipped_before = int(balancer.skipped_steps)
        train_sums = RunningSums(device, config.threshold)
        for batch in train_loader:
            batch = _to_device(batch, device)
            with _autocast(device):
                output = model(batch["image"])
            losses = task_losses(output, batch, config.seg_loss)
            optimizer.zero_grad(set_to_none=True)
            balancer.backward(losses)
            optimizer.step()
            train_sums.update(output, batch, losses)
        train = train_sums.result()
        balancer.end_epoch([train.loss_seg, train.loss_pattern, train.loss_intensity])
        val = evaluate(model, val_loader, config, device)
        yield EpochMetrics(
            epoch=epoch,
            train=train,
            val=val,
            weights=tuple(balancer.weights.tolist()),
            skipped_steps=int(balancer.skipped_steps) - skipped_before,
            seconds=time.perf_counter() - start,
        )


@torch.inference_mode()
def evaluate(model: MultiTaskUNet, loader: DataLoader, config: TrainConfig, device):
    model.eval()
    sums = RunningSums(device, config.threshold)
    for batch in loader:
        batch = _to_device(batch, device)
        with _autocast(device):
            output = model(batch["image"])
        sums.update(output, batch, task_losses(output, batch, config.seg_loss))
    return sums.result()


def _loader(dataset, config: TrainConfig, *, shuffle: bool, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=shuffle,  # a training batch of one breaks BatchNorm
        collate_fn=collate_batch,
        num_workers=config.num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _autocast(device: torch.device):
    # bf16 on CUDA needs no GradScaler; on a CPU autocast is much slower, so it stays fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
