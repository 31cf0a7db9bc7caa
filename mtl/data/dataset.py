"""Batches straight from the memory-mapped store: uint8 on the host, normalised on the device."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mtl.data.store import PatchStore
from mtl.labels import INTENSITIES, PATTERNS


class PatchDataset(Dataset):
    """The rows `rows` of a store as (image, mask, pattern, intensity) tensors.

    `__getitems__` reads a whole batch with one fancy index into the memory map, which is
    what the DataLoader calls when it exists; images stay uint8 until they reach the model.
    """

    def __init__(self, store: PatchStore, rows: np.ndarray):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        index = store.index.iloc[self.rows]
        self.patterns = torch.tensor(index.pattern.map(PATTERNS.index).to_numpy(), dtype=torch.long)
        self.intensities = torch.tensor(
            index.intensity.map(INTENSITIES.index).to_numpy(), dtype=torch.float32
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        items = np.asarray(items)
        rows = self.rows[items]
        order = np.argsort(rows)  # ascending reads are kinder to the page cache
        images = np.empty((len(rows), *self.store.images.shape[1:]), np.uint8)
        masks = np.empty_like(images)
        images[order] = self.store.images[rows[order]]
        masks[order] = self.store.masks[rows[order]]
        return {
            "image": torch.from_numpy(images).unsqueeze(1),
            "mask": torch.from_numpy(masks).unsqueeze(1),
            "pattern": self.patterns[items],
            "intensity": self.intensities[items],
        }


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches."""
    return batch
