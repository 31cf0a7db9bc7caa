"""Training throughput of the MultiTaskUNet with GradNorm: precision, layout, compile, batch,
and fold workers sharing one GPU.

    python bench/gpu_throughput.py --json gpu.json            # on a GPU: B4 at 384
    python bench/gpu_throughput.py --encoder tu-mobilenetv3_small_050 --size 64 \\
        --batches 4 --steps 2 --workers 1 2 --variants fp32 --json cpu.json  # CPU, CI-sized

Every variant trains the same model (GradNorm, Dice, Adam) on random uint8 batches for
`--steps` timed steps after `--warmup` untimed ones and reports training patches/s and peak
memory (GPU only), set up as the trainer sets it up (cuDNN autotuning, fused Adam, the model's
own channels_last). Variants: fp32 (the original study's setting), bf16 autocast, bf16 +
channels_last, and that + torch.compile by region: every encoder and decoder block and each
head compiled on its own, so that GradNorm's per-task gradients on the shared layer (the
encoder's last block) rerun only the compiled backward of the regions they pass through, not
a whole-model graph. Ratios are against fp32 at batch 8 in the same run. Then 1, 2 and 5
worker processes each train the bf16 + channels_last model at batch 8 on the same GPU at once
(fractional GPUs, as the automatic placement packs a trial's five folds on one GPU); their
aggregate patches/s is reported against one worker, with each worker's peak memory.

FLOPs: one forward pass of a patch is counted with torch's FlopCounterMode, and a training
step as 3x that (forward, and backward at twice the forward). This sidesteps the counter's
overcount of depthwise-convolution backward. With --peak-tflops the throughput is also read
as a fraction of the GPU's peak.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import torch
from common import random_batch  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table
from torch import nn

from mtl import GradNorm, MultiTaskUNet, TrainConfig, task_losses

VARIANTS = {  # name -> (bf16 autocast, channels_last, torch.compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16+channels_last": (True, True, False),
    "bf16+channels_last+compile": (True, True, True),
}


def config_for(args) -> TrainConfig:
    small = args.size < 384 or not args.encoder.startswith("efficientnet")
    return TrainConfig(
        encoder=args.encoder,
        image_size=args.size,
        decoder_channels=(64, 32, 16, 8, 8) if small else (256, 128, 64, 32, 16),
        head="pool" if small else "flatten",
        head_hidden=64 if small else 512,
    )


def compile_regions(model: MultiTaskUNet) -> None:
    """torch.compile each block of the encoder and decoder and each head, in place."""
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList | nn.Sequential) and module is not model:
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    block.compile()
    model.pattern_head.compile()
    model.intensity_head.compile()


def make_step(config: TrainConfig, device: torch.device, variant: str, batch: int):
    bf16, channels_last, compiled = VARIANTS[variant]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as FoldTrainer: fixed shapes
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(config).to(device)
    if channels_last:
        model = model.channels_last()
    balancer = GradNorm(model.shared_parameters(), alpha=0.12).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    if compiled:
        compile_regions(model)
    data = random_batch(batch, config.image_size, device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            output = model(data["image"])
        losses = task_losses(output, data, "dice")
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses)
        optimizer.step()

    return step


def measure(config, device, variant, batch, warmup, steps) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = make_step(config, device, variant, batch)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"patches_per_s": steps * batch / seconds, "peak_gib": peak}


def forward_gflop(config: TrainConfig) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = MultiTaskUNet.from_config(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, config.image_size, config.image_size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def _worker(config, device_name, batch, warmup, duration, start, queue) -> None:
    torch.set_num_threads(1)
    device = torch.device(device_name)
    step = make_step(
        config, device, "bf16+channels_last" if device.type == "cuda" else "fp32", batch
    )
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start.wait()  # all workers measure over the same wall-clock window
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < duration:
        step()
        count += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    queue.put((count / (time.perf_counter() - began), peak))


def shared_gpu(
    config, device, workers: int, batch: int, warmup: int, duration: float
) -> tuple[float, float | None]:
    """Aggregate patches/s of `workers` processes training at once on one device, and the
    largest peak memory (GiB) of one of them."""
    # CUDA needs fresh processes; on a CPU forked ones skip importing torch and the model
    # library again (seconds each), and train the same.
    context = multiprocessing.get_context("spawn" if device.type == "cuda" else "fork")
    start, queue = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(
            target=_worker, args=(config, str(device), batch, warmup, duration, start, queue)
        )
        for _ in range(workers)
    ]
    for p in processes:
        p.start()
    results = [queue.get() for _ in processes]
    for p in processes:
        p.join()
    peaks = [peak for _, peak in results if peak is not None]
    return sum(rate for rate, _ in results), max(peaks, default=None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="efficientnet-b4")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per shared-GPU run")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )  # fmt: skip
    if device.type == "cpu":  # bf16 and compile are for GPUs; on a CPU only fp32 is meaningful
        args.variants = [v for v in args.variants if v == "fp32"] or ["fp32"]
    config = config_for(args)
    gflop_step = 3 * forward_gflop(config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for variant in args.variants:
        for batch in args.batches:
            result = measure(config, device, variant, batch, args.warmup, args.steps)
            rows.append({"variant": variant, "batch": batch, **result})
    baseline = next((r for r in rows if r["variant"] == "fp32" and r["batch"] == 8), rows[0])
    for row in rows:
        row["ratio"] = row["patches_per_s"] / baseline["patches_per_s"]
        row["tflops"] = row["patches_per_s"] * gflop_step / 1e3
        if args.peak_tflops:
            row["mfu"] = row["tflops"] / args.peak_tflops
    shared = {w: shared_gpu(config, device, w, 8, args.warmup, args.duration) for w in args.workers}

    results = {
        "device": name,
        "encoder": args.encoder,
        "size": args.size,
        "gflop_per_training_patch": gflop_step,
        "variants": rows,
        "shared_device": {
            str(w): {
                "patches_per_s": rate,
                "ratio": rate / shared[args.workers[0]][0],
                "peak_gib_per_worker": peak,
            }
            for w, (rate, peak) in shared.items()
        },
    }
    console = Console()
    table = Table(title=f"training throughput, {args.encoder} at {args.size} px, GradNorm, {name}")
    for column in ("variant", "batch", "patches/s", "vs fp32 b8", "TFLOP/s", "peak GiB"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        table.add_row(r["variant"], str(r["batch"]), f"{r['patches_per_s']:,.1f}",
                      f"{r['ratio']:.2f}x", f"{r['tflops']:.3g}", peak)  # fmt: skip
    console.print(table)
    shared_table = Table(
        title=f"fold workers sharing one {'GPU' if device.type == 'cuda' else 'CPU'}, batch 8"
    )
    for column in ("workers", "aggregate patches/s", f"vs {args.workers[0]}", "peak GiB/worker"):
        shared_table.add_column(column, justify="right")
    for w, entry in results["shared_device"].items():
        peak = entry["peak_gib_per_worker"]
        shared_table.add_row(w, f"{entry['patches_per_s']:,.1f}", f"{entry['ratio']:.2f}x",
                             "-" if peak is None else f"{peak:.1f}")  # fmt: skip
    console.print(shared_table)
    console.print(f"{gflop_step:.1f} GFLOP per training patch (3 x forward)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
