"""A step with a non-finite loss changes nothing; a fold that keeps producing them fails."""

import math

import pytest
import torch

import mtl.trainer
from mtl import FoldTrainer
from mtl.metrics import RunningSums


def _state(trainer: FoldTrainer) -> dict[str, torch.Tensor]:
    """Every number a step could change: parameters, buffers (BatchNorm statistics), the
    optimizer's and the balancer's states."""
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    for i, group in enumerate(trainer.optimizer.state.values()):
        state |= {f"adam.{i}.{k}": torch.as_tensor(v).clone() for k, v in group.items()}
    state |= {f"balancer.{k}": v.clone() for k, v in trainer.balancer.state_dict().items()
              if isinstance(v, torch.Tensor) and k != "skipped_steps"}  # fmt: skip
    return state


def _poison(monkeypatch, task: int, value: float, calls: set[int] | None = None) -> None:
    """Make task `task`'s loss `value` in the calls numbered in `calls` (all if None)."""
    real, count = mtl.trainer.task_losses, [0]

    def losses(output, batch, seg_loss):
        found = list(real(output, batch, seg_loss))
        count[0] += 1
        if calls is None or count[0] in calls:
            found[task] = found[task] * value
        return tuple(found)

    monkeypatch.setattr(mtl.trainer, "task_losses", losses)


@pytest.mark.parametrize("balancer", ["equal", "gradnorm"])
def test_an_infinite_loss_leaves_every_number_as_it_was(tiny_config, monkeypatch, balancer):
    trainer = FoldTrainer(tiny_config.replace(balancer=balancer), "A")
    batches = iter(trainer.train_loader)
    sums = RunningSums(trainer.device)
    trainer.model.train()
    assert trainer.train_step(next(batches), sums) == ()  # a real step: Adam has state
    before = _state(trainer)
    _poison(monkeypatch, task=1, value=math.inf)
    assert trainer.train_step(next(batches), sums) == ("pattern",)
    after = _state(trainer)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed  # bit-identical: weights, BatchNorm statistics, Adam, balancer
    assert sums.steps == 1 and torch.isfinite(sums.losses).all()  # the skipped step is out


def test_a_fold_with_non_finite_losses_everywhere_fails_naming_fold_epoch_task(
    tiny_config, monkeypatch
):
    _poison(monkeypatch, task=0, value=math.nan)
    trainer = FoldTrainer(tiny_config, "B")
    with pytest.raises(FloatingPointError, match=r"fold B, epoch 1: (\d+) of \1 training steps"):
        trainer.run_epoch()
    with pytest.raises(FloatingPointError, match="seg loss in"):
        FoldTrainer(tiny_config, "B").run_epoch()


def test_one_skipped_step_within_the_allowed_share_is_counted(tiny_config, monkeypatch):
    _poison(monkeypatch, task=2, value=math.inf, calls={2})
    trainer = FoldTrainer(tiny_config.replace(max_skipped_share=0.5), "A")
    metrics = trainer.run_epoch()
    assert metrics.skipped_steps == 1
    assert math.isfinite(metrics.train.loss) and math.isfinite(metrics.val.loss)
    assert metrics.rows()[0]["skipped_steps"] == 1


def test_non_finite_validation_outputs_fail_the_fold(tiny_config, monkeypatch):
    # Every training step is fine; validation is poisoned (calls after the training batches).
    trainer = FoldTrainer(tiny_config, "C")
    train_batches = len(trainer.train_loader)
    _poison(monkeypatch, task=2, value=math.nan, calls=set(range(train_batches + 1, 10_000)))
    with pytest.raises(FloatingPointError, match="fold C, epoch 1: the validation intensity loss"):
        trainer.run_epoch()
