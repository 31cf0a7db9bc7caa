"""A training step on the CPU: the trainer's settings against the alternatives, in one run.

    python bench/cpu_step.py                          # the demo's model, 1 and 2 threads
    python bench/cpu_step.py --encoder tu-mobilenetv3_small_050 --steps 6 --json out.json

For each thread count, four variants train the same model on the same batch: Adam unfused
(torch's default on a CPU) or fused, NCHW or channels_last. Their steps are interleaved
(round robin, rotating who goes first) so that machine noise hits them alike, and each
variant's median step time is divided by that of the baseline, unfused NCHW. A step is
forward, the three losses, backward of their sum and the Adam step. The trainer fuses Adam
on the CPU and keeps NCHW there (mtl/trainer.py): channels_last, its GPU setting, helped the
small model at 1 thread and not at 2 when measured (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import random_batch  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table

from mtl import MultiTaskUNet, small, task_losses

VARIANTS = {  # name -> (fused Adam, channels_last)
    "unfused, NCHW": (False, False),
    "fused, NCHW": (True, False),
    "unfused, channels_last": (False, True),
    "fused, channels_last": (True, True),
}


def build(config, fused: bool, channels_last: bool):
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(config)
    if channels_last:
        model = model.channels_last()
    return model, torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused)


def step(model, optimizer, batch: dict, seg_loss: str) -> None:
    losses = task_losses(model(batch["image"]), batch, seg_loss)
    optimizer.zero_grad(set_to_none=True)
    sum(losses).backward()
    optimizer.step()


def measure(config, threads: int, steps: int, warmup: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    batch = random_batch(config.batch_size, config.image_size, torch.device("cpu"))
    runs = {name: build(config, *flags) for name, flags in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for k in range(warmup + steps):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            start = time.perf_counter()
            step(*runs[name], batch, config.seg_loss)
            if k >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default=small().encoder)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    config = small().replace(encoder=args.encoder, image_size=args.size, device="cpu")
    table = Table(title=f"Training step on the CPU ({args.encoder}, {args.size} px, "
                        f"batch {config.batch_size}); ratio to unfused NCHW")  # fmt: skip
    table.add_column("threads")
    for name in VARIANTS:
        table.add_column(name, justify="right")
    results = {"encoder": args.encoder, "size": args.size, "batch": config.batch_size,
               "torch": torch.__version__, "threads": {}}  # fmt: skip
    for threads in args.threads:
        seconds = measure(config, threads, args.steps, args.warmup)
        base = seconds["unfused, NCHW"]
        results["threads"][str(threads)] = {
            name: {"seconds_per_step": s, "ratio": s / base} for name, s in seconds.items()
        }
        table.add_row(
            str(threads), *(f"{s / base:.3f} ({s * 1000:.0f} ms)" for s in seconds.values())
        )
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
