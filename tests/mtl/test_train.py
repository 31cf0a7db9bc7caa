import dataclasses
import math
import os
import pickle

import pytest
import torch

from mtl.labels import PATTERNS
from mtl.loop import checkpoint_bytes, read_checkpoint, write_checkpoint
from mtl.schema import EpochMetrics
from mtl.train import train_fold
from mtl.trainer import FoldTrainer


def _without_time(metrics: EpochMetrics) -> EpochMetrics:
    return dataclasses.replace(metrics, seconds=0.0, data_seconds=0.0)


def test_train_fold_yields_one_epoch_metrics_per_epoch(tiny_config):
    epochs = list(train_fold(tiny_config, "B"))
    assert [m.epoch for m in epochs] == [1, 2]
    for metrics in epochs:
        assert isinstance(metrics, EpochMetrics)
        val = metrics.val.flat()
        # Recall is undefined (NaN) for a pattern absent from this two-patient fold.
        present = [sum(row) > 0 for row in metrics.val.pattern_confusion]
        recalls = [val.pop(f"recall_{p}") for p in PATTERNS]
        assert [math.isfinite(r) for r in recalls] == present
        assert all(math.isfinite(v) for v in val.values())
        for name in (
            "pixel_acc",
            "dice",
            "iou",
            "pattern_acc",
            "intensity_acc",
            "patient_pattern_acc",
        ):
            assert 0.0 <= val[name] <= 1.0
        assert metrics.val.patches == 30  # two of ten patients, 15 patches each
        assert sum(map(sum, metrics.val.pattern_confusion)) == 30
        assert math.isnan(metrics.train.patient_pattern_acc)  # votes are for validation
        assert metrics.weights == (1.0, 1.0, 1.0)
        assert [row["split"] for row in metrics.rows()] == ["train", "val"]


def test_the_same_seed_gives_identical_metrics(tiny_config):
    first = [_without_time(m) for m in train_fold(tiny_config, "A")]
    second = [_without_time(m) for m in train_fold(tiny_config, "A")]
    assert first == second


@pytest.mark.parametrize(
    "balancer",
    ["gradnorm", *(pytest.param(b, marks=pytest.mark.slow) for b in ("famo", "rlw", "nashmtl"))],
)
def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(balancer, tiny_config, tmp_path):
    # Two epochs: the one after the resumption needs the model's, Adam's, the balancer's
    # (GradNorm's L(0) and Adam, FAMO's logits and Adam, RLW's draws from the generator,
    # Nash-MTL's last weights) and the augmentation's random state of the checkpoint.
    config = tiny_config.replace(epochs=2, balancer=balancer, augment="basic")
    uninterrupted = [_without_time(m) for m in train_fold(config, "D")]

    interrupted = train_fold(config, "D", checkpoint_dir=tmp_path)
    assert _without_time(next(interrupted)) == uninterrupted[0]
    interrupted.close()  # stopped after epoch 1
    checkpoint = tmp_path / "fold-D.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1

    resumed = [_without_time(m) for m in train_fold(config, "D", checkpoint=checkpoint)]
    assert resumed == uninterrupted[1:]


def test_a_checkpoint_of_another_fold_is_refused(tiny_config, tmp_path):
    trainer = FoldTrainer(tiny_config, "A")
    path = trainer.save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="fold 'A'.*cannot resume fold 'B'"):
        FoldTrainer(tiny_config, "B").load(path)


def test_a_checkpoint_without_tensors_is_plain_values_and_runs_no_code(tmp_path):
    """Written where torch is loaded: torch.save's file; read back either way. Written
    without torch (checkpoint_bytes in a model-free trainer's process): a pickle of plain
    values, whose reader looks up no class or function."""
    state = {"epoch": 3, "history": [0.5, 0.25], "name": "A"}
    path = write_checkpoint(state, tmp_path / "fold-A.pt")
    assert path.read_bytes()[:4] == b"PK\x03\x04"  # this process has torch: its format
    assert read_checkpoint(path) == read_checkpoint(checkpoint_bytes(state)) == state
    plain = pickle.dumps(state)  # what a process without torch writes
    assert read_checkpoint(plain) == state
    (tmp_path / "fold-B.pt").write_bytes(plain)
    assert read_checkpoint(tmp_path / "fold-B.pt") == state
    with pytest.raises(pickle.UnpicklingError, match="plain values only, not posix.system"):
        read_checkpoint(pickle.dumps({"epoch": os.system}))


def test_bad_fold_and_mismatched_size_are_clear_errors(tiny_config):
    with pytest.raises(ValueError, match="fold must be one of A, B, C, D, E"):
        next(train_fold(tiny_config, "F"))
    with pytest.raises(ValueError, match="image_size is 96"):
        next(train_fold(tiny_config.replace(image_size=96), "A"))


def test_gradnorm_weights_are_reported_per_epoch(tiny_config):
    config = tiny_config.replace(balancer="gradnorm", alpha=1.5, balancer_lr=0.05)
    epochs = list(train_fold(config, "C"))
    for metrics in epochs:
        assert sum(metrics.weights) == pytest.approx(3.0, abs=1e-4)
        assert min(metrics.weights) > 0 and metrics.skipped_steps == 0
    assert epochs[-1].weights != (1.0, 1.0, 1.0)
    assert epochs[-1].rows()[0]["weight_seg"] == epochs[-1].weights[0]
