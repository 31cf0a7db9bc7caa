"""Training-step time of each loss balancer as a ratio to equal weighting, in one run.

    python bench/balancer_cost.py                   # tiny model at 64 px and EfficientNet-B4 at 384
    python bench/balancer_cost.py --models tiny     # seconds; what CI runs
    python bench/balancer_cost.py --json out.json

Every balancer trains the same model on the same batch; steps of all balancers are
interleaved (round robin, rotating who goes first) so that machine noise hits them alike,
and the median step time of each is divided by that of `equal`. `dwa` does the same work
as `equal` during an epoch, so its ratio shows the noise of the measurement. A step is
forward, the three losses, the balancer's backward and the network's Adam step.
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


def measure(config: TrainConfig, device: torch.device, steps: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = random_batch(batch, config.image_size, device)
    balancers = {
        name: build_balancer(name, model.shared_parameters(), alpha=0.12).to(device)
        for name in BALANCERS
    }
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    times: dict[str, list[float]] = {name: [] for name in balancers}
    names = list(balancers)
    for step in range(steps + 1):  # step 0 warms up every path
        # Rotate who goes first, so that no balancer always follows the same one.
        for name in names[step % len(names) :] + names[: step % len(names)]:
            balancer = balancers[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast:
                output = model(data["image"])
            losses = task_losses(output, data, "dice")
            optimizer.zero_grad(set_to_none=True)
            balancer.backward(losses)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    table = Table(title=f"balancer step time / equal ({results['device']})")
    table.add_column("model")
    table.add_column("batch", justify="right")
    table.add_column("equal s/step", justify="right")
    for name in BALANCERS:
        table.add_column(name, justify="right")
    for model_name in args.models:
        config = MODELS[model_name]()
        batch = args.batch or config.batch_size
        seconds = measure(config, device, args.steps, batch)
        ratios = {name: seconds[name] / seconds["equal"] for name in seconds}
        results["models"][model_name] = {
            "encoder": config.encoder,
            "image_size": config.image_size,
            "batch": batch,
            "steps": args.steps,
            "seconds_per_step": seconds,
            "ratio_to_equal": ratios,
        }
        table.add_row(model_name, str(batch), f"{seconds['equal']:.3f}",
                      *(f"{ratios[name]:.3f}x" for name in BALANCERS))  # fmt: skip
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
