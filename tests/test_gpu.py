"""Training on a GPU: the tests bench/gpu_check.sh runs on the machine it checks.

They run where CUDA is available and are skipped elsewhere, except that
`HEP2_TEST_DEVICE=cpu` runs them on the CPU (what `bench/gpu_check.sh --cpu` does in CI, so
that they cannot rot where no GPU is).
"""

from __future__ import annotations

import os

import pytest
import torch

from mtl import SCORE_METRICS, FoldTrainer, GradNorm, MultiTaskUNet, small, task_losses

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> str:
    wanted = os.environ.get("HEP2_TEST_DEVICE", "cuda")
    if wanted == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (HEP2_TEST_DEVICE=cpu runs these on the CPU)")
    return wanted


@pytest.fixture
def config(tiny_config, device):
    return tiny_config.replace(device=device, epochs=3, lr=3e-3)


def test_a_bf16_channels_last_fused_adam_fold_learns(config, device):
    trainer = FoldTrainer(config, "A")
    assert trainer.optimizer.defaults["fused"]  # on the CPU too (bench/cpu_step.py)
    if device == "cuda":  # the engine's GPU setting, all of it
        assert trainer.model.input_format == torch.channels_last
        assert trainer._autocast().fast_dtype == torch.bfloat16
    losses = [trainer.run_epoch().train.loss for _ in range(config.epochs)]
    assert losses[-1] < losses[0], losses
    assert trainer.balancer.skipped_steps == 0


@pytest.mark.parametrize("seg_loss", ["dice", "bce"])
def test_gradnorm_gradient_norms_under_bf16_match_fp32(device, seg_loss):
    torch.manual_seed(0)
    config = small().replace(head="flatten")
    model = MultiTaskUNet.from_config(config).to(device).train()
    (shared,) = model.shared_parameters()
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    batch = {
        "image": torch.randint(0, 256, (8, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (8, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.randint(0, 7, (8,), generator=g),
        "intensity": torch.randint(0, 2, (8,), generator=g).float(),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.backends.cudnn.flags(allow_tf32=False):  # a true fp32 reference
        torch.backends.cuda.matmul.allow_tf32 = False
        losses = task_losses(model(batch["image"]), batch, seg_loss)
        fp32 = torch.stack(
            [torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses]
        )
    balancer = GradNorm([shared]).to(device)
    with torch.autocast(device, torch.bfloat16):
        output = model(batch["image"])
    balancer.backward(task_losses(output, batch, seg_loss))
    # 1% on a GPU. A CPU's bf16 kernels round differently by instruction set: within 1% where
    # it has native bf16 (AVX-512), 2.0% for the mask's norm on an AVX2-only CPU (AMD EPYC).
    # The CPU dry run checks the code path; the precision claim is the GPU's.
    rtol = 0.01 if device == "cuda" else 0.05
    torch.testing.assert_close(balancer.last_grad_norms, fp32, rtol=rtol, atol=0)


def test_a_fold_resumes_from_its_checkpoint(config, tmp_path):
    whole = FoldTrainer(config.replace(epochs=2), "A")
    expected = [whole.run_epoch() for _ in range(2)][-1]
    first = FoldTrainer(config.replace(epochs=2), "A")
    first.run_epoch()
    path = first.save(tmp_path / "fold-A.pt")
    resumed = FoldTrainer(config.replace(epochs=2), "A")
    resumed.load(path)
    assert resumed.epoch == 1
    assert next(resumed.model.parameters()).device.type == whole.device.type
    metrics = resumed.run_epoch()
    # On a GPU cuDNN's autotuned kernels differ run to run: equal up to rounding.
    tolerance = 0 if config.device == "cpu" else 0.05
    assert metrics.train.loss == pytest.approx(expected.train.loss, rel=tolerance, abs=1e-6)


def test_two_fold_workers_share_the_gpu(tiny_config, device):
    """Two Ray actors with half a GPU each train a fold at once (on the CPU check, the
    GPU is declared to Ray and the folds train on the CPU)."""
    if device == "cpu":  # a second Ray for what the check's next step does with five folds
        pytest.skip("on the CPU dry run, gpu_check.py's paper epoch packs fold workers on a GPU")
    import ray

    from study.driver.folds import FoldWorker, TrialSetup

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             configure_logging=False)  # fmt: skip
    try:
        config = tiny_config.replace(device="auto", epochs=1)
        store = FoldTrainer(config, "A").store.content_hash
        setup = TrialSetup(
            base=config, folds=("A", "B"), score_metrics=SCORE_METRICS, store_hash=store,
            fold_log=str(config.data), threads=1,
        )  # fmt: skip
        remote = ray.remote(num_cpus=1, num_gpus=0.5)(FoldWorker)
        workers = [remote.remote(config, fold, setup) for fold in "AB"]
        results = ray.get([w.run_epoch.remote() for w in workers])
        assert [metrics.epoch for metrics, _ in results] == [1, 1]
        assert all(metrics.train.patches > 0 for metrics, _ in results)
    finally:
        ray.shutdown()
    del device
