"""The three task losses: segmentation (Dice or BCE), pattern cross-entropy, intensity BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss

from mtl.config import check_registry
from mtl.model import MultiTaskOutput

_dice = DiceLoss(mode="multilabel", from_logits=True)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over both classes (cells and background), as the original study.

    One mask logit z gives the foreground probability sigmoid(z) and the background
    probability sigmoid(-z); smp's multilabel Dice over the two channels, summed over batch
    and pixels, is 1 - mean(Dice_fg, Dice_bg).
    """
    target = target.float()
    return _dice(torch.cat([logits, -logits], 1), torch.cat([target, 1 - target], 1))


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy on the mask logits."""
    return F.binary_cross_entropy_with_logits(logits, target.float())


# TrainConfig.seg_loss: name -> loss of (mask logits, mask).
SEG_LOSSES = {"dice": dice_loss, "bce": bce_loss}
check_registry("seg_loss", SEG_LOSSES)


def task_losses(
    output: MultiTaskOutput, batch: dict[str, torch.Tensor], seg_loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three scalar losses of a batch, in `mtl.schema.TASKS` order.

    Separate tensors, not one stacked tensor: GradNorm differentiates each on its own, and
    the gradient of a slice of a stack would run back through all three tasks' graphs.
    """
    if seg_loss not in SEG_LOSSES:
        raise ValueError(f"unknown seg_loss {seg_loss!r}; expected one of {', '.join(SEG_LOSSES)}")
    return (
        SEG_LOSSES[seg_loss](output.mask.float(), batch["mask"]),
        F.cross_entropy(output.pattern.float(), batch["pattern"]),
        F.binary_cross_entropy_with_logits(output.intensity.float(), batch["intensity"]),
    )
