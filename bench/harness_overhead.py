"""One epoch through the training engine vs a bare PyTorch loop on the same batches.

    python bench/harness_overhead.py                       # the demo's model at 64 px
    python bench/harness_overhead.py --epochs 1 --patients 10 --json out.json   # CI-sized

Both sides start from the same weights and do the same work: a training step (forward, the
three losses, backward of their sum, Adam) on every training batch, and a forward pass on
every validation batch. The bare loop takes its batches from a list of tensors already in
memory; the engine reads them from the memory-mapped store and also accumulates every
metric (confusion matrices, Dice, majority votes). The ratio is engine / bare, measured in
the same run with the two sides alternating epoch by epoch.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from mtl import (
    FoldTrainer,
    SynthSpec,
    TrainConfig,
    build_synthetic_store,
    task_losses,
    train_epochs,
)


def bare_epoch(model, optimizer, train_batches, val_batches, seg_loss: str) -> None:
    model.train()
    for batch in train_batches:
        losses = task_losses(model(batch["image"]), batch, seg_loss)
        optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        for batch in val_batches:
            model(batch["image"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--encoder", default="tu-resnet10t")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(patients=args.patients, size=args.size, specimens=1, seed=0)
        store = build_synthetic_store(Path(tmp) / "store", spec)
        config = TrainConfig(
            data=str(store.path),
            encoder=args.encoder,
            decoder_channels=(64, 32, 16, 8, 8),
            head="pool",
            head_hidden=64,
            image_size=args.size,
            epochs=args.epochs + 1,
            batch_size=16,
            lr=1e-3,
            device="cpu",
        )
        trainer = FoldTrainer(config, "A")
        # The bare side: the same model and optimizer state, batches materialised up front.
        model = copy.deepcopy(trainer.model)
        optimizer = torch.optim.Adam(model.parameters(), **trainer.optimizer.defaults)
        val_batches = list(trainer.val_loader)

        engine, bare = [], []
        engine_epochs = train_epochs(trainer, config.epochs)  # the engine's own loop
        for epoch in range(1, args.epochs + 2):  # the first epoch of each side warms up
            # The bare loop gets this epoch's batches, in the engine's order, in memory.
            trainer.train_loader.batch_sampler.set_epoch(epoch)
            train_batches = list(trainer.train_loader)
            start = time.perf_counter()
            next(engine_epochs)
            engine.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare_epoch(model, optimizer, train_batches, val_batches, config.seg_loss)
            bare.append(time.perf_counter() - start)

    engine_s, bare_s = statistics.median(engine[1:]), statistics.median(bare[1:])
    results = {
        "encoder": args.encoder,
        "size": args.size,
        "train_patches": len(train_batches) * config.batch_size,
        "val_patches": sum(len(b["pattern"]) for b in val_batches),
        "epochs": args.epochs,
        "engine_seconds_per_epoch": engine_s,
        "bare_seconds_per_epoch": bare_s,
        "ratio": engine_s / bare_s,
    }
    Console().print(
        f"engine {engine_s:.2f} s/epoch, bare loop {bare_s:.2f} s/epoch: "
        f"[bold]{results['ratio']:.3f}x[/] ({args.encoder}, {args.size} px, "
        f"{results['train_patches']} training + {results['val_patches']} validation patches)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
