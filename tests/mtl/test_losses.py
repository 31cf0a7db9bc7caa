import math

import pytest
import torch

from mtl.losses import bce_loss, dice_loss, task_losses
from mtl.model import MultiTaskOutput

# Four pixels: probabilities 0.5, 0.5, 0.75, 0.25; three cells and one background pixel.
LOGITS = torch.tensor([0.0, 0.0, math.log(3), -math.log(3)]).view(1, 1, 2, 2)
TARGET = torch.tensor([1, 1, 1, 0], dtype=torch.uint8).view(1, 1, 2, 2)


def test_dice_is_soft_dice_over_both_classes():
    # cells:      2 * (0.5 + 0.5 + 0.75) / (2.0 + 3) = 0.7
    # background: 2 * 0.75 / (2.0 + 1)             = 0.5
    # loss = 1 - mean(0.7, 0.5) = 0.4 (foreground-only Dice would give 0.3)
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(0.4, abs=1e-6)


def test_dice_of_a_perfect_prediction_is_zero():
    logits = (TARGET.float() * 2 - 1) * 50
    assert dice_loss(logits, TARGET).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_matches_the_hand_computed_mean():
    expected = -(2 * math.log(0.5) + 2 * math.log(0.75)) / 4  # 0.490415
    assert bce_loss(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)


def test_task_losses_are_seg_pattern_intensity():
    output = MultiTaskOutput(
        mask=LOGITS,
        pattern=torch.tensor([[0.0, math.log(2)] + [0.0] * 5]),  # softmax p(class 1) = 2/8
        intensity=torch.tensor([0.0]),
    )
    batch = {"mask": TARGET, "pattern": torch.tensor([1]), "intensity": torch.tensor([1.0])}
    seg, pattern, intensity = (loss.item() for loss in task_losses(output, batch, "dice"))
    assert seg == pytest.approx(0.4, abs=1e-6)
    assert pattern == pytest.approx(-math.log(2 / 8), abs=1e-6)
    assert intensity == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="dice, bce"):
        task_losses(output, batch, "focal")
