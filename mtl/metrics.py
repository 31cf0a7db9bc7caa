"""What an epoch measured, per split, and the running sums that produce it.

`EpochMetrics` is the only thing `study` receives from a fold: a frozen dataclass per epoch
with the training split (running means over the epoch) and the validation split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtl.losses import TASKS
from mtl.model import MultiTaskOutput


@dataclass(frozen=True, kw_only=True)
class SplitMetrics:
    patches: int
    loss: float  # the unweighted sum of the three task losses
    loss_seg: float
    loss_pattern: float
    loss_intensity: float
    pixel_acc: float  # both classes, as the original study's "mask accuracy"
    pattern_acc: float
    intensity_acc: float


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    epoch: int  # 1-based
    train: SplitMetrics
    val: SplitMetrics
    weights: tuple[float, ...]  # task weights at the end of the epoch, TASKS order
    skipped_steps: int = 0  # steps with a non-finite task loss, left out of the update
    seconds: float  # training and validation wall time

    def rows(self) -> list[dict]:
        """One flat row per split, the layout of epochs.parquet."""
        shared = {f"weight_{task}": w for task, w in zip(TASKS, self.weights, strict=True)}
        shared["skipped_steps"] = self.skipped_steps
        shared["seconds"] = self.seconds
        return [
            {"epoch": self.epoch, "split": split, **dataclasses.asdict(metrics), **shared}
            for split, metrics in (("train", self.train), ("val", self.val))
        ]


class RunningSums:
    """Per-epoch sums kept on the device, so that a step needs no host synchronisation."""

    _FIELDS = ("patches", "seg", "pattern", "intensity", "pixels_right", "pixels",
               "pattern_right", "intensity_right")  # fmt: skip

    def __init__(self, device: torch.device, threshold: float = 0.5):
        self.sums = torch.zeros(len(self._FIELDS), dtype=torch.float64, device=device)
        self.logit_threshold = torch.logit(torch.tensor(threshold)).item()

    @torch.no_grad()
    def update(
        self,
        output: MultiTaskOutput,
        batch: dict[str, torch.Tensor],
        losses: Sequence[torch.Tensor],
    ) -> None:
        n = batch["pattern"].shape[0]
        losses = torch.stack([loss.detach() for loss in losses])
        predicted_mask = output.mask > self.logit_threshold
        update = torch.stack(
            [
                torch.tensor(n, device=losses.device, dtype=torch.float64),
                *(losses.double() * n),
                (predicted_mask == batch["mask"].bool()).sum().double(),
                torch.tensor(predicted_mask.numel(), device=losses.device, dtype=torch.float64),
                (output.pattern.argmax(1) == batch["pattern"]).sum().double(),
                ((output.intensity > 0) == batch["intensity"].bool()).sum().double(),
            ]
        )
        self.sums += update

    def result(self) -> SplitMetrics:
        s = dict(zip(self._FIELDS, self.sums.tolist(), strict=True))
        n = max(s["patches"], 1.0)
        return SplitMetrics(
            patches=int(s["patches"]),
            loss=(s["seg"] + s["pattern"] + s["intensity"]) / n,
            loss_seg=s["seg"] / n,
            loss_pattern=s["pattern"] / n,
            loss_intensity=s["intensity"] / n,
            pixel_acc=s["pixels_right"] / max(s["pixels"], 1.0),
            pattern_acc=s["pattern_right"] / n,
            intensity_acc=s["intensity_right"] / n,
        )
