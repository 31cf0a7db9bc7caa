"""The GPU code paths, checked on a CPU: no host synchronisation in a training step,
channels_last reaching the first convolution, checkpoints whose RNG states stay on the CPU.

(bench/gpu_check.sh runs the same training step on a real GPU, with CUDA's own sync check.)
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtl.balancing import BALANCERS, JacobianDescent, build_balancer
from mtl.config import tiny
from mtl.loop import read_checkpoint
from mtl.losses import task_losses
from mtl.metrics import RunningSums
from mtl.model import MultiTaskUNet
from mtl.trainer import FoldTrainer

# Operators that make the host wait for the device: reading a value (item, bool, an `if` on a
# tensor) or sizing an output from the data.
SYNCING = ("aten._local_scalar_dense", "aten.bincount", "aten.nonzero", "aten.unique",
           "aten._unique", "aten.masked_select", "aten.repeat_interleave")  # fmt: skip


class SyncRecorder(TorchDispatchMode):
    """Records every syncing operator dispatched while `recording` is true."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.recording = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.recording and str(func).startswith(SYNCING):
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def _batch(size: int = 64, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.randint(0, 7, (n,), generator=g),
        "intensity": torch.randint(0, 2, (n,), generator=g).float(),
    }


# The loss weightings; a gradient aggregation's solver runs on the host (TorchJD's QP and
# convex solvers take the Gramian there), a sync by design.
LOSS_WEIGHTINGS = sorted(n for n, c in BALANCERS.items() if not issubclass(c, JacobianDescent))


@pytest.mark.parametrize("seg_loss", ["dice", "bce"])
@pytest.mark.parametrize("name", LOSS_WEIGHTINGS)
def test_a_training_step_syncs_with_the_host_once(name, seg_loss):
    """Losses, the balancer's backward and the metric sums: one sync, the non-finite check.

    A balancer's own Adam is left out: its step counter lives on the CPU whatever the
    device, so reading it is no device sync (on a CPU it cannot be told apart from one).
    """
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny())
    balancer = build_balancer(name, model)
    sums = RunningSums(torch.device("cpu"))
    batch = _batch()
    optimizer = getattr(balancer, "optimizer", None)
    recorder = SyncRecorder()
    if optimizer is not None:
        step = optimizer.step

        def unrecorded_step(*args, **kwargs):
            recorder.recording = False
            try:
                return step(*args, **kwargs)
            finally:
                recorder.recording = True

        optimizer.step = unrecorded_step
    for _ in range(2):  # the first step of GradNorm also takes L(0)
        recorder.syncs.clear()
        with recorder:
            output = model(batch["image"])
            losses = task_losses(output, batch, seg_loss)
            balancer.backward(losses)
            sums.update(output, batch, losses)
        assert recorder.syncs == ["aten._local_scalar_dense.default"], recorder.syncs


def test_running_sums_count_the_confusion_matrices():
    sums = RunningSums(torch.device("cpu"))
    batch = _batch(n=3)
    batch["pattern"] = torch.tensor([0, 6, 6])
    batch["intensity"] = torch.tensor([1.0, 0.0, 1.0])
    pattern_logits = torch.full((3, 7), -5.0)
    pattern_logits[[0, 1, 2], [0, 6, 3]] = 5.0  # right, right, 6 taken for 3
    output = type("Output", (), {})()
    output.mask = torch.zeros(3, 1, 64, 64)
    output.pattern = pattern_logits
    output.intensity = torch.tensor([2.0, -2.0, -2.0])  # right, right, positive missed
    sums.update(output, batch, [torch.tensor(0.0)] * 3)
    result = sums.result()
    pattern = torch.tensor(result.pattern_confusion)
    assert pattern[0, 0] == 1 and pattern[6, 6] == 1 and pattern[6, 3] == 1
    assert pattern.sum() == 3
    assert result.intensity_confusion == ((1, 0), (1, 1))


def test_channels_last_reaches_the_first_convolution():
    model = MultiTaskUNet.from_config(tiny()).channels_last()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = {}
    first.register_forward_pre_hook(
        lambda module, inputs: seen.update(
            nhwc=inputs[0].is_contiguous(memory_format=torch.channels_last)
        )  # fmt: skip
    )
    model(_batch()["image"])
    assert seen["nhwc"]
    assert first.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_checkpoint_reads_back_on_the_cpu_and_resumes(tiny_config, tmp_path):
    trainer = FoldTrainer(tiny_config.replace(epochs=1), "A")
    path = trainer.save(tmp_path / "fold-A.pt")
    state = read_checkpoint(path)
    tensors = [state["torch_rng"], *state["cuda_rng"], *state["model"].values()]
    assert all(t.device.type == "cpu" for t in tensors)
    assert state["torch_rng"].dtype == torch.uint8  # what torch.set_rng_state demands
    resumed = FoldTrainer(tiny_config.replace(epochs=1), "A")
    resumed.load_state_dict(state)
    torch.testing.assert_close(torch.get_rng_state(), state["torch_rng"])
