import pytest
import torch

from mtl.metrics import RunningSums
from mtl.model import MultiTaskOutput


def test_running_sums_give_hand_counted_accuracies():
    sums = RunningSums(torch.device("cpu"), threshold=0.5)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    mask[0, 0, 0, 0] = 1  # one cell pixel in patch 0
    logits = torch.full((2, 1, 2, 2), -1.0)
    logits[0, 0, 0, 0] = 2.0  # right
    logits[1, 0, 1, 1] = 0.5  # wrong: predicted cell on background
    output = MultiTaskOutput(
        mask=logits,
        pattern=torch.tensor([[5.0, 0, 0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0, 0, 0]]),
        intensity=torch.tensor([1.0, 1.0]),
    )
    batch = {"mask": mask, "pattern": torch.tensor([0, 4]), "intensity": torch.tensor([1.0, 0.0])}
    sums.update(output, batch, torch.tensor([0.3, 1.0, 0.5]).unbind())
    sums.update(output, batch, torch.tensor([0.1, 2.0, 0.7]).unbind())
    result = sums.result()
    assert result.patches == 4
    assert result.pixel_acc == pytest.approx(7 / 8)
    assert result.pattern_acc == pytest.approx(0.5)
    assert result.intensity_acc == pytest.approx(0.5)
    assert result.loss_seg == pytest.approx(0.2)
    assert result.loss == pytest.approx(0.2 + 1.5 + 0.6)
