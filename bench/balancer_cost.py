"""Training-step time and peak memory of each loss balancer as ratios to equal weighting.

    python bench/balancer_cost.py                   # tiny model at 64 px and EfficientNet-B4 at 384
    python bench/balancer_cost.py --models tiny     # seconds; what CI runs
    python bench/balancer_cost.py --json out.json
    python bench/balancer_cost.py --balancers famo upgrad  # some, beside equal

Every balancer trains the same model on the same batch. Time: steps of all balancers are
interleaved (round robin, rotating who goes first) so that machine noise hits them alike,
and the median step time of each is divided by that of `equal`. `dwa` does the same work
as `equal` during an epoch, so its ratio shows the noise of the measurement. A step is what
FoldTrainer does: forward (split at the features for the gradient aggregations), the task
losses, the balancer's backward, the network's Adam step, and FAMO's second forward.

Peak memory over two steps of each balancer, after a first step that made Adam's moments:
on a GPU the allocator's peak (`torch.cuda.max_memory_allocated`: model, optimizer and the
step); on a CPU, which has no allocator counter (a process's peak resident memory is the
libraries', 972 MiB for every balancer with the tiny model), the peak of the bytes held by
the tensors the steps make (activations, gradients, Jacobians; `LiveTensorBytes`), without
the model and the optimizer's state that exist before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref

import torch
from common import random_batch  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mtl import (
    BALANCERS,
    MultiTaskUNet,
    TrainConfig,
    build_balancer,
    resolve_device,
    task_losses,
    tiny,
)

MODELS = {
    "tiny": lambda: tiny(),
    "b4": lambda: TrainConfig(encoder="efficientnet-b4", image_size=384, batch_size=8),
}


def _setup(config: TrainConfig, device: torch.device, batch: int, names):
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(config).to(device).train()
    if device.type == "cuda":
        model = model.channels_last()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = random_batch(batch, config.image_size, device)
    balancers = {name: build_balancer(name, model, alpha=0.12).to(device) for name in names}
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def step(name: str) -> None:
        balancer = balancers[name]
        with autocast:
            output = model(data["image"], split=balancer.needs_split)
        losses = task_losses(output, data, "dice")
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, output.split)
        optimizer.step()
        if balancer.wants_losses_after_step:
            with torch.no_grad(), autocast:
                balancer.after_step(task_losses(model(data["image"]), data, "dice"))

    return step


def measure(
    config: TrainConfig, device: torch.device, steps: int, batch: int, names: list[str]
) -> dict[str, float]:
    step = _setup(config, device, batch, names)
    times: dict[str, list[float]] = {name: [] for name in names}
    for n in range(steps + 1):  # step 0 warms up every path
        # Rotate who goes first, so that no balancer always follows the same one.
        for name in names[n % len(names) :] + names[: n % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if n:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class LiveTensorBytes(TorchDispatchMode):
    """The bytes held by the tensors made while it is on (every op's outputs, each storage
    counted once until it is freed), and their peak: a CPU's memory of a step."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_memory(
    model_name: str, device: torch.device, batch: int, names: list[str]
) -> dict[str, float]:
    """Peak memory (MiB) of two training steps of each balancer (see the module's doc)."""
    peaks = {}
    for name in names:
        step = _setup(MODELS[model_name](), device, batch, [name])
        step(name)  # Adam's moments, the balancer's lazily made parts
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):
                step(name)
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
            del step
            torch.cuda.empty_cache()
        else:
            with LiveTensorBytes() as live:
                for _ in range(2):
                    step(name)
            peaks[name] = live.peak / 2**20
    return peaks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per balancer")
    parser.add_argument("--batch", type=int, help="batch size (default: the model's config)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--balancers", nargs="+", choices=list(BALANCERS),
                        help="the balancers to measure besides equal (default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    # equal first (every ratio's denominator), then the others in the registry's order.
    asked = set(args.balancers or BALANCERS)
    names = ["equal", *(n for n in BALANCERS if n in asked and n != "equal")]

    device = resolve_device(args.device)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch_threads": torch.get_num_threads(), "models": {}}  # fmt: skip
    for model_name in args.models:
        config = MODELS[model_name]()
        batch = args.batch or config.batch_size
        seconds = measure(config, device, args.steps, batch, names)
        ratios = {name: seconds[name] / seconds["equal"] for name in seconds}
        result = results["models"][model_name] = {
            "encoder": config.encoder,
            "image_size": config.image_size,
            "batch": batch,
            "steps": args.steps,
            "seconds_per_step": seconds,
            "ratio_to_equal": ratios,
        }
        if not args.no_memory:
            peaks = peak_memory(model_name, device, batch, names)
            result["peak_mib"] = peaks
            result["memory_ratio_to_equal"] = {n: peaks[n] / peaks["equal"] for n in peaks}
        table = Table(title=f"{model_name} ({config.encoder}, {config.image_size} px, batch "
                      f"{batch}) on {results['device']}: each balancer against equal")  # fmt: skip
        for column in ("balancer", "s/step", "time / equal", "peak MiB", "memory / equal"):
            table.add_column(column, justify="left" if column == "balancer" else "right")
        for name in names:
            peak = result.get("peak_mib", {}).get(name)
            memory = result.get("memory_ratio_to_equal", {}).get(name)
            table.add_row(name, f"{seconds[name]:.4f}", f"{ratios[name]:.3f}x",
                          "-" if peak is None else f"{peak:.0f}",
                          "-" if memory is None else f"{memory:.3f}x")  # fmt: skip
        Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
