"""`python -m mtl.train`: train one fold on its own, with a progress bar and a table per epoch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mtl.config import TRAIN_PRESETS, parse_overrides
from mtl.tables import epoch_frame, write_parquet
from mtl.train import FoldTrainer

console = Console()

COLUMNS = {  # per-epoch table: title -> (split, metric)
    "train loss": ("train", "loss"),
    "val loss": ("val", "loss"),
    "pixel": ("val", "pixel_acc"),
    "dice": ("val", "dice"),
    "pattern": ("val", "pattern_acc"),
    "pattern MCA": ("val", "pattern_mca"),
    "intensity": ("val", "intensity_acc"),
    "patient pattern": ("val", "patient_pattern_acc"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mtl.train",
        description="Train the multi-task U-Net on one fold of a patch store: every other fold "
        "trains, FOLD validates. Writes checkpoints (fold-FOLD.pt), epochs.parquet (the study's "
        "layout) and config.json into --out.",
    )
    parser.add_argument("--data", required=True, help="a patch store (python -m mtl.data)")
    parser.add_argument("--fold", required=True, help="the validation fold: A, B, C, ...")
    parser.add_argument(
        "--preset",
        default="original",
        choices=sorted(TRAIN_PRESETS),
        help="original: the original study (EfficientNet-B4, 384 px, 30 epochs); "
        "tiny: a small encoder at 64 px for 2 epochs (default: original)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field, e.g. --set epochs=5 (repeatable)",
    )
    parser.add_argument("--out", help="output folder (default: a new folder under ./runs)")
    parser.add_argument("--resume", help="a checkpoint written by an earlier run to continue from")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        changes = parse_overrides([*args.overrides, f"data={Path(args.data).resolve()}"])
        config = TRAIN_PRESETS[args.preset]().replace(**changes)
        trainer = FoldTrainer(config, args.fold)
        if args.resume:
            trainer.load(args.resume)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-fold{args.fold}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    table = Table("epoch", *COLUMNS, "s", title=f"fold {args.fold}: training and validation")
    history = []
    earlier = pd.DataFrame()
    if args.resume and (out / "epochs.parquet").exists():  # keep the epochs before the resume
        earlier = pd.read_parquet(out / "epochs.parquet")
        earlier = earlier[earlier.epoch <= trainer.epoch]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("", total=trainer.batches_per_epoch, rate="")
        while trainer.epoch < config.epochs:
            progress.reset(task, description=f"epoch {trainer.epoch + 1}/{config.epochs}")
            start = time.perf_counter()

            def advance(n: int, start: float = start) -> None:
                done = progress.tasks[0].completed + n
                rate = done * config.batch_size / (time.perf_counter() - start)
                progress.update(task, advance=n, rate=f"{rate:,.0f} patches/s")

            metrics = trainer.run_epoch(advance)
            history.append(metrics)
            if trainer.epoch % config.checkpoint_every == 0 or trainer.epoch == config.epochs:
                trainer.save(out / f"fold-{args.fold}.pt")
            frame = pd.concat([earlier, epoch_frame("single", args.fold, history)])
            write_parquet(frame, out / "epochs.parquet")
            cells = [f"{getattr(getattr(metrics, s), m):.3f}" for s, m in COLUMNS.values()]
            table.add_row(str(metrics.epoch), *cells, f"{metrics.seconds:.0f}")
            # One line per epoch above the bar; the full table comes at the end.
            line = "  ".join(f"{name} {cell}" for name, cell in zip(COLUMNS, cells, strict=True))
            progress.console.print(f"epoch {metrics.epoch}  {line}  ({metrics.seconds:.0f} s)")
    console.print(table)
    console.print(f"checkpoint and epochs.parquet in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
