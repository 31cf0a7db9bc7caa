"""What one fold costs in memory: its resident state, counted, and a training step's peak on
a GPU, measured.

- `state_bytes(config)`: the bytes of a fold's state that stay allocated between epochs and
  go into its checkpoint (parameters and buffers, and Adam's two moments per parameter; the
  balancer's few weights are noise beside them), counted from the model's parameters on the
  meta device: nothing is allocated, so it is exact and instant for EfficientNet-B4 too.
- `measure_step_memory(config)`: on a CUDA GPU, one real training step of `FoldTrainer` on a
  small synthetic store at the configuration's model, patch size, batch and precision; the
  peak the caching allocator reserved plus the CUDA context, and what stays allocated after
  the step. None without CUDA. This is the figure a fold worker needs on a GPU
  (study/driver/placement.py), measured by bench/gpu_check.sh or probed at study start.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from dataclasses import dataclass

import torch

from mtl.config import TrainConfig
from mtl.model import MultiTaskUNet

GIB = 2**30
FP32_BYTES = 4
# Adam keeps two moments per parameter (exp_avg, exp_avg_sq), each the parameter's size.
ADAM_MOMENTS = 2


@functools.cache  # a frozen config: the placement and the disk estimate both ask
def state_bytes(config: TrainConfig, *, with_gradients: bool = False) -> int:
    """Bytes of a fold's model (parameters, buffers) and Adam state in fp32, counted.

    `with_gradients`: also the parameters' gradients, which stay allocated between steps
    (the training step sets them to None only before the next backward pass): a fold's
    resident state on its device. Without them: about the size of its checkpoint.
    """
    with torch.device("meta"):
        model = MultiTaskUNet.from_config(config.replace(encoder_weights=None))
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    copies = 1 + ADAM_MOMENTS + (1 if with_gradients else 0)
    return parameters * FP32_BYTES * copies + buffers


@dataclass(frozen=True)
class StepMemory:
    """One fold worker's GPU memory, measured with one training step."""

    worker_gib: float  # what a worker process needs: peak reserved + CUDA context
    resident_gib: float  # allocated after the step: model, gradients, optimizer, balancer
    gpu: str  # the GPU it was measured on

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_step_memory(config: TrainConfig, store=None, patients: int = 10) -> StepMemory | None:
    """Peak GPU memory of one training step of `config` (model, patch size, batch,
    precision: bf16 autocast on CUDA), on GPU 0. None when CUDA is not available.

    The step trains on `store`, or on a synthetic store of `patients` patients at the
    configuration's patch size made in a temporary folder (the figure depends on shapes, not
    on the data). The
    CUDA context (the driver's share of a process, not seen by the allocator) is what the
    device reports used beyond the allocator's reservations, on a GPU this process has to
    itself at that moment.
    """
    if not torch.cuda.is_available():
        return None
    from mtl.data import SynthSpec, build_synthetic_store
    from mtl.metrics import RunningSums
    from mtl.trainer import FoldTrainer

    device = torch.device("cuda", 0)
    with tempfile.TemporaryDirectory(prefix="hep2-memory-") as folder:
        if store is None:
            spec = SynthSpec(patients=patients, size=config.image_size, specimens=1, seed=0)
            store = build_synthetic_store(f"{folder}/store", spec)
        # Stratified folds: the original fold table may leave a small store's fold empty.
        probe = config.replace(
            data=str(store.path), device="cuda", num_workers=0, held_out=(), folds="stratified"
        )
        torch.cuda.reset_peak_memory_stats(device)
        trainer = FoldTrainer(probe, "A", store=store)
        batch = trainer._to_device(next(iter(trainer.train_loader)))
        # Two steps: the first allocates Adam's moments (after its backward pass), the second
        # runs with them resident, as every later step of an epoch does.
        for _ in range(2):
            trainer.train_step(batch, RunningSums(trainer.device, probe.threshold))
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_reserved(device)
        resident = torch.cuda.memory_allocated(device)
        free, total = torch.cuda.mem_get_info(device)
        context = max(0, (total - free) - torch.cuda.memory_reserved(device))
        name = torch.cuda.get_device_name(device)
        del trainer, batch
        torch.cuda.empty_cache()
    return StepMemory(
        worker_gib=round((peak + context) / GIB, 2), resident_gib=round(resident / GIB, 2), gpu=name
    )
