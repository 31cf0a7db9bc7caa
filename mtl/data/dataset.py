"""Batches straight from the memory-mapped store: uint8 on the host, normalised on the device.

The batch sampler lives in the main process and decides everything random about an epoch
(order, and the seed of each batch's augmentation) from (seed, epoch) alone, so an epoch can
be replayed exactly, whatever the number of loader workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mtl.data.store import PatchStore
from mtl.labels import INTENSITIES, PATTERNS


@dataclass(frozen=True)
class BatchRequest:
    """What a worker needs to build one batch: dataset positions and an augmentation seed."""

    items: np.ndarray
    seed: int | None = None


class EpochBatches(Sampler):
    """Batches of dataset positions: shuffled by (seed, epoch) for training, in order otherwise."""

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # Training drops the last partial batch: a batch of one breaks BatchNorm.
        full, rest = divmod(self.size, self.batch_size)
        return full if self.shuffle else full + bool(rest)

    def __iter__(self) -> Iterator[BatchRequest]:
        if not self.shuffle:
            for start in range(0, self.size, self.batch_size):
                yield BatchRequest(np.arange(start, min(start + self.batch_size, self.size)))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size)
        seeds = rng.integers(0, 2**31, len(self))
        for b in range(len(self)):
            items = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield BatchRequest(items, int(seeds[b]))


class PatchDataset(Dataset):
    """The rows `rows` of a store as (image, mask, pattern, intensity) tensors.

    `__getitems__` reads a whole batch with one fancy index into the memory map (the
    DataLoader calls it when it exists); images stay uint8 until they reach the model.
    """

    def __init__(self, store: PatchStore, rows: np.ndarray, augment=None):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.augment = augment
        index = store.index.iloc[self.rows]
        self.patterns = torch.tensor(index.pattern.map(PATTERNS.index).to_numpy(), dtype=torch.long)
        self.intensities = torch.tensor(
            index.intensity.map(INTENSITIES.index).to_numpy(), dtype=torch.float32
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__(BatchRequest(np.array([i])))

    def __getitems__(self, request: BatchRequest) -> dict[str, torch.Tensor]:
        items = np.asarray(request.items)
        rows = self.rows[items]
        order = np.argsort(rows)  # ascending reads are kinder to the page cache
        images = np.empty((len(rows), *self.store.images.shape[1:]), np.uint8)
        masks = np.empty_like(images)
        images[order] = self.store.images[rows[order]]
        masks[order] = self.store.masks[rows[order]]
        if self.augment is not None and request.seed is not None:
            self.augment.set_random_state(
                np.random.default_rng(request.seed), random.Random(request.seed)
            )
            for i in range(len(images)):
                out = self.augment(image=images[i], mask=masks[i])
                images[i], masks[i] = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(images).unsqueeze(1),
            "mask": torch.from_numpy(masks).unsqueeze(1),
            "pattern": self.patterns[items],
            "intensity": self.intensities[items],
        }


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches."""
    return batch


def _init_worker(worker_id: int) -> None:
    # Workers share the machine with the training process: one thread each.
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def make_loader(
    dataset: PatchDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose `batch_sampler.set_epoch(epoch)` fixes the order of the next epoch."""
    return DataLoader(
        dataset,
        batch_sampler=EpochBatches(len(dataset), batch_size, shuffle=shuffle, seed=seed),
        collate_fn=collate_batch,
        num_workers=num_workers,
        worker_init_fn=_init_worker if num_workers else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
