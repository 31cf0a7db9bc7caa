"""Training-step time and peak memory of each loss balancer as ratios to equal weighting.

    python bench/balancer_cost.py                   # tiny model at 64 px and EfficientNet-B4 at 384
    python bench/balancer_cost.py --models tiny     # seconds; what CI runs
    python bench/balancer_cost.py --json out.json

Every balancer trains the same model on the same batch. Time: steps of all balancers are
interleaved (round robin, rotating who goes first) so that machine noise hits them alike,
and the median step time of each is divided by that of `equal`. `dwa` does the same work
as `equal` during an epoch, so its ratio shows the noise of the measurement. A step is what
FoldTrainer does: forward (split at the features for the gradient aggregations), the task
losses, the balancer's backward, the network's Adam step, and FAMO's second forward.

Peak memory, on a GPU: the allocator's peak over two steps of each balancer after a reset
(`torch.cuda.max_memory_allocated`). A CPU has no such counter: the peak resident memory of
a process is the libraries' (972 MiB for every balancer with the tiny model), so on a CPU
the bench times only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import random_batch  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table

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


def measure(config: TrainConfig, device: torch.device, steps: int, batch: int) -> dict[str, float]:
    step = _setup(config, device, batch, BALANCERS)
    times: dict[str, list[float]] = {name: [] for name in BALANCERS}
    names = list(BALANCERS)
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


def peak_memory(model_name: str, device: torch.device, batch: int) -> dict[str, float]:
    """Peak GPU memory (MiB) of two training steps of each balancer."""
    peaks = {}
    for name in BALANCERS:
        step = _setup(MODELS[model_name](), device, batch, [name])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            step(name)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
        del step
        torch.cuda.empty_cache()
    return peaks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per balancer")
    parser.add_argument("--batch", type=int, help="batch size (default: the model's config)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch_threads": torch.get_num_threads(), "models": {}}  # fmt: skip
    for model_name in args.models:
        config = MODELS[model_name]()
        batch = args.batch or config.batch_size
        seconds = measure(config, device, args.steps, batch)
        ratios = {name: seconds[name] / seconds["equal"] for name in seconds}
        result = results["models"][model_name] = {
            "encoder": config.encoder,
            "image_size": config.image_size,
            "batch": batch,
            "steps": args.steps,
            "seconds_per_step": seconds,
            "ratio_to_equal": ratios,
        }
        if device.type == "cuda":
            peaks = peak_memory(model_name, device, batch)
            result["peak_mib"] = peaks
            result["memory_ratio_to_equal"] = {n: peaks[n] / peaks["equal"] for n in peaks}
        table = Table(title=f"{model_name} ({config.encoder}, {config.image_size} px, batch "
                      f"{batch}) on {results['device']}: each balancer against equal")  # fmt: skip
        for column in ("balancer", "s/step", "time / equal", "peak MiB", "memory / equal"):
            table.add_column(column, justify="left" if column == "balancer" else "right")
        for name in BALANCERS:
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
