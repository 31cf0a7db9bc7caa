"""Training a subset of the tasks (`TrainConfig.tasks`): the single-task baselines and any
pair. Only the present tasks' losses are trained and balanced; the absent tasks' heads get
no gradient and their metrics are null, never zero."""

import math

import pyarrow.parquet as pq
import pytest
import torch

from mtl import FoldTrainer, TrainConfig, parse_overrides
from mtl.metrics import RunningSums
from mtl.schema import TASK_METRICS, TASKS
from mtl.tables import epoch_frame, write_parquet


def test_tasks_are_a_nonempty_subset_in_one_order():
    assert TrainConfig().tasks == TASKS
    assert TrainConfig(tasks=("intensity", "seg")).tasks == ("seg", "intensity")
    assert TrainConfig(tasks="intensity,seg").tasks == ("seg", "intensity")  # as --set has it
    assert parse_overrides(["tasks=pattern"]) == {"tasks": ("pattern",)}
    assert parse_overrides(["tasks=seg,intensity"]) == {"tasks": ("seg", "intensity")}
    with pytest.raises(ValueError, match="tasks must name at least one of seg, pattern"):
        TrainConfig(tasks=())
    with pytest.raises(ValueError, match="tasks: 'patern' is not a task.*did you mean 'pattern'"):
        TrainConfig(tasks=("patern",))
    with pytest.raises(ValueError, match="tasks names 'seg' twice"):
        TrainConfig(tasks=("seg", "seg"))


def _heads(model) -> dict[str, list[torch.nn.Parameter]]:
    seg = [*model.unet.decoder.parameters(), *model.unet.segmentation_head.parameters()]
    return {
        "seg": seg,
        "pattern": list(model.pattern_head.parameters()),
        "intensity": list(model.intensity_head.parameters()),
    }


@pytest.mark.parametrize("tasks", [("pattern",), ("seg",), ("seg", "intensity")])
@pytest.mark.parametrize("balancer", ["equal", "gradnorm"])
def test_absent_heads_get_no_gradient(tiny_config, tasks, balancer):
    trainer = FoldTrainer(tiny_config.replace(tasks=tasks, balancer=balancer), "A")
    batch = trainer._to_device(next(iter(trainer.train_loader)))
    assert trainer.train_step(batch, RunningSums(trainer.device)) == ()
    for task, parameters in _heads(trainer.model).items():
        got = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in parameters]
        assert all(got) if task in tasks else not any(got), task
    encoder = list(trainer.model.unet.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder)
    assert trainer.balancer.num_tasks == len(tasks)


def test_absent_metrics_are_null_in_the_epoch_and_in_epochs_parquet(tiny_config, tmp_path):
    trainer = FoldTrainer(tiny_config.replace(tasks=("pattern",), balancer="gradnorm"), "A")
    metrics = trainer.run_epoch()
    for split in (metrics.train, metrics.val):
        assert math.isfinite(split.pattern_acc) and split.loss == split.loss_pattern
        for task in ("seg", "intensity"):
            for name in TASK_METRICS[task]:
                assert math.isnan(getattr(split, name)), name
        assert not split.intensity_confusion and not split.patient_intensity_confusion
    assert math.isfinite(metrics.val.patient_pattern_acc)
    weights = dict(zip(TASKS, metrics.weights, strict=True))
    assert weights["pattern"] == 1.0 and math.isnan(weights["seg"])
    assert {row["task"] for row in metrics.confusion_rows()} == {"pattern"}

    write_parquet(epoch_frame("t", "A", [metrics]), tmp_path / "epochs.parquet", "epochs")
    table = pq.read_table(tmp_path / "epochs.parquet")
    for name in ("pixel_acc", "dice", "loss_seg", "intensity_acc", "weight_seg"):
        assert table.column(name).null_count == 2, name  # both splits
    assert table.column("pattern_acc").null_count == 0
    assert table.column("weight_pattern").null_count == 1  # weights: the training row's
