"""What several bench scripts share."""

from __future__ import annotations

import torch


def random_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """A training batch of random patches, masks and labels, as the loader delivers them."""
    g = torch.Generator().manual_seed(seed)
    data = {
        "image": torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (batch, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.randint(0, 7, (batch,), generator=g),
        "intensity": torch.randint(0, 2, (batch,), generator=g).float(),
    }
    return {key: value.to(device) for key, value in data.items()}
